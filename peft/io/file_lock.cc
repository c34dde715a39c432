#include "peft/io/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace peft::io {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// The pid a holder wrote, or "unknown" (it may not have written it yet).
std::string holder_pid(int fd) {
  char buf[32] = {};
  const ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  int64_t pid = 0;
  if (n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(std::string(buf, static_cast<size_t>(n))), &pid)) {
    return absl::StrCat(pid);
  }
  return "unknown";
}

}  // namespace

absl::StatusOr<FileLock> FileLock::acquire(const std::string& path, const std::string& what, bool remove_on_release) {
  // A holder that removes its lock file on release may unlink the file we
  // just opened: then we locked an orphan and must try the new file.
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
      const int err = errno;
      return absl::FailedPreconditionError(absl::StrCat("cannot create the lock file ", path, ": ", errno_text(err)));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string pid = err == EWOULDBLOCK ? holder_pid(fd) : "";
      ::close(fd);
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(
            absl::StrCat(what, " is in use by another peft process (pid ", pid, "; lock file ", path, ")"));
      }
      return absl::FailedPreconditionError(absl::StrCat("cannot lock ", path, ": ", errno_text(err)));
    }
    struct stat held {
    }, now{};
    if (::fstat(fd, &held) != 0 || ::stat(path.c_str(), &now) != 0 || held.st_ino != now.st_ino ||
        held.st_dev != now.st_dev) {
      ::close(fd);
      continue;
    }
    const std::string pid = absl::StrCat(::getpid(), "\n");
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
      const int err = errno;
      ::close(fd);
      return absl::FailedPreconditionError(absl::StrCat("cannot write the lock file ", path, ": ", errno_text(err)));
    }
    FileLock lock;
    lock.path_ = path;
    lock.fd_ = fd;
    lock.remove_on_release_ = remove_on_release;
    return lock;
  }
  return absl::FailedPreconditionError(absl::StrCat("cannot lock ", path, ": it keeps being replaced"));
}

FileLock::FileLock(FileLock&& other) noexcept
    : path_(std::move(other.path_)), fd_(other.fd_), remove_on_release_(other.remove_on_release_) {
  other.fd_ = -1;
}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    fd_ = other.fd_;
    remove_on_release_ = other.remove_on_release_;
    other.fd_ = -1;
  }
  return *this;
}

FileLock::~FileLock() { release(); }

void FileLock::release() {
  if (fd_ < 0) return;
  // Unlink while still holding the lock, so no one locks the file we remove.
  if (remove_on_release_) ::unlink(path_.c_str());
  ::close(fd_);  // drops the flock
  fd_ = -1;
}

void FileLock::release_and_remove() {
  remove_on_release_ = true;
  release();
}

}  // namespace peft::io
