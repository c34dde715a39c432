//
// Crash-safe file replacement: write to a temporary name in the destination's
// directory, fsync, then rename() over the destination and fsync the
// directory. A reader therefore sees either the old file or the complete new
// one, never a torn write, and a crash leaves at most a hidden temp file
// (".<name>.tmp.XXXXXX") behind.
//
//   PEFT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out,
//                         AtomicFileWriter::create(dir + "/config.json"));
//   PEFT_RETURN_IF_ERROR(out->write(text.data(), text.size()));
//   PEFT_RETURN_IF_ERROR(out->commit());
//
// Or, for a small in-memory payload, `write_file_atomically(path, text)`.
#ifndef PEFT_IO_ATOMIC_FILE_H_
#define PEFT_IO_ATOMIC_FILE_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace peft::io {

/// One pending atomic replacement of `path`. Not thread-safe; not copyable.
/// Destroying it without a successful commit() removes the temp file and
/// leaves `path` untouched.
class AtomicFileWriter final {
 public:
  /// Creates the temp file next to `path` (the directory must exist).
  static absl::StatusOr<std::unique_ptr<AtomicFileWriter>> create(const std::string& path);

  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  /// Appends `size` bytes (handles short writes and EINTR).
  absl::Status write(const void* data, size_t size);

  /// fsync + close + rename over the destination + fsync of the directory.
  /// After an error the temp file is removed and the writer is unusable.
  absl::Status commit();

  /// The final destination path.
  const std::string& path() const { return path_; }

 private:
  AtomicFileWriter(std::string path, std::string temp_path, int fd);
  void abort();

  std::string path_;
  std::string temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

/// Writes `contents` to `path` atomically (temp + fsync + rename). Useful for
/// config.json, adapter_config.json and the like.
absl::Status write_file_atomically(const std::string& path, std::string_view contents);

/// Runs `write(tmp_dir)` into a fresh temporary sibling of `dir` and renames
/// it to `dir` on success; removes the temporary on failure, so `dir` is
/// either the complete new directory or what it was before. An existing
/// non-empty `dir` is an error unless `overwrite` (then it is replaced whole).
absl::Status write_directory_atomically(const std::string& dir, bool overwrite,
                                        const std::function<absl::Status(const std::string& tmp_dir)>& write);

}  // namespace peft::io

#endif  // PEFT_IO_ATOMIC_FILE_H_
