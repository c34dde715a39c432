// Tests for load_tokenizer() (data/tokenizer.h): directory layouts, content
// sniffing of single files whatever their names, and errors for files of the
// wrong kind.
#include "data/tokenizer.h"

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

namespace fs = std::filesystem;
using ::peft::testing::kNoAssetsReason;
using ::peft::testing::make_temp_dir;
using ::peft::testing::read_binary_file;
using ::peft::testing::shared_assets_dir;
using ::peft::testing::write_binary_file;

class LoadTokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    assets_ = shared_assets_dir();
    if (assets_.empty()) GTEST_SKIP() << kNoAssetsReason;
    tmp_ = make_temp_dir("load_tok_");
    ASSERT_FALSE(tmp_.empty());
  }

  // A fresh directory holding symlinks `name -> assets_/target` for each pair.
  std::string dir_with(const std::vector<std::pair<std::string, std::string>>& links) {
    const std::string dir = make_temp_dir("load_tok_dir_");
    for (const auto& [name, target] : links) fs::create_symlink(assets_ + "/" + target, dir + "/" + name);
    return dir;
  }

  // Loads `path` and checks its kind and the encoding of a fixed sentence.
  void expect_loads(const std::string& path, const std::string& kind, const std::vector<int32_t>& hello_ids) {
    SCOPED_TRACE(path);
    auto tok = load_tokenizer(path);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ((*tok)->kind(), kind);
    EXPECT_EQ((*tok)->encode("Hello world"), hello_ids);
  }

  void expect_invalid(const std::string& path, const std::string& phrase = "") {
    SCOPED_TRACE(path);
    auto tok = load_tokenizer(path);
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << tok.status();
    EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
    EXPECT_NE(tok.status().message().find(phrase), std::string::npos) << tok.status();
  }

  std::string assets_, tmp_;
};

// Reference ids of "Hello world" (first line of each reference_encodings file).
const std::vector<int32_t> kLlama2Hello = {15043, 3186};
const std::vector<int32_t> kTok512Hello = {346, 306, 414, 263, 304, 341};
const std::vector<int32_t> kGpt2Hello = {15496, 995};

TEST_F(LoadTokenizerTest, FilesAreSniffedByContent) {
  expect_loads(assets_ + "/llama2_tokenizer/tokenizer.model", "sentencepiece", kLlama2Hello);
  expect_loads(assets_ + "/llama2_tokenizer/tokenizer.bin", "llama2c", kLlama2Hello);
  expect_loads(assets_ + "/llama2c_stories260K/tok512.model", "sentencepiece", kTok512Hello);
  expect_loads(assets_ + "/llama2c_stories260K/tok512.bin", "llama2c", kTok512Hello);
  expect_loads(assets_ + "/gpt2_bpe/encoder.json", "gpt2_bpe", kGpt2Hello);
  // Names do not matter.
  const std::string dir = dir_with({{"a.dat", "llama2c_stories260K/tok512.bin"},
                                    {"b.dat", "llama2c_stories260K/tok512.model"},
                                    {"vocab.json", "gpt2_bpe/encoder.json"},
                                    {"merges.txt", "gpt2_bpe/vocab.bpe"}});
  expect_loads(dir + "/a.dat", "llama2c", kTok512Hello);
  expect_loads(dir + "/b.dat", "sentencepiece", kTok512Hello);
  expect_loads(dir + "/vocab.json", "gpt2_bpe", kGpt2Hello);
}

TEST_F(LoadTokenizerTest, DirectoriesFollowThePreferenceOrder) {
  // tokenizer.model wins over tokenizer.bin.
  expect_loads(assets_ + "/llama2_tokenizer", "sentencepiece", kLlama2Hello);
  expect_loads(assets_ + "/gpt2_bpe", "gpt2_bpe", kGpt2Hello);
  expect_loads(dir_with({{"tokenizer.bin", "llama2c_stories260K/tok512.bin"}}), "llama2c", kTok512Hello);
  expect_loads(dir_with({{"vocab.json", "gpt2_bpe/encoder.json"},
                         {"merges.txt", "gpt2_bpe/vocab.bpe"},
                         {"tokenizer.bin", "llama2c_stories260K/tok512.bin"}}),
               "gpt2_bpe", kGpt2Hello);
  expect_loads(dir_with({{"tokenizer.model", "llama2c_stories260K/tok512.model"},
                         {"encoder.json", "gpt2_bpe/encoder.json"},
                         {"vocab.bpe", "gpt2_bpe/vocab.bpe"}}),
               "sentencepiece", kTok512Hello);

  // tokenizer.json (a minimal byte-level BPE: the 256 byte symbols and one merge).
  std::string vocab = "{";
  std::string symbols;
  for (int i = 0; i < 256; ++i) {
    // GPT-2's byte alphabet for printable ASCII is the byte itself; other bytes get escaped code points.
    int cp = (i >= '!' && i <= '~') ? i : 0x100 + i;
    char buf[32];
    snprintf(buf, sizeof(buf), "%s\"\\u%04x\": %d", i ? ", " : "", cp, i);
    vocab += buf;
  }
  vocab += ", \"ab\": 256}";
  const std::string json_dir = make_temp_dir("load_tok_json_");
  // A vocab whose non-printable bytes do not use GPT-2's alphabet is rejected, naming the file.
  write_binary_file(
      json_dir + "/tokenizer.json",
      "{\"model\": {\"type\": \"BPE\", \"vocab\": " + vocab +
          ", \"merges\": [\"a b\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}");
  expect_invalid(json_dir, "byte-level");
  // The real GPT-2 files as tokenizer.json load from the directory.
  const std::string gpt2_dir = make_temp_dir("load_tok_gpt2json_");
  std::string merges;
  {
    std::string bpe = read_binary_file(assets_ + "/gpt2_bpe/vocab.bpe");
    size_t start = bpe.find('\n') + 1;  // skip #version
    bool first = true;
    merges = "[";
    while (start < bpe.size()) {
      size_t end = bpe.find('\n', start);
      if (end == std::string::npos) end = bpe.size();
      std::string line = bpe.substr(start, end - start);
      start = end + 1;
      if (line.empty()) continue;
      std::string escaped;
      for (char c : line) {
        if (c == '"' || c == '\\') escaped.push_back('\\');
        escaped.push_back(c);
      }
      merges += (first ? "\"" : ", \"") + escaped + "\"";
      first = false;
    }
    merges += "]";
  }
  write_binary_file(
      gpt2_dir + "/tokenizer.json",
      "{\"model\": {\"type\": \"BPE\", \"vocab\": " + read_binary_file(assets_ + "/gpt2_bpe/encoder.json") +
          ", \"merges\": " + merges + "}, \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false}}");
  expect_loads(gpt2_dir, "tokenizer_json", kGpt2Hello);
  expect_loads(gpt2_dir + "/tokenizer.json", "tokenizer_json", kGpt2Hello);
  // tokenizer.json wins over tokenizer.model in a directory.
  const std::string both = dir_with({{"tokenizer.model", "llama2c_stories260K/tok512.model"}});
  write_binary_file(both + "/tokenizer.json", read_binary_file(gpt2_dir + "/tokenizer.json"));
  expect_loads(both, "tokenizer_json", kGpt2Hello);
}

