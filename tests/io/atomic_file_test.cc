#include "peft/io/atomic_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "tests/testing/assets.h"

namespace peft::io {
namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int count_entries(const std::string& dir) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++n;
  }
  return n;
}

TEST(AtomicFileTest, WritesAndReplaces) {
  std::string dir = testing::make_temp_dir("atomic");
  std::string path = dir + "/config.json";
  ASSERT_TRUE(write_file_atomically(path, "old").ok());
  ASSERT_TRUE(write_file_atomically(path, std::string("new\0x", 5)).ok());
  EXPECT_EQ(read_text(path), std::string("new\0x", 5));
  EXPECT_EQ(count_entries(dir), 1);
}

TEST(AtomicFileTest, AbandonedWriterLeavesTargetUntouched) {
  std::string dir = testing::make_temp_dir("atomic_abort");
  std::string path = dir + "/f.txt";
  ASSERT_TRUE(write_file_atomically(path, "keep").ok());
  {
    auto w = AtomicFileWriter::create(path);
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->write("partial", 7).ok());
    EXPECT_EQ(count_entries(dir), 2);  // the temp file exists meanwhile
  }
  EXPECT_EQ(read_text(path), "keep");
  EXPECT_EQ(count_entries(dir), 1);
}

TEST(AtomicFileTest, CommitTwiceFailsAndMissingDirIsAnError) {
  std::string dir = testing::make_temp_dir("atomic_twice");
  auto w = AtomicFileWriter::create(dir + "/x");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->commit().ok());
  EXPECT_FALSE((*w)->commit().ok());
  EXPECT_FALSE((*w)->write("a", 1).ok());
  absl::Status missing = write_file_atomically(dir + "/no/such/x", "a");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_FALSE(write_file_atomically(dir + "/", "a").ok());
}

}  // namespace
}  // namespace peft::io
