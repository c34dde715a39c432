#include "data/json_util.h"

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data::internal {

absl::StatusOr<nlohmann::json> read_json(const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(path));
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
}

}  // namespace peft::data::internal
