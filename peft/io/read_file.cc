#include "peft/io/read_file.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/strings/str_cat.h"

namespace peft::io {
namespace {

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

}  // namespace

absl::StatusOr<std::string> read_file(const std::string& path) { return read_file_prefix(path, std::string::npos); }

absl::StatusOr<std::string> read_file_prefix(const std::string& path, size_t max_bytes) {
  std::error_code ec;
  std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
  if (!std::filesystem::is_regular_file(st)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (f == nullptr) {
    int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  std::string data;
  char buffer[1 << 16];
  size_t n;
  while (data.size() < max_bytes &&
         (n = std::fread(buffer, 1, std::min(sizeof(buffer), max_bytes - data.size()), f.get())) > 0) {
    data.append(buffer, n);
  }
  if (std::ferror(f.get())) {
    int err = errno;
    return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(path, ": read error: ", std::strerror(err)));
  }
  return data;
}

}  // namespace peft::io
