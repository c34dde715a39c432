#include "data/json_util.h"

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data::internal {

absl::StatusOr<nlohmann::json> read_json(const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(path));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // The byte offset says where (a truncated file ends there); nlohmann's
    // own text ("[json.exception.parse_error.101] ...") is left out.
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON at byte ", e.byte, " of ", text.size(),
                                                   text.empty() ? " (empty file)" : ""));
  } catch (const nlohmann::json::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON"));
  }
}

}  // namespace peft::data::internal
