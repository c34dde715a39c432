// Tests for data/bpe_tokenizer.h: GPT-2 reference ids (encoder.json +
// vocab.bpe), a tokenizer.json built from the same files in both merge
// spellings and with HF pipeline variants, invalid UTF-8, and rejected files.
#include "data/bpe_tokenizer.h"

#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

using ::peft::testing::check_encodings;
using ::peft::testing::check_round_trips;
using ::peft::testing::CheckResult;
using ::peft::testing::ids_to_string;
using ::peft::testing::kNoAssetsReason;
using ::peft::testing::make_temp_dir;
using ::peft::testing::read_binary_file;
using ::peft::testing::read_reference_jsonl;
using ::peft::testing::ReferenceRecord;
using ::peft::testing::shared_assets_dir;
using json = nlohmann::json;

constexpr int32_t kEndOfText = 50256;
constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Shared across tests: parsing encoder.json takes a few tens of milliseconds.
class BpeTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(shared_assets_dir());
    if (dir_->empty()) return;
    auto tok = BpeTokenizer::create(*dir_ + "/gpt2_bpe/encoder.json", *dir_ + "/gpt2_bpe/vocab.bpe");
    ASSERT_TRUE(tok.ok()) << tok.status();
    gpt2_ = tok->release();
    records_ = new std::vector<ReferenceRecord>(read_reference_jsonl(*dir_ + "/gpt2_bpe/reference_encodings.jsonl"));
  }
  static void TearDownTestSuite() {
    delete gpt2_;
    delete records_;
    delete dir_;
  }
  void SetUp() override {
    if (dir_->empty()) GTEST_SKIP() << kNoAssetsReason;
    ASSERT_NE(gpt2_, nullptr);
  }

  // A GPT-2 tokenizer.json equivalent to encoder.json + vocab.bpe.
  static json gpt2_tokenizer_json(bool merges_as_pairs) {
    json vocab = json::parse(read_binary_file(*dir_ + "/gpt2_bpe/encoder.json"));
    json merges = json::array();
    std::ifstream in(*dir_ + "/gpt2_bpe/vocab.bpe");
    std::string line;
    std::getline(in, line);  // #version
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      size_t space = line.find(' ');
      if (merges_as_pairs) {
        merges.push_back(json::array({line.substr(0, space), line.substr(space + 1)}));
      } else {
        merges.push_back(line);
      }
    }
    return json{
        {"version", "1.0"},
        {"truncation", nullptr},
        {"padding", nullptr},
        {"added_tokens", json::array({{{"id", kEndOfText},
                                       {"content", "<|endoftext|>"},
                                       {"single_word", false},
                                       {"lstrip", false},
                                       {"rstrip", false},
                                       {"normalized", true},
                                       {"special", true}}})},
        {"normalizer", nullptr},
        {"pre_tokenizer",
         {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
        {"post_processor",
         {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}}},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model",
         {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", nullptr},
          {"continuing_subword_prefix", ""},
          {"end_of_word_suffix", ""},
          {"fuse_unk", false},
          {"byte_fallback", false},
          {"vocab", vocab},
          {"merges", merges}}},
    };
  }

  static std::string write_json(const std::string& dir, const json& j) {
    const std::string path = dir + "/tokenizer.json";
    ::peft::testing::write_binary_file(path, j.dump());
    return path;
  }

  static std::unique_ptr<BpeTokenizer> from_json(const json& j) {
    auto tok = BpeTokenizer::create(write_json(make_temp_dir("bpe_json_"), j));
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? *std::move(tok) : nullptr;
  }

  static std::string* dir_;
  static BpeTokenizer* gpt2_;
  static std::vector<ReferenceRecord>* records_;
};

std::string* BpeTokenizerTest::dir_ = nullptr;
BpeTokenizer* BpeTokenizerTest::gpt2_ = nullptr;
std::vector<ReferenceRecord>* BpeTokenizerTest::records_ = nullptr;

TEST_F(BpeTokenizerTest, EncoderJsonMatchesReferenceIds) {
  ASSERT_FALSE(records_->empty());
  CheckResult enc = check_encodings(*gpt2_, *records_);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  // PROVENANCE: ids round-trip for every string (only the JS decoder's BOM quirk differs).
  CheckResult trip = check_round_trips(*gpt2_, *records_);
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
  std::cout << "gpt2 encoder.json: " << enc.passed << "/" << enc.total << " encodings, " << trip.passed << "/"
            << trip.total << " round trips\n";
}

