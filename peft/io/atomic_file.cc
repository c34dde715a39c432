#include "peft/io/atomic_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "peft/io/file_lock.h"

namespace peft::io {
namespace {

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

absl::Status errno_status(int err, const std::string& what) { return absl::ErrnoToStatus(err, what); }

}  // namespace

absl::StatusOr<std::unique_ptr<AtomicFileWriter>> AtomicFileWriter::create(const std::string& path) {
  std::string base = base_of(path);
  if (base.empty() || base == "." || base == "..") {
    return absl::InvalidArgumentError("not a file path: '" + path + "'");
  }
  std::string temp = dir_of(path) + "/." + base + ".tmp.XXXXXX";
  int fd = mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) {
    return errno_status(errno, "cannot create a temp file for '" + path + "'");
  }
  // mkstemp creates 0600; give the file the usual umask-derived mode.
  mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  return std::unique_ptr<AtomicFileWriter>(new AtomicFileWriter(path, std::move(temp), fd));
}

AtomicFileWriter::AtomicFileWriter(std::string path, std::string temp_path, int fd)
    : path_(std::move(path)), temp_path_(std::move(temp_path)), fd_(fd) {}

AtomicFileWriter::~AtomicFileWriter() {
  if (!committed_) abort();
}

void AtomicFileWriter::abort() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    unlink(temp_path_.c_str());
    temp_path_.clear();
  }
}

absl::Status AtomicFileWriter::write(const void* data, size_t size) {
  if (fd_ < 0) {
    return absl::FailedPreconditionError("write after commit/failure: '" + path_ + "'");
  }
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    // Linux caps one write at ~2 GiB; chunk to stay well below it.
    size_t chunk = size < (size_t{1} << 30) ? size : (size_t{1} << 30);
    ssize_t n = ::write(fd_, p, chunk);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      abort();
      return errno_status(err, "write failed for '" + path_ + "'");
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status AtomicFileWriter::commit() {
  if (fd_ < 0) {
    return absl::FailedPreconditionError("commit after commit/failure: '" + path_ + "'");
  }
  if (fsync(fd_) != 0) {
    int err = errno;
    abort();
    return errno_status(err, "fsync failed for '" + path_ + "'");
  }
  int fd = fd_;
  fd_ = -1;
  if (close(fd) != 0) {
    int err = errno;
    abort();
    return errno_status(err, "close failed for '" + path_ + "'");
  }
  if (rename(temp_path_.c_str(), path_.c_str()) != 0) {
    int err = errno;
    abort();
    return errno_status(err, "rename to '" + path_ + "' failed");
  }
  temp_path_.clear();
  committed_ = true;
  // Make the rename itself durable. Failure here is not reported: the file is
  // already complete and visible.
  int dir_fd = open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    fsync(dir_fd);
    close(dir_fd);
  }
  return absl::OkStatus();
}

absl::Status write_file_atomically(const std::string& path, std::string_view contents) {
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> writer, AtomicFileWriter::create(path));
  PEFT_RETURN_IF_ERROR(writer->write(contents.data(), contents.size()));
  return writer->commit();
}

absl::Status write_directory_atomically(const std::string& dir, bool overwrite,
                                        const std::function<absl::Status(const std::string&)>& write) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = fs::absolute(dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad output path '", dir, "'"));
  target = target.lexically_normal();
  if (target.has_filename() == false) target = target.parent_path();
  if (fs::is_symlink(fs::symlink_status(target, ec))) {
    return absl::InvalidArgumentError(
        absl::StrCat(target.string(), " is a symbolic link; pass the directory it points to (or another path)"));
  }
  fs::path parent = target.parent_path();
  if (!fs::is_directory(parent, ec)) {
    fs::create_directories(parent, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", parent.string(), ": ", ec.message()));
  }
  // One writer per output: the check of what `dir` holds and the write
  // happen under one lock, beside the output (removed when done).
  const std::string name = target.filename().string();
  PEFT_ASSIGN_OR_RETURN(FileLock lock,
                        FileLock::acquire((parent / absl::StrCat(".", name, ".lock")).string(), target.string(),
                                          /*remove_on_release=*/true));
  // Under the lock every temporary of this output is a dead writer's: a
  // killed process leaves ".name.tmp-PID" (incomplete, removed) and, when it
  // died between its two renames, ".name.old-PID" with the previous output
  // (put back when the output is missing, else removed).
  const std::string tmp_prefix = absl::StrCat(".", name, ".tmp-"), old_prefix = absl::StrCat(".", name, ".old-");
  for (const fs::directory_entry& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    std::error_code ec2;
    if (n.rfind(tmp_prefix, 0) == 0) {
      fs::remove_all(e.path(), ec2);
    } else if (n.rfind(old_prefix, 0) == 0) {
      if (!fs::exists(fs::symlink_status(target, ec2))) {
        fs::rename(e.path(), target, ec2);
      } else {
        fs::remove_all(e.path(), ec2);
      }
    }
  }
  if (fs::exists(target, ec)) {
    if (!fs::is_directory(target, ec)) {
      return absl::AlreadyExistsError(absl::StrCat(target.string(), " exists and is not a directory"));
    }
    if (!fs::is_empty(target, ec) && !overwrite) {
      return absl::AlreadyExistsError(absl::StrCat(target.string(), " exists and is not empty (use --overwrite)"));
    }
  }
  fs::path tmp = parent / absl::StrCat(".", target.filename().string(), ".tmp-", getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directory(tmp, ec)) {
    return absl::PermissionDeniedError(absl::StrCat("cannot create ", tmp.string(), ": ", ec.message()));
  }
  absl::Status st = write(tmp.string());
  if (!st.ok()) {
    fs::remove_all(tmp, ec);
    return st;
  }
  fs::path old;
  if (fs::exists(target, ec)) {
    old = parent / absl::StrCat(".", target.filename().string(), ".old-", getpid());
    fs::rename(target, old, ec);
    if (ec) {
      std::error_code ec2;  // keep ec: its message is the error
      fs::remove_all(tmp, ec2);
      return absl::InternalError(absl::StrCat("cannot move aside ", target.string(), ": ", ec.message()));
    }
  }
  fs::rename(tmp, target, ec);
  if (ec) {
    std::error_code ec2;
    if (!old.empty()) fs::rename(old, target, ec2);
    fs::remove_all(tmp, ec2);
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp.string(), " to ", target.string(), ": ", ec.message()));
  }
  if (!old.empty()) fs::remove_all(old, ec);
  return absl::OkStatus();
}

}  // namespace peft::io
