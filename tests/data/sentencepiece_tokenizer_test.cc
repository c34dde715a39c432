// Tests for data/sentencepiece_tokenizer.h through the dlopen'ed shim, in a
// binary that also links and uses libtorch: the protobuf clash between
// Debian's libsentencepiece and libtorch would crash this process at startup
// if sentencepiece were linked directly (see ../shared/docs/toolchain.md).
#include "data/sentencepiece_tokenizer.h"

#include <stdlib.h>

#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"
#include "third_party/sentencepiece_shim/spm_loader.h"

namespace peft::data {
namespace {

using ::peft::testing::check_encodings;
using ::peft::testing::check_round_trips;
using ::peft::testing::CheckResult;
using ::peft::testing::kNoAssetsReason;
using ::peft::testing::make_temp_dir;
using ::peft::testing::read_binary_file;
using ::peft::testing::read_reference_jsonl;
using ::peft::testing::shared_assets_dir;
using ::peft::testing::write_binary_file;

std::string process_maps() {
  std::ifstream in("/proc/self/maps");
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::unique_ptr<SentencePieceTokenizer> load_or_die(const std::string& path) {
  auto tok = SentencePieceTokenizer::create(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

TEST(SentencePieceTokenizerTest, RunsInsideALibtorchProcess) {
  EXPECT_EQ(at::ones({3}).sum().item<float>(), 3.0f);
  EXPECT_NE(process_maps().find("libtorch_cpu"), std::string::npos);
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2_tokenizer/tokenizer.model");
  ASSERT_NE(tok, nullptr);
  // toolchain.md's check, in the same process as libtorch.
  EXPECT_EQ(tok->encode("Hello world, once upon a time."),
            (std::vector<int32_t>{15043, 3186, 29892, 2748, 2501, 263, 931, 29889}));
  const std::string maps = process_maps();
  EXPECT_NE(maps.find("libpeft_spm_shim.so"), std::string::npos);
  EXPECT_NE(maps.find("libsentencepiece"), std::string::npos);
  EXPECT_EQ(at::ones({2, 2}).sum().item<float>(), 4.0f);
}

TEST(SentencePieceTokenizerTest, Tok512MatchesReferenceIds) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2c_stories260K/tok512.model");
  ASSERT_NE(tok, nullptr);
  auto records = read_reference_jsonl(dir + "/llama2c_stories260K/reference_encodings_tok512.jsonl");
  ASSERT_FALSE(records.empty());
  CheckResult enc = check_encodings(*tok, records);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  // remove_extra_whitespaces=true: the texts with leading/trailing/repeated
  // spaces (exactly those carrying llama2c_run_c_ids) do not round-trip; all others do.
  std::vector<testing::ReferenceRecord> plain;
  for (const auto& r : records) {
    if (!r.llama2c_run_c_ids) plain.push_back(r);
  }
  CheckResult trip = check_round_trips(*tok, plain);
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
  CheckResult all_trips = check_round_trips(*tok, records);
  std::cout << "tok512.model: " << enc.passed << "/" << enc.total << " encodings, " << all_trips.passed << "/"
            << all_trips.total << " round trips (" << trip.passed << "/" << trip.total
            << " without collapsed whitespace)\n";
}

TEST(SentencePieceTokenizerTest, Llama2MatchesReferenceIds) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2_tokenizer/tokenizer.model");
  ASSERT_NE(tok, nullptr);
  auto records = read_reference_jsonl(dir + "/llama2_tokenizer/reference_encodings.jsonl");
  ASSERT_FALSE(records.empty());
  CheckResult enc = check_encodings(*tok, records);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  CheckResult trip = check_round_trips(*tok, records);  // PROVENANCE: decode(ids) == text for all
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
  std::cout << "llama2 tokenizer.model: " << enc.passed << "/" << enc.total << " encodings, " << trip.passed << "/"
            << trip.total << " round trips\n";
}

TEST(SentencePieceTokenizerTest, SpecialIdsPiecesAndDecode) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2_tokenizer/tokenizer.model");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), -1);
  EXPECT_TRUE(tok->add_bos_by_default());
  EXPECT_EQ(tok->id_to_piece(1), "<s>");
  EXPECT_EQ(tok->id_to_piece(13), "<0x0A>");
  EXPECT_EQ(tok->id_to_piece(32000), "");
  EXPECT_EQ(tok->id_to_piece(-1), "");
  EXPECT_TRUE(tok->encode("").empty());
  std::vector<int32_t> ids = tok->encode("Once upon a time");
  std::vector<int32_t> framed = {1};
  framed.insert(framed.end(), ids.begin(), ids.end());
  framed.insert(framed.end(), {2, 32000, -7});
  EXPECT_EQ(tok->decode(framed), "Once upon a time");
  // Invalid UTF-8 must not crash (sentencepiece maps it to U+FFFD-like pieces).
  std::string bad = "ok \xFF\xFE\xC3 end";
  EXPECT_FALSE(tok->encode(bad).empty());
}

TEST(SentencePieceTokenizerTest, ShimIsFoundAndOverridable) {
  absl::StatusOr<std::string> path = spm_shim::find_shim_library();
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_NE(path->find("libpeft_spm_shim.so"), std::string::npos);
  setenv("PEFT_SPM_SHIM", "/nonexistent/libpeft_spm_shim.so", 1);
  absl::StatusOr<std::string> missing = spm_shim::find_shim_library();
  unsetenv("PEFT_SPM_SHIM");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(missing.status().message().find("PEFT_SPM_SHIM"), std::string::npos);
  setenv("PEFT_SPM_SHIM", path->c_str(), 1);
  absl::StatusOr<std::string> explicit_path = spm_shim::find_shim_library();
  unsetenv("PEFT_SPM_SHIM");
  ASSERT_TRUE(explicit_path.ok());
  EXPECT_EQ(*explicit_path, *path);
}

TEST(SentencePieceTokenizerTest, CorruptModelsAreInvalidArgument) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  const std::string model = read_binary_file(dir + "/llama2c_stories260K/tok512.model");
  const std::string tmp = make_temp_dir("spm_bad_");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"truncated.model", model.substr(0, model.size() / 2)},
      {"garbage.model", std::string("\x0A\x05\x0A\x03\xFF\xFF\xFF garbage", 13)},
      {"text.model", "this is not a protobuf"},
      {"empty.model", ""},
      {"tokenizer.bin", read_binary_file(dir + "/llama2c_stories260K/tok512.bin")},
  };
  for (const auto& [name, bytes] : cases) {
    const std::string path = tmp + "/" + name;
    write_binary_file(path, bytes);
    auto tok = SentencePieceTokenizer::create(path);
    ASSERT_FALSE(tok.ok()) << name;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << name << ": " << tok.status();
    EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
  }
  EXPECT_EQ(SentencePieceTokenizer::create(tmp + "/missing.model").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace peft::data
