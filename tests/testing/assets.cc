#include "tests/testing/assets.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <string>

namespace peft::testing {
namespace fs = std::filesystem;

std::string source_root() {
  // anchor.txt is a data dependency; in the runfiles tree it is a symlink to
  // the real file in the checkout, so resolving it gives the source root.
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* ws = getenv("TEST_WORKSPACE");
  fs::path candidates[] = {
      fs::path(srcdir ? srcdir : "") / (ws ? ws : "__main__") / "tests/testing/anchor.txt",
      fs::current_path() / "tests/testing/anchor.txt",
  };
  for (const fs::path& p : candidates) {
    std::error_code ec;
    if (!fs::exists(p, ec)) continue;
    fs::path real = fs::canonical(p, ec);
    if (ec) continue;
    return real.parent_path().parent_path().parent_path().string();
  }
  return "";
}

std::string shared_assets_dir() {
  std::error_code ec;
  if (const char* env = getenv("PEFT_SHARED_DIR"); env && *env) {
    fs::path p = fs::path(env) / "assets";
    return fs::is_directory(p, ec) ? p.string() : "";
  }
  std::string root = source_root();
  if (root.empty()) return "";
  fs::path p = fs::path(root).parent_path() / "shared" / "assets";
  return fs::is_directory(p, ec) ? fs::canonical(p, ec).string() : "";
}

std::string make_temp_dir(const std::string& prefix) {
  const char* base = getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/" + prefix + "XXXXXX";
  char* made = mkdtemp(tmpl.data());
  return made ? std::string(made) : "";
}

}  // namespace peft::testing