TEST_F(LoadTokenizerTest, WrongKindsAndCorruptFilesAreInvalidArgument) {
  // A real safetensors checkpoint, and a synthetic safetensors-like header.
  expect_invalid(assets_ + "/hf_tiny/gpt2_tiny/model.safetensors", "safetensors checkpoint");
  std::string header = R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})";
  std::string safetensors(8, '\0');
  safetensors[0] = static_cast<char>(header.size());
  safetensors += header + std::string(8, '\0');
  write_binary_file(tmp_ + "/model.safetensors", safetensors);
  expect_invalid(tmp_ + "/model.safetensors", "safetensors checkpoint");
  // JSON that is not a tokenizer; broken JSON; a config.json.
  write_binary_file(tmp_ + "/random.json", R"({"a": [1, 2, 3], "b": {"c": null}})");
  expect_invalid(tmp_ + "/random.json", "neither a tokenizer.json");
  write_binary_file(tmp_ + "/broken.json", R"({"model": {"type": "BPE", )");
  expect_invalid(tmp_ + "/broken.json", "broken.json: invalid JSON at byte ");
  expect_invalid(tmp_ + "/broken.json", " of 26");  // the file's size: the reader names where it stopped
  expect_invalid(assets_ + "/hf_tiny/gpt2_tiny/config.json");
  // Empty file.
  write_binary_file(tmp_ + "/empty.model", "");
  expect_invalid(tmp_ + "/empty.model", "empty");
  // Truncated tokenizer.bin and tokenizer.model.
  const std::string bin = read_binary_file(assets_ + "/llama2c_stories260K/tok512.bin");
  write_binary_file(tmp_ + "/tokenizer.bin", bin.substr(0, bin.size() - 3));
  expect_invalid(tmp_ + "/tokenizer.bin", "truncated");
  const std::string model = read_binary_file(assets_ + "/llama2_tokenizer/tokenizer.model");
  write_binary_file(tmp_ + "/tokenizer.model", model.substr(0, model.size() / 3));
  expect_invalid(tmp_ + "/tokenizer.model", "sentencepiece");
  // Seeded random bytes.
  std::mt19937 rng(42);
  for (int i = 0; i < 5; ++i) {
    std::string bytes(100 + rng() % 2000, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() % 256);
    const std::string path = tmp_ + "/random" + std::to_string(i) + ".bin";
    write_binary_file(path, bytes);
    expect_invalid(path);
  }
  // A vocabulary JSON without merges beside it.
  const std::string lone = dir_with({{"encoder.json", "gpt2_bpe/encoder.json"}});
  expect_invalid(lone + "/encoder.json", "no merges.txt or vocab.bpe");
  // A directory without a tokenizer, and one whose tokenizer.model is broken.
  expect_invalid(lone, "no tokenizer");
  expect_invalid(make_temp_dir("load_tok_empty_"), "no tokenizer");
  const std::string broken_dir = make_temp_dir("load_tok_broken_");
  write_binary_file(broken_dir + "/tokenizer.model", "not a model");
  expect_invalid(broken_dir + "/tokenizer.model");
  auto from_dir = load_tokenizer(broken_dir);
  EXPECT_EQ(from_dir.status().code(), absl::StatusCode::kInvalidArgument) << from_dir.status();
}

TEST_F(LoadTokenizerTest, MissingPathIsNotFound) {
  auto tok = load_tokenizer(tmp_ + "/does/not/exist");
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find(tmp_ + "/does/not/exist"), std::string::npos);
}

}  // namespace
}  // namespace peft::data
