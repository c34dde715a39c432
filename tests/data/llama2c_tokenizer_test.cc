// Tests for data/llama2c_tokenizer.h against ../shared/assets: run.c's ids for
// tok512.bin and the Llama 2 tokenizer.bin, decoding, a parity check against a
// literal transcription of run.c's O(n^2) merge loop, and malformed files.
#include "data/llama2c_tokenizer.h"

#include <iostream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

using ::peft::testing::check_encodings;
using ::peft::testing::check_round_trips;
using ::peft::testing::CheckResult;
using ::peft::testing::kNoAssetsReason;
using ::peft::testing::read_binary_file;
using ::peft::testing::read_reference_jsonl;
using ::peft::testing::shared_assets_dir;

std::unique_ptr<Llama2cTokenizer> load_or_die(const std::string& path) {
  auto tok = Llama2cTokenizer::create(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

// run.c's encode(), transcribed literally (rescan all pairs after every merge).
std::vector<int32_t> run_c_encode(const Llama2cTokenizer& tok, const std::string& text) {
  std::map<std::string, int32_t> vocab;
  for (int32_t id = tok.vocab_size() - 1; id >= 0; --id) vocab[tok.id_to_piece(id)] = id;  // lowest id wins
  auto lookup = [&](const std::string& s) {
    auto it = vocab.find(s);
    return it == vocab.end() ? -1 : it->second;
  };
  std::vector<int32_t> tokens;
  if (!text.empty()) tokens.push_back(lookup(" "));
  std::string buf;
  for (size_t i = 0; i < text.size(); ++i) {
    if ((text[i] & 0xC0) != 0x80) buf.clear();
    buf.push_back(text[i]);
    if (i + 1 < text.size() && (text[i + 1] & 0xC0) == 0x80 && buf.size() < 4) continue;
    int32_t id = lookup(buf);
    if (id != -1) {
      tokens.push_back(id);
    } else {
      for (unsigned char c : buf) tokens.push_back(c + 3);
    }
    buf.clear();
  }
  while (true) {
    float best_score = -1e10f;
    int best_id = -1, best_idx = -1;
    for (size_t i = 0; i + 1 < tokens.size(); ++i) {
      int32_t id = lookup(tok.id_to_piece(tokens[i]) + tok.id_to_piece(tokens[i + 1]));
      if (id != -1 && tok.score(id) > best_score) {
        best_score = tok.score(id);
        best_id = id;
        best_idx = static_cast<int>(i);
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    tokens.erase(tokens.begin() + best_idx + 1);
  }
  return tokens;
}

TEST(Llama2cTokenizerTest, Tok512MatchesRunCIds) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2c_stories260K/tok512.bin");
  ASSERT_NE(tok, nullptr);
  auto records = read_reference_jsonl(dir + "/llama2c_stories260K/reference_encodings_tok512.jsonl");
  ASSERT_FALSE(records.empty());
  int with_run_c_ids = 0;
  for (const auto& r : records) with_run_c_ids += r.llama2c_run_c_ids.has_value();
  EXPECT_GT(with_run_c_ids, 0);
  // llama2c_run_c_ids where present (whitespace that sentencepiece collapses), else sentencepiece's ids.
  CheckResult enc = check_encodings(*tok, records, /*prefer_run_c_ids=*/true);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  // run.c never collapses whitespace, so every text round-trips.
  CheckResult trip = check_round_trips(*tok, records);
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
  std::cout << "tok512.bin: " << enc.passed << "/" << enc.total << " encodings (" << with_run_c_ids
            << " via llama2c_run_c_ids), " << trip.passed << "/" << trip.total << " round trips\n";
}

TEST(Llama2cTokenizerTest, Llama2TokenizerBinMatchesSentencePieceIds) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2_tokenizer/tokenizer.bin");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->max_token_length(), 27);
  auto records = read_reference_jsonl(dir + "/llama2_tokenizer/reference_encodings.jsonl");
  ASSERT_FALSE(records.empty());
  CheckResult enc = check_encodings(*tok, records);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  CheckResult trip = check_round_trips(*tok, records);
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
  std::cout << "llama2 tokenizer.bin: " << enc.passed << "/" << enc.total << " encodings, " << trip.passed << "/"
            << trip.total << " round trips\n";
}

TEST(Llama2cTokenizerTest, HeapMergeMatchesLiteralRunCLoop) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2c_stories260K/tok512.bin");
  ASSERT_NE(tok, nullptr);
  const std::string corpus = read_binary_file(dir + "/corpus/tinyshakespeare.txt");
  ASSERT_GT(corpus.size(), 100000u);
  std::mt19937 rng(1234);
  std::vector<std::string> texts;
  for (int i = 0; i < 40; ++i) {
    size_t start = rng() % (corpus.size() - 400);
    texts.push_back(corpus.substr(start, 1 + rng() % 300));
  }
  // Random bytes (invalid UTF-8, NULs, long continuation runs) and repetitive text (many equal scores).
  for (int i = 0; i < 20; ++i) {
    std::string s(1 + rng() % 60, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    texts.push_back(s);
  }
  texts.push_back(std::string(200, 'a'));
  texts.push_back("  aaaa  the the the  \n\n\n  ");
  texts.push_back("\xF0\x9F\x98\x80\x80\x80\x80\x80 tail");
  int mismatches = 0;
  for (const std::string& t : texts) {
    std::vector<int32_t> fast = tok->encode(t), slow = run_c_encode(*tok, t);
    if (fast != slow && ++mismatches <= 3) {
      ADD_FAILURE() << "text \"" << t << "\": heap " << ::peft::testing::ids_to_string(fast) << " vs run.c "
                    << ::peft::testing::ids_to_string(slow);
    }
    EXPECT_EQ(tok->decode(fast), t);
  }
  EXPECT_EQ(mismatches, 0);

  // A long text stays fast (the literal loop would be quadratic here).
  std::vector<int32_t> long_ids = tok->encode(corpus.substr(0, 200000));
  EXPECT_GT(long_ids.size(), 10000u);
  EXPECT_EQ(tok->decode(long_ids), corpus.substr(0, 200000));
}

TEST(Llama2cTokenizerTest, SpecialIdsAndDecode) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2c_stories260K/tok512.bin");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->kind(), "llama2c");
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), -1);
  EXPECT_TRUE(tok->add_bos_by_default());
  EXPECT_EQ(tok->id_to_piece(1), "\n<s>\n");
  EXPECT_EQ(tok->id_to_piece(3 + 'A'), "<0x41>");
  EXPECT_EQ(tok->id_to_piece(512), "");
  EXPECT_EQ(tok->id_to_piece(-1), "");
  EXPECT_TRUE(tok->encode("").empty());

  // PROVENANCE: the run.c prompt "Once upon a time" is [1, 403, 407, 261, 378].
  std::vector<int32_t> ids = tok->encode("Once upon a time");
  EXPECT_EQ(ids, (std::vector<int32_t>{403, 407, 261, 378}));
  // The first generated ids decode to the documented story start.
  EXPECT_EQ(tok->decode({1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298}),
            "Once upon a time, there was a little g");
  // BOS/EOS and out-of-range ids are skipped; a space after BOS is stripped.
  std::vector<int32_t> framed = {1};
  framed.insert(framed.end(), ids.begin(), ids.end());
  framed.push_back(2);
  framed.push_back(99999);
  framed.push_back(-3);
  EXPECT_EQ(tok->decode(framed), "Once upon a time");
  // Byte pieces decode to raw bytes.
  EXPECT_EQ(tok->decode({3 + 0xE2, 3 + 0x82, 3 + 0xAC}), "\xE2\x82\xAC");
}

