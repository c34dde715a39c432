// Sharded and single-file checkpoints: save_checkpoint + CheckpointReader.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"

namespace peft::io {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    out.insert(e.path().filename().string());
  }
  return out;
}

// 6 tensors of 400 B each (F32 [100]) in a deliberately unsorted order, plus
// one of 2000 B and a BF16 one of 200 B.
std::vector<NamedTensor> make_tensors() {
  at::manual_seed(7);
  std::vector<NamedTensor> t;
  for (const char* name : {"layers.1.w", "layers.0.w", "embed", "layers.2.w", "norm", "head"}) {
    t.push_back({name, at::randn({100})});
  }
  t.push_back({"big", at::randn({500})});
  t.push_back({"layers.0.half", at::randn({100}).to(at::kBFloat16)});
  return t;
}

void expect_same_contents(const CheckpointReader& r, const std::vector<NamedTensor>& tensors) {
  std::vector<std::string> expected;
  for (const NamedTensor& t : tensors) expected.push_back(t.name);
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(r.names(), expected);
  uint64_t total = 0;
  for (const NamedTensor& t : tensors) {
    auto loaded = r.load(t.name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_TRUE(at::equal(*loaded, t.tensor)) << t.name;
    auto viewed = r.view(t.name);
    ASSERT_TRUE(viewed.ok()) << viewed.status();
    EXPECT_TRUE(at::equal(*viewed, t.tensor)) << t.name;
    ASSERT_NE(r.find(t.name), nullptr);
    r.release(t.name);
    total += t.tensor.nbytes();
  }
  EXPECT_EQ(r.total_bytes(), total);
}

TEST(CheckpointTest, SingleFileWhenUnderTheLimit) {
  std::string dir = testing::make_temp_dir("ckpt_single");
  std::vector<NamedTensor> tensors = make_tensors();
  ASSERT_TRUE(save_checkpoint(dir, tensors).ok());
  EXPECT_EQ(list_dir(dir), std::set<std::string>{"model.safetensors"});
  auto r = CheckpointReader::open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  expect_same_contents(**r, tensors);
  // A path to the file itself works too.
  auto f = CheckpointReader::open(dir + "/model.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  expect_same_contents(**f, tensors);
  EXPECT_EQ((*f)->load("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(CheckpointTest, ShardedSaveWritesIndexAndLoadsTheSame) {
  std::string dir = testing::make_temp_dir("ckpt_sharded");
  std::vector<NamedTensor> tensors = make_tensors();
  // 1000 B shards, huggingface_hub's split: [l1, l0] (+embed would be 1200),
  // [embed, l2], big (2000 > limit) immediately gets a shard of its own while
  // [norm, head] stays open, and l0.half still fits there (exactly 1000).
  ASSERT_TRUE(save_checkpoint(dir, tensors, 1000).ok());
  std::set<std::string> expected_files = {"model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                          "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                          "model.safetensors.index.json"};
  EXPECT_EQ(list_dir(dir), expected_files);

  std::string text = read_text(dir + "/model.safetensors.index.json");
  Json index = Json::parse(text);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 6 * 400u + 2000u + 200u);
  Json expected_map = {
      {"layers.1.w", "model-00001-of-00004.safetensors"}, {"layers.0.w", "model-00001-of-00004.safetensors"},
      {"embed", "model-00002-of-00004.safetensors"},      {"layers.2.w", "model-00002-of-00004.safetensors"},
      {"big", "model-00003-of-00004.safetensors"},        {"norm", "model-00004-of-00004.safetensors"},
      {"head", "model-00004-of-00004.safetensors"},       {"layers.0.half", "model-00004-of-00004.safetensors"}};
  EXPECT_EQ(index["weight_map"], expected_map);
  EXPECT_EQ(text, index.dump(2) + "\n");  // sorted keys, indent 2

  // The oversized tensor is alone in its shard.
  auto big = SafetensorsFile::open(dir + "/model-00003-of-00004.safetensors");
  ASSERT_TRUE(big.ok());
  ASSERT_EQ((*big)->tensors().size(), 1u);
  EXPECT_EQ((*big)->tensors()[0].name, "big");
  EXPECT_EQ((*big)->metadata().at("format"), "pt");

  auto r = CheckpointReader::open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->files().size(), 4u);
  expect_same_contents(**r, tensors);

  // Same tensors as an unsharded save, bit for bit.
  std::string flat = testing::make_temp_dir("ckpt_flat");
  ASSERT_TRUE(save_checkpoint(flat, tensors).ok());
  auto rf = CheckpointReader::open(flat);
  ASSERT_TRUE(rf.ok());
  for (const std::string& name : (*r)->names()) {
    EXPECT_TRUE(at::equal((*r)->load(name).value(), (*rf)->load(name).value()));
  }
}

TEST(CheckpointTest, ResaveRemovesStaleFilesOnlyOfTheCheckpoint) {
  std::string dir = testing::make_temp_dir("ckpt_stale");
  std::vector<NamedTensor> tensors = make_tensors();
  ASSERT_TRUE(write_file_atomically(dir + "/config.json", "{}\n").ok());
  ASSERT_TRUE(write_file_atomically(dir + "/model-extra.safetensors", "keep").ok());
  ASSERT_TRUE(save_checkpoint(dir, tensors, 1000).ok());
  EXPECT_EQ(list_dir(dir).size(), 7u);
  // Sharded -> single: the index and all shards go.
  ASSERT_TRUE(save_checkpoint(dir, tensors).ok());
  EXPECT_EQ(list_dir(dir), (std::set<std::string>{"config.json", "model-extra.safetensors", "model.safetensors"}));
  // Single -> fewer shards: model.safetensors goes.
  ASSERT_TRUE(save_checkpoint(dir, tensors, 2400).ok());
  std::set<std::string> files = list_dir(dir);
  EXPECT_EQ(files.count("model.safetensors"), 0u);
  EXPECT_EQ(files.count("model.safetensors.index.json"), 1u);
  EXPECT_EQ(files.count("model-00002-of-00002.safetensors"), 1u);
  auto r = CheckpointReader::open(dir);
  ASSERT_TRUE(r.ok()) << r.status();
  expect_same_contents(**r, tensors);
}

TEST(CheckpointTest, CreatesMissingDirectoryAndRejectsBadTensors) {
  std::string dir = testing::make_temp_dir("ckpt_mk") + "/a/b";
  ASSERT_TRUE(save_checkpoint(dir, {{"x", at::ones({2})}}).ok());
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  absl::Status dup = save_checkpoint(dir, {{"x", at::ones({2})}, {"x", at::ones({3})}}, 4);
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  // Nothing was touched by the failed save.
  EXPECT_EQ(list_dir(dir), std::set<std::string>{"model.safetensors"});
}

class BadIndexTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("ckpt_badindex");
    ASSERT_TRUE(save_safetensors(dir_ + "/s1.safetensors", {{"a", at::ones({2})}, {"b", at::ones({2})}}).ok());
    ASSERT_TRUE(save_safetensors(dir_ + "/s2.safetensors", {{"c", at::ones({2})}}).ok());
  }
  absl::Status open_with(const Json& weight_map) {
    Json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    EXPECT_TRUE(write_file_atomically(dir_ + "/model.safetensors.index.json", index.dump()).ok());
    return CheckpointReader::open(dir_).status();
  }
  std::string dir_;
};