// Unicode whitespace / letter / number edge cases; ids from the
// npm gpt-3-encoder (testdata/gen_gpt2_edge_cases.js). Guards that PCRE2's
// UCP classes agree with the reference regex engine.
TEST_F(BpeTokenizerTest, UnicodeClassEdgeCasesMatchEncoderPy) {
  const char* srcdir = getenv("TEST_SRCDIR");
  const char* workspace = getenv("TEST_WORKSPACE");
  ASSERT_NE(srcdir, nullptr);
  const std::string path =
      std::string(srcdir) + "/" + (workspace ? workspace : "__main__") + "/tests/data/testdata/gpt2_edge_cases.jsonl";
  std::vector<ReferenceRecord> records = read_reference_jsonl(path);
  ASSERT_GT(records.size(), 90u);
  CheckResult enc = check_encodings(*gpt2_, records);
  EXPECT_EQ(enc.passed, enc.total) << enc.failures;
  CheckResult trip = check_round_trips(*gpt2_, records);
  EXPECT_EQ(trip.passed, trip.total) << trip.failures;
}

TEST_F(BpeTokenizerTest, SpecialIdsAndPieces) {
  EXPECT_EQ(gpt2_->kind(), "gpt2_bpe");
  EXPECT_EQ(gpt2_->vocab_size(), 50257);
  EXPECT_EQ(gpt2_->bos_id(), kEndOfText);
  EXPECT_EQ(gpt2_->eos_id(), kEndOfText);
  EXPECT_EQ(gpt2_->pad_id(), -1);
  EXPECT_FALSE(gpt2_->add_bos_by_default());
  EXPECT_EQ(gpt2_->id_to_piece(kEndOfText), "<|endoftext|>");
  EXPECT_EQ(gpt2_->id_to_piece(262), "\xC4\xA0the");  // "Ġthe"
  EXPECT_EQ(gpt2_->id_to_piece(50257), "");
  EXPECT_EQ(gpt2_->piece_to_id("\xC4\xA0the"), 262);
  // Special tokens in text are plain text; the id itself is skipped by decode.
  EXPECT_NE(gpt2_->encode("<|endoftext|>"), std::vector<int32_t>{kEndOfText});
  EXPECT_EQ(gpt2_->decode({kEndOfText, 15496, 995, kEndOfText, -1, 60000}), "Hello world");
  EXPECT_TRUE(gpt2_->encode("").empty());
}

