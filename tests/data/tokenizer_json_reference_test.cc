// Exactness of the tokenizer.json pipeline on the real Llama 3 and Mistral
// tokenizers against the shared reference id files (generated with the
// Hugging Face tokenizers library and cross-checked against tiktoken /
// sentencepiece; see ../shared/assets/PROVENANCE.md):
//   - `ids`: the default encoding, special-token text mapped to its id;
//   - `ids_split_special_tokens`: the same text with split_special_tokens;
//   - `ids_add_special_tokens`: with the post-processor (BOS);
//   - decoding round-trips wherever the reference says it does.
#include <cstdint>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/bpe_tokenizer.h"
#include "data/tokenizer.h"
#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

using ::peft::testing::ids_to_string;
using ::peft::testing::kNoAssetsReason;
using ::peft::testing::shared_assets_dir;
using json = nlohmann::json;

struct Line {
  std::string text;
  std::string category;
  std::vector<int32_t> ids;
  std::optional<std::vector<int32_t>> split_ids;  // ids_split_special_tokens
  std::optional<std::vector<int32_t>> bos_ids;    // ids_add_special_tokens
};

std::vector<int32_t> to_ids(const json& j) {
  std::vector<int32_t> ids;
  for (const json& v : j) ids.push_back(v.get<int32_t>());
  return ids;
}

std::vector<Line> read_lines(const std::string& path) {
  std::vector<Line> lines;
  std::ifstream in(path);
  std::string s;
  while (std::getline(in, s)) {
    if (s.empty()) continue;
    json j = json::parse(s);
    Line l;
    l.text = j.at("text").get<std::string>();
    l.category = j.value("category", "");
    l.ids = to_ids(j.at("ids"));
    if (j.contains("ids_split_special_tokens")) l.split_ids = to_ids(j["ids_split_special_tokens"]);
    if (j.contains("ids_add_special_tokens")) l.bos_ids = to_ids(j["ids_add_special_tokens"]);
    lines.push_back(std::move(l));
  }
  return lines;
}

// Counts lines where `got(line)` equals `want(line)` (skipping lines where
// `want` is empty), recording the first few failures.
struct Tally {
  int passed = 0, total = 0;
  std::string failures;
  void check(const Line& l, const std::vector<int32_t>& want, const std::vector<int32_t>& got) {
    ++total;
    if (got == want) {
      ++passed;
    } else if (total - passed <= 3) {
      failures += "\n  " + json(l.text).dump().substr(0, 120) + "\n    want " + ids_to_string(want) + "\n    got  " +
                  ids_to_string(got);
    }
  }
};

class TokenizerJsonReferenceTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string assets = shared_assets_dir();
    if (assets.empty()) GTEST_SKIP() << kNoAssetsReason;
    dir_ = assets + "/" + GetParam();
    lines_ = read_lines(dir_ + "/reference_ids.jsonl");
    ASSERT_GT(lines_.size(), 100u);
  }

  // Loads once per suite: a Llama 3 tokenizer.json takes about a second.
  const Tokenizer& tokenizer(bool split_special_tokens) {
    static auto* cache = new std::map<std::string, std::unique_ptr<Tokenizer>>();
    const std::string key = dir_ + (split_special_tokens ? "#split" : "");
    auto it = cache->find(key);
    if (it == cache->end()) {
      TokenizerOptions options;
      options.split_special_tokens = split_special_tokens;
      auto tok = load_tokenizer(dir_ + "/tokenizer.json", options);
      EXPECT_TRUE(tok.ok()) << tok.status();
      it = cache->emplace(key, tok.ok() ? *std::move(tok) : nullptr).first;
    }
    return *it->second;
  }

  std::string dir_;
  std::vector<Line> lines_;
};