TEST(Llama2cTokenizerTest, MalformedFilesAreInvalidArgument) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  const std::string good = read_binary_file(dir + "/llama2c_stories260K/tok512.bin");
  struct Case {
    std::string name, bytes, expected_phrase;
  };
  // Byte offset of token `k`'s record (score, length, bytes).
  auto record_offset = [&good](int k) {
    size_t offset = 4;
    for (int i = 0; i < k; ++i) offset += 8 + static_cast<unsigned char>(good[offset + 4]);
    return offset;
  };
  std::string bad_len = good;
  bad_len[record_offset(0) + 4] = 100;  // token 0's length 100 > max_token_length 7
  std::string not_bytes = good;
  not_bytes[record_offset(3) + 8 + 3] = 'Z';  // id 3 "<0x00>" -> "<0xZ0>"
  std::vector<Case> cases = {
      {"tiny", "ab", "too short"},
      {"truncated_header", good.substr(0, 4 + 8 * 3 + 3), "truncated"},
      {"truncated_bytes", good.substr(0, 3000), "truncated"},
      {"trailing_byte", good + "x", "truncated"},
      {"zero_max_len", std::string(64, '\0'), "max_token_length"},
      {"bad_len", bad_len, "length 100"},
      {"not_byte_pieces", not_bytes, "byte piece"},
      {"few_tokens", good.substr(0, record_offset(3)), "expected at least 259"},
  };
  for (const Case& c : cases) {
    auto tok = Llama2cTokenizer::create_from_bytes(c.bytes, "/some/" + c.name + ".bin");
    ASSERT_FALSE(tok.ok()) << c.name;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_NE(tok.status().message().find("/some/" + c.name + ".bin"), std::string::npos) << tok.status();
    EXPECT_NE(tok.status().message().find(c.expected_phrase), std::string::npos) << tok.status();
  }
  auto missing = Llama2cTokenizer::create("/nonexistent/tokenizer.bin");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace peft::data