TEST_F(BpeTokenizerTest, ArbitraryBytesRoundTrip) {
  std::mt19937 rng(7);
  std::vector<std::string> texts = {
      "\xFF",
      "\xC3",
      "abc\xC3",
      "\xE2\x82",
      "\xED\xA0\x80 surrogate",
      "\xC0\xAF overlong",
      "\xF4\x90\x80\x80",
      std::string("nul\0inside", 10),
      "caf\xC3\xA9\xFF\xFE done",
      "\x80\x80\x80 'll \xF0\x9F\x98\x80",
  };
  for (int i = 0; i < 50; ++i) {
    std::string s(rng() % 80, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    texts.push_back(s);
  }
  int failures = 0;
  for (const std::string& t : texts) {
    std::string back = gpt2_->decode(gpt2_->encode(t));
    if (back != t && ++failures <= 3) ADD_FAILURE() << "bytes did not round-trip: " << ids_to_string(gpt2_->encode(t));
  }
  EXPECT_EQ(failures, 0);
  // Valid text around an invalid byte encodes like the valid text alone.
  std::vector<int32_t> left = gpt2_->encode("Hello"), mid = gpt2_->encode("\xFF"), right = gpt2_->encode(" world");
  std::vector<int32_t> joined = left;
  joined.insert(joined.end(), mid.begin(), mid.end());
  joined.insert(joined.end(), right.begin(), right.end());
  EXPECT_EQ(gpt2_->encode("Hello\xFF world"), joined);
}

TEST_F(BpeTokenizerTest, LongWhitespaceAndConcurrentEncodes) {
  std::string spaces = std::string(100000, ' ') + "x" + std::string(50000, '\n');
  EXPECT_EQ(gpt2_->decode(gpt2_->encode(spaces)), spaces);
  std::vector<std::vector<int32_t>> a(records_->size()), b(records_->size());
  auto run = [&](std::vector<std::vector<int32_t>>* out) {
    for (size_t i = 0; i < records_->size(); ++i) (*out)[i] = gpt2_->encode((*records_)[i].text + " again");
  };
  std::thread t1(run, &a), t2(run, &b);
  t1.join();
  t2.join();
  EXPECT_EQ(a, b);
}

TEST_F(BpeTokenizerTest, TokenizerJsonMatchesEncoderJsonForBothMergeSpellings) {
  for (bool pairs : {false, true}) {
    SCOPED_TRACE(pairs ? "merges as [a, b]" : "merges as \"a b\"");
    auto tok = from_json(gpt2_tokenizer_json(pairs));
    ASSERT_NE(tok, nullptr);
    CheckResult enc = check_encodings(*tok, *records_);
    EXPECT_EQ(enc.passed, enc.total) << enc.failures;
    CheckResult trip = check_round_trips(*tok, *records_);
    EXPECT_EQ(trip.passed, trip.total) << trip.failures;
    EXPECT_EQ(tok->vocab_size(), 50257);
    EXPECT_EQ(tok->bos_id(), kEndOfText);
    EXPECT_EQ(tok->eos_id(), kEndOfText);
    EXPECT_FALSE(tok->add_bos_by_default());
    // The added token <|endoftext|> is matched in text, unless split_special_tokens.
    EXPECT_EQ(tok->encode("a<|endoftext|>b"),
              (std::vector<int32_t>{gpt2_->encode("a")[0], kEndOfText, gpt2_->encode("b")[0]}));
    EncodeOptions split;
    split.split_special_tokens = true;
    EXPECT_EQ(tok->encode("a<|endoftext|>b", split), gpt2_->encode("a<|endoftext|>b"));
    std::cout << "gpt2 tokenizer.json (" << (pairs ? "pairs" : "strings") << "): " << enc.passed << "/" << enc.total
              << " encodings\n";
  }
}

TEST_F(BpeTokenizerTest, TokenizerJsonPipelineVariants) {
  const std::vector<std::string> texts = {"Hello world", " leading", "It's 2024!  Done\n\n", "naïve café 😀"};
  // Split(GPT-2 regex, Isolated) + ByteLevel(use_regex=false), as Llama 3 / Qwen lay it out.
  json split = gpt2_tokenizer_json(false);
  split["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array(
           {{{"type", "Split"}, {"pattern", {{"Regex", kGpt2Regex}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto tok = from_json(split);
  ASSERT_NE(tok, nullptr);
  for (const std::string& t : texts) EXPECT_EQ(tok->encode(t), gpt2_->encode(t)) << t;

  // add_prefix_space: "Hello" encodes like " Hello".
  json prefix = gpt2_tokenizer_json(false);
  prefix["pre_tokenizer"]["add_prefix_space"] = true;
  tok = from_json(prefix);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->encode("Hello"), gpt2_->encode(" Hello"));
  EXPECT_EQ(tok->encode(" Hello"), gpt2_->encode(" Hello"));

  // A BOS-adding TemplateProcessing post-processor and a non-special added token.
  json tmpl = gpt2_tokenizer_json(false);
  tmpl["added_tokens"].push_back({{"id", 50257}, {"content", "<|user|>"}, {"special", false}});
  tmpl["added_tokens"].push_back({{"id", 50258}, {"content", "<|bos|>"}, {"special", true}});
  tmpl["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", json::array({{{"SpecialToken", {{"id", "<|bos|>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
      {"special_tokens", {{"<|bos|>", {{"id", "<|bos|>"}, {"ids", {50258}}, {"tokens", {"<|bos|>"}}}}}}};
  tok = from_json(tmpl);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 50259);
  EXPECT_EQ(tok->bos_id(), 50258);
  EXPECT_EQ(tok->eos_id(), kEndOfText);
  EXPECT_TRUE(tok->add_bos_by_default());
  EXPECT_EQ(tok->decode({50258, 50257, 15496, kEndOfText}), "<|user|>Hello");
}

TEST_F(BpeTokenizerTest, TokenizerConfigBesideTheFileSetsSpecialIds) {
  const std::string dir = make_temp_dir("bpe_config_");
  const std::string path = write_json(dir, gpt2_tokenizer_json(false));
  ::peft::testing::write_binary_file(
      dir + "/tokenizer_config.json",
      R"({"bos_token": {"content": "<|endoftext|>", "special": true}, "eos_token": "<|endoftext|>",
          "pad_token": "!", "add_bos_token": true})");
  auto tok = BpeTokenizer::create(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), kEndOfText);
  EXPECT_EQ((*tok)->pad_id(), 0);  // "!" is id 0
  EXPECT_TRUE((*tok)->add_bos_by_default());
}

TEST_F(BpeTokenizerTest, UnsupportedOrBrokenTokenizerJsonIsInvalidArgument) {
  struct Case {
    std::string name;
    std::function<void(json*)> edit;
    std::string phrase;
  };
  std::vector<Case> cases = {
      {"wordpiece", [](json* j) { (*j)["model"]["type"] = "WordPiece"; }, "unsupported model \"WordPiece\""},
      {"normalizer",
       [](json* j) {
         (*j)["normalizer"] = {{"type", "BertNormalizer"}};
       },
       "unsupported normalizer \"BertNormalizer\""},
      {"pre_tokenizer",
       [](json* j) {
         (*j)["pre_tokenizer"] = {{"type", "UnicodeScripts"}};
       },
       "unsupported pre_tokenizer \"UnicodeScripts\""},
      {"nested_pre_tokenizer",
       [](json* j) {
         (*j)["pre_tokenizer"] = {{"type", "Sequence"},
                                  {"pretokenizers", json::array({{{"type", "ByteLevel"}, {"add_prefix_space", false}},
                                                                 {{"type", "Bert"}}})}};
       },
       "unsupported pre_tokenizer \"Bert\""},
      {"decoder",
       [](json* j) {
         (*j)["decoder"] = {{"type", "CTC"}};
       },
       "unsupported decoder \"CTC\""},
      {"post_processor",
       [](json* j) {
         (*j)["post_processor"] = {{"type", "BertProcessing"}};
       },
       "unsupported post_processor \"BertProcessing\""},
      {"byte_level_without_prefix_flag", [](json* j) { (*j)["pre_tokenizer"].erase("add_prefix_space"); },
       "add_prefix_space"},
      {"bad_behavior",
       [](json* j) {
         (*j)["pre_tokenizer"] = {
             {"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "Sideways"}, {"invert", false}};
       },
       "unknown behavior \"Sideways\""},
      {"unk_missing", [](json* j) { (*j)["model"]["unk_token"] = "<nope>"; }, "unk_token \"<nope>\""},
      {"bad_merge", [](json* j) { (*j)["model"]["merges"][3] = "a b c"; }, "merge #3"},
      {"unknown_merge", [](json* j) { (*j)["model"]["merges"][5] = "zzzq qqqz"; }, "missing from the vocabulary"},
      {"string_id", [](json* j) { (*j)["model"]["vocab"]["hello"] = "7"; }, "non-integer id"},
      {"huge_id", [](json* j) { (*j)["model"]["vocab"]["hello"] = 2000000000; }, "out of range"},
      {"dup_id", [](json* j) { (*j)["model"]["vocab"]["zzzq"] = 7; }, "is used by both"},
      {"huge_added_id",
       [](json* j) {
         (*j)["added_tokens"].push_back({{"id", 1999999999}, {"content", "<x>"}, {"special", true}});
       },
       "malformed added_tokens"},
      {"no_byte_symbols",
       [](json* j) {
         (*j)["model"]["vocab"].erase("!");
         (*j)["model"]["merges"] = json::array();
       },
       "not a byte-level BPE vocabulary"},
      {"bad_regex",
       [](json* j) {
         (*j)["pre_tokenizer"] = {{"type", "Sequence"},
                                  {"pretokenizers", json::array({{{"type", "Split"},
                                                                  {"pattern", {{"Regex", "(unclosed"}}},
                                                                  {"behavior", "Isolated"},
                                                                  {"invert", false}},
                                                                 {{"type", "ByteLevel"}}})}};
       },
       "regex"},
  };
  json base = gpt2_tokenizer_json(false);
  for (const Case& c : cases) {
    json j = base;
    c.edit(&j);
    const std::string path = write_json(make_temp_dir("bpe_bad_"), j);
    auto tok = BpeTokenizer::create(path);
    ASSERT_FALSE(tok.ok()) << c.name;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << tok.status();
    EXPECT_NE(tok.status().message().find(path), std::string::npos) << c.name << ": " << tok.status();
    EXPECT_NE(tok.status().message().find(c.phrase), std::string::npos) << c.name << ": " << tok.status();
  }
  auto missing = BpeTokenizer::create("/nonexistent/vocab.json", "/nonexistent/merges.txt");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace peft::data
