// File: data/json_util.h (internal to //data)
//
// JSON file reading with absl::Status errors (nlohmann's exceptions stop here).
#ifndef PEFT_DATA_JSON_UTIL_H_
#define PEFT_DATA_JSON_UTIL_H_

#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"

namespace peft::data::internal {

/// Parses the JSON file at `path`. NotFoundError when missing,
/// InvalidArgumentError naming the path and the parser's message when the
/// content is not JSON.
absl::StatusOr<nlohmann::json> read_json(const std::string& path);

}  // namespace peft::data::internal

#endif  // PEFT_DATA_JSON_UTIL_H_
