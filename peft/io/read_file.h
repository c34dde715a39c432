// File: peft/io/read_file.h
//
// The one whole-file reader: a file's bytes, or NotFound naming the path
// (and the system's reason) when it cannot be opened.
//
//   PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(dir + "/config.json"));
#ifndef PEFT_IO_READ_FILE_H_
#define PEFT_IO_READ_FILE_H_

#include <string>

#include "absl/status/statusor.h"

namespace peft::io {

/// The bytes of `path`. NotFound "cannot open PATH: REASON" when it cannot be
/// opened (missing, unreadable, a directory), DataLoss when reading fails
/// part-way.
absl::StatusOr<std::string> read_file(const std::string& path);

}  // namespace peft::io

#endif  // PEFT_IO_READ_FILE_H_