TEST_F(BadIndexTest, ValidIndexOpens) {
  EXPECT_TRUE(open_with({{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}}).ok());
}

TEST_F(BadIndexTest, IndexNamingAMissingShard) {
  absl::Status s = open_with({{"a", "s1.safetensors"}, {"z", "s9.safetensors"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("missing shard 's9.safetensors'"), std::string::npos) << s;
}

TEST_F(BadIndexTest, IndexNamingATensorTheShardLacks) {
  absl::Status s = open_with({{"a", "s1.safetensors"}, {"c", "s1.safetensors"}});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'c'"), std::string::npos) << s;
  EXPECT_NE(s.message().find("no such tensor"), std::string::npos) << s;
}

TEST_F(BadIndexTest, TensorInTwoShards) {
  ASSERT_TRUE(save_safetensors(dir_ + "/s3.safetensors", {{"a", at::zeros({2})}}).ok());
  absl::Status s = open_with({{"a", "s1.safetensors"}, {"c", "s3.safetensors"}});
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("'a' is present in two shards"), std::string::npos) << s;
}

TEST_F(BadIndexTest, MalformedIndexAndEscapingPaths) {
  EXPECT_FALSE(open_with({{"a", 3}}).ok());
  EXPECT_FALSE(open_with({{"a", "../s1.safetensors"}}).ok());
  EXPECT_FALSE(open_with({{"a", "/etc/passwd"}}).ok());
  EXPECT_FALSE(open_with(Json::array()).ok());
  ASSERT_TRUE(write_file_atomically(dir_ + "/model.safetensors.index.json",
                                    "{\"weight_map\": {\"a\": \"s1.safetensors\","
                                    " \"a\": \"s2.safetensors\"}}")
                  .ok());
  absl::Status dup = CheckpointReader::open(dir_).status();
  EXPECT_NE(dup.message().find("duplicate"), std::string::npos) << dup;
}

TEST(CheckpointTest, EmptyOrMissingDirectory) {
  std::string dir = testing::make_temp_dir("ckpt_empty");
  absl::Status s = CheckpointReader::open(dir).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("model.safetensors"), std::string::npos) << s;
  EXPECT_EQ(CheckpointReader::open(dir + "/nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace peft::io
