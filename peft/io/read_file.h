//
// The one whole-file reader of the project (tokenizers, datasets, configs,
// recipes, adapter files): a file's bytes with absl::Status errors that name
// the path.
//
//   PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(dir + "/config.json"));
#ifndef PEFT_IO_READ_FILE_H_
#define PEFT_IO_READ_FILE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"

namespace peft::io {

/// The bytes of `path`. Errors: NotFound "PATH: no such file",
/// InvalidArgument "PATH: not a regular file" (a directory, say), the errno's
/// code with "PATH: cannot open: REASON" or "PATH: read error: REASON".
absl::StatusOr<std::string> read_file(const std::string& path);

/// At most the first `max_bytes` bytes of `path` (sniffing a file's format),
/// with the same errors as read_file().
absl::StatusOr<std::string> read_file_prefix(const std::string& path, size_t max_bytes);

}  // namespace peft::io

#endif  // PEFT_IO_READ_FILE_H_
