#include "peft/io/atomic_file.h"

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "peft/io/file_lock.h"
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

// Write a directory holding one file "f" with `text`.
absl::Status write_dir(const std::string& dir, const std::string& text, bool overwrite = false) {
  return write_directory_atomically(dir, overwrite,
                                    [&](const std::string& tmp) { return write_file_atomically(tmp + "/f", text); });
}

TEST(FileLockTest, OneHolderAtATimeNamedByPid) {
  const std::string path = testing::make_temp_dir("lock") + "/.lock";
  absl::StatusOr<FileLock> a = FileLock::acquire(path, "run dir X");
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<FileLock> b = FileLock::acquire(path, "run dir X");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(b.status().message(),
            absl::StrCat("run dir X is in use by another peft process (pid ", getpid(), "; lock file ", path, ")"));
  a->release();
  EXPECT_TRUE(FileLock::acquire(path, "run dir X").ok());
}

TEST(FileLockTest, KilledHolderReleasesTheLock) {
  const std::string path = testing::make_temp_dir("lock_kill") + "/.lock";
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    absl::StatusOr<FileLock> l = FileLock::acquire(path, "x");
    char c = l.ok() ? '1' : '0';
    if (write(ready[1], &c, 1) != 1) _exit(2);
    pause();
    _exit(0);
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, '1');
  absl::StatusOr<FileLock> busy = FileLock::acquire(path, "x");
  ASSERT_FALSE(busy.ok());
  EXPECT_NE(busy.status().message().find(absl::StrCat("pid ", child)), std::string::npos) << busy.status();
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  EXPECT_TRUE(FileLock::acquire(path, "x").ok());  // the stale file does not block
  close(ready[0]);
  close(ready[1]);
}

TEST(AtomicDirectoryTest, SecondWriterIsRefusedWhileTheFirstWrites) {
  const std::string root = testing::make_temp_dir("dir_lock");
  const std::string out = root + "/merged";
  absl::Status inner;
  absl::Status outer = write_directory_atomically(out, false, [&](const std::string& tmp) {
    inner = write_dir(out, "second");  // another writer of the same output, meanwhile
    return write_file_atomically(tmp + "/f", "first");
  });
  ASSERT_TRUE(outer.ok()) << outer;
  EXPECT_EQ(inner.code(), absl::StatusCode::kFailedPrecondition) << inner;
  EXPECT_NE(inner.message().find("is in use by another peft process"), std::string::npos) << inner;
  EXPECT_EQ(read_text(out + "/f"), "first");
  EXPECT_EQ(count_entries(root), 1);  // no lock file, no temporaries left
  // Without --overwrite a second run is refused, with it the output is replaced.
  EXPECT_EQ(write_dir(out, "again").code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(write_dir(out, "again", /*overwrite=*/true).ok());
  EXPECT_EQ(read_text(out + "/f"), "again");
}

TEST(AtomicDirectoryTest, DeadWritersTemporariesAreCleanedOrRestored) {
  namespace fs = std::filesystem;
  const std::string root = testing::make_temp_dir("dir_stale");
  // A writer killed while writing: an incomplete temporary.
  fs::create_directories(root + "/.a.tmp-999999");
  ASSERT_TRUE(write_dir(root + "/a", "new").ok());
  EXPECT_FALSE(fs::exists(root + "/.a.tmp-999999"));
  // A writer killed between its two renames: the previous output moved aside
  // and the output missing; the previous output comes back.
  fs::create_directories(root + "/.b.old-999999");
  ASSERT_TRUE(write_file_atomically(root + "/.b.old-999999/f", "previous").ok());
  EXPECT_EQ(write_dir(root + "/b", "next").code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(read_text(root + "/b/f"), "previous");
  EXPECT_FALSE(fs::exists(root + "/.b.old-999999"));
}

TEST(AtomicDirectoryTest, SymlinkOutputIsRefused) {
  namespace fs = std::filesystem;
  const std::string root = testing::make_temp_dir("dir_link");
  fs::create_directories(root + "/real");
  fs::create_directory_symlink(root + "/real", root + "/link");
  absl::Status st = write_dir(root + "/link", "x", /*overwrite=*/true);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("is a symbolic link"), std::string::npos) << st;
  EXPECT_TRUE(fs::is_symlink(root + "/link"));
}

}  // namespace
}  // namespace peft::io
