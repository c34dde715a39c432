// Helpers for harnesses whose reader takes a path: a per-process scratch
// directory (on /dev/shm when there is one, so no disk is touched) that is
// removed at exit, and whole-file writes into it.
#ifndef PEFT_FUZZ_FUZZ_FILES_H_
#define PEFT_FUZZ_FUZZ_FILES_H_

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

namespace peft::fuzz {

// The scratch directory, created on first use.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::error_code ec;
    const std::filesystem::path base =
        std::filesystem::is_directory("/dev/shm", ec) && access("/dev/shm", W_OK) == 0 ? "/dev/shm" : ".";
    std::filesystem::path d = base / ("peft-fuzz-" + std::to_string(getpid()));
    std::filesystem::create_directories(d, ec);
    if (ec) {
      std::fprintf(stderr, "cannot create %s: %s\n", d.c_str(), ec.message().c_str());
      std::abort();
    }
    static std::string removed;
    removed = d.string();
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(removed, ignored);
    });
    return d.string();
  }();
  return dir;
}

// Writes `bytes` to scratch_dir()/name (replacing it) and returns the path.
inline std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::string path = scratch_dir() + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr || (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) ||
      std::fclose(f) != 0) {
    std::perror(path.c_str());
    std::abort();
  }
  return path;
}

}  // namespace peft::fuzz

#endif  // PEFT_FUZZ_FUZZ_FILES_H_