TEST_P(TokenizerJsonReferenceTest, EveryLineMatchesInBothModes) {
  const Tokenizer* tok = &tokenizer(false);
  const Tokenizer* split = &tokenizer(true);
  ASSERT_NE(tok, nullptr);
  ASSERT_NE(split, nullptr);
  EXPECT_EQ(tok->kind(), "tokenizer_json");

  Tally dflt, split_opt, split_call, with_bos;
  int special_lines = 0;
  for (const Line& l : lines_) {
    dflt.check(l, l.ids, tok->encode(l.text));
    // Where the text has no special-token spelling, both modes give `ids`.
    const std::vector<int32_t>& split_want = l.split_ids ? *l.split_ids : l.ids;
    special_lines += l.split_ids.has_value();
    split_opt.check(l, split_want, split->encode(l.text));
    EncodeOptions per_call;
    per_call.split_special_tokens = true;
    split_call.check(l, split_want, tok->encode(l.text, per_call));
    if (l.bos_ids) {
      EncodeOptions add;
      add.add_special_tokens = true;
      with_bos.check(l, *l.bos_ids, tok->encode(l.text, add));
    }
  }
  EXPECT_EQ(dflt.passed, dflt.total) << dflt.failures;
  EXPECT_EQ(split_opt.passed, split_opt.total) << split_opt.failures;
  EXPECT_EQ(split_call.passed, split_call.total) << split_call.failures;
  EXPECT_EQ(with_bos.passed, with_bos.total) << with_bos.failures;
  EXPECT_GT(special_lines, 0);
  EXPECT_GT(with_bos.total, 10);
  std::cout << GetParam() << ": ids " << dflt.passed << "/" << dflt.total << ", ids_split_special_tokens "
            << split_opt.passed << "/" << split_opt.total << " (" << special_lines << " lines with special text)"
            << ", ids_add_special_tokens " << with_bos.passed << "/" << with_bos.total << "\n";
}

TEST_P(TokenizerJsonReferenceTest, DecodingRoundTripsWhereTheReferenceSaysSo) {
  const Tokenizer& tok = tokenizer(false);
  // Llama 3: HF decodes every line's ids back to its text. Mistral: every line
  // without a special-token spelling. decode() skips special tokens, so a
  // line with special text is checked through its plain-text encoding.
  const bool all_lines = std::string(GetParam()) == "llama3_tokenizer";
  int passed = 0, total = 0;
  std::string failures;
  for (const Line& l : lines_) {
    if (l.split_ids && !all_lines) continue;
    const std::vector<int32_t>& ids = l.split_ids ? *l.split_ids : l.ids;
    ++total;
    const std::string back = tok.decode(ids);
    if (back == l.text) {
      ++passed;
    } else if (total - passed <= 3) {
      failures += "\n  " + json(l.text).dump().substr(0, 100) + " -> " + json(back).dump().substr(0, 100);
    }
  }
  EXPECT_EQ(passed, total) << failures;
  EXPECT_GT(total, 150);
  std::cout << GetParam() << ": " << passed << "/" << total << " round trips\n";
}

TEST_P(TokenizerJsonReferenceTest, SpecialIdsComeFromTheConfigAndTemplate) {
  auto tok = load_tokenizer(dir_);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->kind(), "tokenizer_json");  // tokenizer.json is preferred in a directory
  EXPECT_TRUE((*tok)->add_bos_by_default());
  if (std::string(GetParam()) == "llama3_tokenizer") {
    EXPECT_EQ((*tok)->vocab_size(), 128256);
    EXPECT_EQ((*tok)->bos_id(), 128000);
    EXPECT_EQ((*tok)->eos_id(), 128001);
    EXPECT_EQ((*tok)->added_token_id("<|eot_id|>"), 128009);
    EXPECT_EQ((*tok)->added_token_id("<|start_header_id|>"), 128006);
    EXPECT_EQ((*tok)->added_token_id("Hello"), -1);
    EXPECT_EQ((*tok)->decode({128000, 9906, 1917, 128009}), "Hello world");
  } else {
    EXPECT_EQ((*tok)->vocab_size(), 32000);
    EXPECT_EQ((*tok)->bos_id(), 1);
    EXPECT_EQ((*tok)->eos_id(), 2);
    EXPECT_EQ((*tok)->added_token_id("</s>"), 2);
    EXPECT_EQ((*tok)->id_to_piece(13), "<0x0A>");
  }
}

INSTANTIATE_TEST_SUITE_P(Assets, TokenizerJsonReferenceTest, ::testing::Values("llama3_tokenizer", "mistral_tokenizer"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param).substr(0, std::string(info.param).find('_'));
                         });

}  // namespace
}  // namespace peft::data
