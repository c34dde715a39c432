// File: tests/testing/assets.h
//
// Locates ../shared/assets (real checkpoints, tokenizers and reference outputs)
// for tests. Tests that need it skip with a printed reason when it is absent:
//
//   std::string dir = peft::testing::shared_assets_dir();
//   if (dir.empty()) GTEST_SKIP() << peft::testing::kNoAssetsReason;
#ifndef PEFT_TESTS_TESTING_ASSETS_H_
#define PEFT_TESTS_TESTING_ASSETS_H_

#include <string>

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

/// A fresh empty directory under $TEST_TMPDIR (or /tmp) for a test's outputs.
std::string make_temp_dir(const std::string& prefix);

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_ASSETS_H_
