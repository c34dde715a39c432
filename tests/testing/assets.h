//
// Locates ../shared/assets (real checkpoints, tokenizers and reference outputs)
// for tests. Tests that need it skip with a printed reason when it is absent:
//
//   std::string dir = peft::testing::shared_assets_dir();
//   if (dir.empty()) GTEST_SKIP() << peft::testing::kNoAssetsReason;
#ifndef PEFT_TESTS_TESTING_ASSETS_H_
#define PEFT_TESTS_TESTING_ASSETS_H_

#include <string>
#include <vector>

namespace peft::testing {

inline constexpr const char* kNoAssetsReason =
    "../shared/assets not found next to the checkout (set PEFT_SHARED_DIR to "
    "the shared/ folder to run this test)";

/// The assets folder (".../shared/assets", no trailing slash), or "" when it
/// cannot be found. Looks at $PEFT_SHARED_DIR, then at ../shared beside the
/// source tree that the test's runfiles link to.
std::string shared_assets_dir();

/// The source tree root of this checkout, found through the runfiles symlinks
/// ("" when it cannot be found).
std::string source_root();

/// True in a build with AddressSanitizer (`bazel test --config=asan`): its
/// shadow memory and quarantine of freed blocks make peak-RSS assertions
/// meaningless, so tests that measure resident memory skip.
constexpr bool address_sanitizer() {
#if defined(__SANITIZE_ADDRESS__)
  return true;
#else
  return false;
#endif
}

/// A fresh empty directory under $TEST_TMPDIR (or /tmp) for a test's outputs.
std::string make_temp_dir(const std::string& prefix);

/// A file's bytes ("" when it cannot be read).
std::string slurp(const std::string& path);

/// `s` quoted for /bin/sh.
std::string shell_quote(const std::string& s);

/// A program built by Bazel, through the runfiles ("examples/peft" ->
/// $TEST_SRCDIR/__main__/examples/peft).
std::string runfile(const std::string& workspace_path);

struct ProgramRun {
  int code = -1;  ///< the exit status; -1 when killed by a signal
  std::string out, err;
};

/// Runs `program args...` through the shell, feeding `input` on stdin, and
/// returns its exit status, stdout and stderr.
ProgramRun run_program(const std::string& program, const std::vector<std::string>& args, const std::string& input = "");

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_ASSETS_H_
