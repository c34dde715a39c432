// peft/ has two layers: the adapter interface with the I/O and core helpers
// below it (peft/adapter.h, peft/adaptable_linear.*, peft/hook_point.h,
// peft/io/, peft/core/), which models/ build on, and the methods and
// PeftModel above models/. The lower layer must not include anything under
// models/ nor depend on a //models target; this test reads the sources.
#include <filesystem>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/testing/assets.h"

namespace peft {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> lower_layer_files(const std::string& root) {
  std::vector<std::string> out;
  for (const char* dir : {"peft/io", "peft/core"}) {
    for (const auto& e : fs::directory_iterator(root + "/" + dir)) out.push_back(e.path().string());
  }
  const std::regex interface_file("(adapter\\.h|adaptable_linear\\.(h|cc)|hook_point\\.h)");
  for (const auto& e : fs::directory_iterator(root + "/peft")) {
    if (e.is_regular_file() && std::regex_match(e.path().filename().string(), interface_file)) {
      out.push_back(e.path().string());
    }
  }
  return out;
}

TEST(Layering, AdapterInterfaceIoAndCoreDoNotUseModels) {
  const std::string root = testing::source_root();
  ASSERT_FALSE(root.empty()) << "cannot find the source tree";
  const std::vector<std::string> files = lower_layer_files(root);
  ASSERT_GE(files.size(), 10u);
  const std::regex include_models("#include\\s+\"models/");
  for (const std::string& f : files) {
    const std::string text = testing::slurp(f);
    ASSERT_FALSE(text.empty()) << f;
    EXPECT_FALSE(std::regex_search(text, include_models)) << f << " includes a header under models/";
    if (fs::path(f).filename() == "BUILD") {
      EXPECT_EQ(text.find("//models"), std::string::npos) << f << " depends on a //models target";
    }
  }
  // The interface targets themselves, in peft/BUILD.
  const std::string build = testing::slurp(root + "/peft/BUILD");
  for (const char* target : {"\"adapter\"", "\"hook_point\"", "\"adaptable_linear\""}) {
    const size_t start = build.find(std::string("name = ") + target);
    ASSERT_NE(start, std::string::npos) << target;
    const size_t end = build.find("\n)", start);
    EXPECT_EQ(build.substr(start, end - start).find("//models"), std::string::npos)
        << "//peft:" << target << " depends on //models";
  }
}

}  // namespace
}  // namespace peft
