// File: data/file_util.h (internal to //data)
//
// Whole-file reads with absl::Status errors that name the path.
#ifndef PEFT_DATA_FILE_UTIL_H_
#define PEFT_DATA_FILE_UTIL_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace peft::data::internal {

/// The bytes of the regular file at `path`. NotFoundError when it does not
/// exist, InvalidArgumentError when it is not a regular file, and the errno's
/// status for other failures; every message names `path`.
absl::StatusOr<std::string> read_file(const std::string& path);

/// At most the first `max_bytes` bytes of the regular file at `path`, with
/// the same errors as read_file().
absl::StatusOr<std::string> read_file_prefix(const std::string& path, size_t max_bytes);

}  // namespace peft::data::internal

#endif  // PEFT_DATA_FILE_UTIL_H_
