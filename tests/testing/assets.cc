#include "tests/testing/assets.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
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

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string runfile(const std::string& workspace_path) {
  const char* srcdir = getenv("TEST_SRCDIR");
  return std::string(srcdir ? srcdir : ".") + "/__main__/" + workspace_path;
}

ProgramRun run_program(const std::string& program, const std::vector<std::string>& args, const std::string& input) {
  const std::string dir = make_temp_dir("run");
  std::ofstream(dir + "/in") << input;
  std::string cmd = shell_quote(program);
  for (const std::string& a : args) cmd += " " + shell_quote(a);
  cmd += " <" + dir + "/in >" + dir + "/out 2>" + dir + "/err";
  const int status = std::system(cmd.c_str());
  ProgramRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(dir + "/out");
  r.err = slurp(dir + "/err");
  return r;
}

}  // namespace peft::testing
