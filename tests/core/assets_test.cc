#include "tests/testing/assets.h"

#include <filesystem>

#include <gtest/gtest.h>

namespace peft::testing {
namespace {

TEST(AssetsTest, FindsSourceRoot) {
  std::string root = source_root();
  ASSERT_FALSE(root.empty());
  EXPECT_TRUE(std::filesystem::exists(root + "/WORKSPACE"));
}

TEST(AssetsTest, FindsSharedAssetsOrSkips) {
  std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  EXPECT_TRUE(std::filesystem::exists(dir + "/PROVENANCE.md"));
}

}  // namespace
}  // namespace peft::testing
