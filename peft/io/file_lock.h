//
// One writer per output: an exclusive advisory lock (flock) on a lock file,
// held for as long as the FileLock lives. The kernel drops it when the
// process dies, however it dies (kill -9 included), so a stale lock file
// never blocks the next run; a second process gets an error naming the
// holder's pid.
//
//   PEFT_ASSIGN_OR_RETURN(peft::io::FileLock lock,
//                         peft::io::FileLock::acquire(run_dir + "/.lock", run_dir));
//   ...  // check what the directory holds, then write: no other peft
//        // process can do the same until `lock` is destroyed
//
// Locks are per open file description: two FileLocks on one path in one
// process also exclude each other. On filesystems without flock (some
// network mounts) acquire() fails with the system's reason.
#ifndef PEFT_IO_FILE_LOCK_H_
#define PEFT_IO_FILE_LOCK_H_

#include <string>

#include "absl/status/statusor.h"

namespace peft::io {

class FileLock final {
 public:
  /// Creates `path` if needed (its directory must exist), takes the lock
  /// without waiting and writes this process's pid into the file.
  /// FailedPrecondition when another process holds it: "<what> is in use by
  /// another peft process (pid N; lock file <path>)". `remove_on_release`:
  /// unlink the lock file when the lock is released (for locks beside an
  /// output rather than inside it).
  static absl::StatusOr<FileLock> acquire(const std::string& path, const std::string& what,
                                          bool remove_on_release = false);

  FileLock() = default;
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock();

  /// Releases now (the destructor does it otherwise). Idempotent.
  void release();
  /// Releases and removes the lock file whatever remove_on_release said
  /// (for an output that is being deleted).
  void release_and_remove();

  bool held() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  bool remove_on_release_ = false;
};

}  // namespace peft::io

#endif  // PEFT_IO_FILE_LOCK_H_
