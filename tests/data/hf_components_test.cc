// One test per tokenizer.json component (data/hf/*) on small hand-written
// JSON. Expected pieces and ids are written out by hand from the Hugging Face
// tokenizers documentation and its unit tests' examples, not computed by the
// code under test.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/bpe_tokenizer.h"
#include "data/hf/added_vocabulary.h"
#include "data/hf/bpe_model.h"
#include "data/hf/decoders.h"
#include "data/hf/normalizers.h"
#include "data/hf/post_processors.h"
#include "data/hf/pre_tokenizers.h"

namespace peft::data::hf {
namespace {

using Strings = std::vector<std::string>;
using Ids = std::vector<int32_t>;

json parse(const std::string& s) { return json::parse(s); }

std::string normalized(const std::string& spec, std::string text) {
  auto n = parse_normalizer(parse(spec), "test.json");
  EXPECT_TRUE(n.ok()) << n.status();
  if (!n.ok()) return "<error>";
  (*n)->normalize(&text);
  return text;
}

// The pieces `spec` makes of `texts` (each a separate stretch, the first one
// at the start of the input).
Strings pre_tokenized(const std::string& spec, const Strings& texts) {
  auto p = parse_pre_tokenizer(parse(spec), "test.json");
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return {"<error>"};
  std::vector<Piece> pieces;
  for (size_t i = 0; i < texts.size(); ++i) {
    Piece piece;
    piece.text = texts[i];
    piece.at_start = i == 0;
    pieces.push_back(piece);
  }
  (*p)->pre_tokenize(&pieces);
  Strings out;
  for (const Piece& piece : pieces) out.push_back(piece.text);
  return out;
}

Strings decoded(const std::string& spec, Strings tokens) {
  auto d = parse_decoder(parse(spec), "test.json");
  EXPECT_TRUE(d.ok()) << d.status();
  if (!d.ok()) return {"<error>"};
  (*d)->decode_chain(&tokens);
  return tokens;
}

Ids bpe(const std::string& spec, const std::string& word) {
  auto m = BpeModel::from_json(parse(spec), "test.json");
  EXPECT_TRUE(m.ok()) << m.status();
  if (!m.ok()) return {-2};
  Ids ids;
  (*m)->tokenize(word, &ids);
  return ids;
}

// ---- normalizers -------------------------------------------------------------

TEST(HfNormalizers, SequencePrependReplace) {
  // Mistral / Llama 2 legacy layout.
  const std::string spec = R"({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})";
  EXPECT_EQ(normalized(spec, "Hello world"), "▁Hello▁world");
  EXPECT_EQ(normalized(spec, " two  spaces"), "▁▁two▁▁spaces");
  EXPECT_EQ(normalized(spec, ""), "");  // Prepend leaves empty text empty
  EXPECT_EQ(normalized(R"({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})", "a   b  c d"),
            "a b c d");
}

TEST(HfNormalizers, UnicodeNormalForms) {
  EXPECT_EQ(normalized(R"({"type": "NFC"})", "e\xCC\x81"), "\xC3\xA9");               // e + U+0301 -> é
  EXPECT_EQ(normalized(R"({"type": "NFD"})", "\xC3\xA9"), "e\xCC\x81");               // é -> e + U+0301
  EXPECT_EQ(normalized(R"({"type": "NFKC"})", "\xEF\xAC\x81 \xE2\x91\xA0"), "fi 1");  // U+FB01, U+2460
  EXPECT_EQ(normalized(R"({"type": "NFKD"})", "\xEF\xAC\x81"), "fi");
  EXPECT_EQ(normalized(R"({"type": "NFC"})", "ascii only"), "ascii only");
  // Ill-formed bytes pass through untouched and never fail.
  EXPECT_EQ(normalized(R"({"type": "NFC"})", "e\xCC\x81\xFF"), "\xC3\xA9\xFF");
}

TEST(HfNormalizers, LowercaseAndStrip) {
  // Rust char::to_lowercase: İ (U+0130) -> "i̇", Σ -> σ (no final-sigma rule per character).
  EXPECT_EQ(normalized(R"({"type": "Lowercase"})", "HeLLo \xC3\x80\xC3\x89 \xC4\xB0 \xCE\xA3"),
            "hello \xC3\xA0\xC3\xA9 i\xCC\x87 \xCF\x83");
  // U+3000 ideographic space is White_Space.
  EXPECT_EQ(normalized(R"({"type": "Strip", "strip_left": true, "strip_right": true})", " \t hi \xE3\x80\x80"), "hi");
  EXPECT_EQ(normalized(R"({"type": "Strip", "strip_left": true, "strip_right": false})", "  hi  "), "hi  ");
  EXPECT_EQ(normalized(R"({"type": "Strip", "strip_left": false, "strip_right": true})", "  hi  "), "  hi");
}

TEST(HfNormalizers, UnknownOrMalformedAreRefusedByName) {
  auto unknown = parse_normalizer(parse(R"({"type": "Sequence", "normalizers": [{"type": "Precompiled"}]})"), "t.json");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unsupported normalizer \"Precompiled\""), std::string::npos);
  auto bad = parse_normalizer(parse(R"({"type": "Replace", "pattern": {"Regex": "("}, "content": ""})"), "t.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("t.json"), std::string::npos);
}

// ---- pre-tokenizers ------------------------------------------------------------

TEST(HfPreTokenizers, SplitBehaviours) {
  // HF split.rs: the whitespace regex inverted, on "How are you doing?".
  auto split = [](const char* behavior) {
    return std::string(R"({"type": "Split", "pattern": {"Regex": "\\w+|[^\\w\\s]+"}, "invert": true, "behavior": ")") +
           behavior + "\"}";
  };
  const Strings in = {"How are you doing?"};
  EXPECT_EQ(pre_tokenized(split("Removed"), in), (Strings{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre_tokenized(split("Isolated"), in), (Strings{"How", " ", "are", " ", "you", " ", "doing", "?"}));
  EXPECT_EQ(pre_tokenized(split("MergedWithPrevious"), in), (Strings{"How ", "are ", "you ", "doing", "?"}));
  EXPECT_EQ(pre_tokenized(split("MergedWithNext"), in), (Strings{"How", " are", " you", " doing", "?"}));
  EXPECT_EQ(pre_tokenized(split("Contiguous"), in), (Strings{"How", " ", "are", " ", "you", " ", "doing?"}));
  // A String pattern is literal.
  EXPECT_EQ(pre_tokenized(R"({"type": "Split", "pattern": {"String": "-"}, "behavior": "Removed", "invert": false})",
                          {"the-final--countdown"}),
            (Strings{"the", "final", "countdown"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Split", "pattern": {"String": "."}, "behavior": "Isolated", "invert": false})",
                          {"a.b"}),
            (Strings{"a", ".", "b"}));
}

TEST(HfPreTokenizers, SplitRegexClassesCaseFoldingAndLookahead) {
  // Llama 3's pattern: (?i:...) contractions, \p{L}/\p{N} classes, \s+(?!\S).
  const std::string llama3 =
      R"({"type": "Split", "behavior": "Isolated", "invert": false, "pattern": {"Regex":
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}})";
  EXPECT_EQ(pre_tokenized(llama3, {"HE'S  ok"}), (Strings{"HE", "'S", " ", " ok"}));
  EXPECT_EQ(pre_tokenized(llama3, {"12345 \xC3\xA9t\xC3\xA9!\n\nx"}),
            (Strings{"123", "45", " \xC3\xA9t\xC3\xA9", "!\n\n", "x"}));
  // Qwen2's single-digit numbers.
  EXPECT_EQ(
      pre_tokenized(R"({"type": "Split", "pattern": {"Regex": "\\p{N}"}, "behavior": "Isolated", "invert": false})",
                    {"a12"}),
      (Strings{"a", "1", "2"}));
}

TEST(HfPreTokenizers, ByteLevel) {
  // HF byte_level.rs: with a prefix space and the GPT-2 regex.
  EXPECT_EQ(
      pre_tokenized(R"({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true})", {"Hello my friend, how?"}),
      (Strings{"\xC4\xA0Hello", "\xC4\xA0my",
               "\xC4\xA0"
               "friend",
               ",", "\xC4\xA0how", "?"}));
  EXPECT_EQ(
      pre_tokenized(R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})", {"Hello there\nHello"}),
      (Strings{"Hello", "\xC4\xA0there", "\xC4\x8A", "Hello"}));
  // Without the regex: one piece, every byte mapped ("é" is C3 A9 -> "Ã©").
  EXPECT_EQ(pre_tokenized(R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": false})", {"Hi m\xC3\xA9"}),
            (Strings{"Hi\xC4\xA0m\xC3\x83\xC2\xA9"}));
}

TEST(HfPreTokenizers, Metaspace) {
  const std::string always = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true})";
  EXPECT_EQ(pre_tokenized(always, {"Hey   friend!"}), (Strings{"▁Hey", "▁", "▁", "▁friend!"}));
  // "first": only the stretch at the start of the input gets the prefix
  // (HF metaspace.rs: " Hey <s>how" split on <s> beforehand).
  const std::string first = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": false})";
  EXPECT_EQ(pre_tokenized(first, {"Hey my", "how are"}), (Strings{"▁Hey▁my", "how▁are"}));
  EXPECT_EQ(pre_tokenized(first, {" Hey "}), (Strings{"▁Hey▁"}));
  const std::string never = R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true})";
  EXPECT_EQ(pre_tokenized(never, {"Hey friend"}), (Strings{"Hey", "▁friend"}));
  // Legacy spelling: add_prefix_space without prepend_scheme.
  EXPECT_EQ(pre_tokenized(R"({"type": "Metaspace", "replacement": "▁", "add_prefix_space": true})", {"a b"}),
            (Strings{"▁a", "▁b"}));
  auto contradictory = parse_pre_tokenizer(
      parse(R"({"type": "Metaspace", "replacement": "▁", "add_prefix_space": false, "prepend_scheme": "always"})"),
      "t.json");
  EXPECT_FALSE(contradictory.ok());
}

TEST(HfPreTokenizers, DigitsPunctuationWhitespace) {
  EXPECT_EQ(pre_tokenized(R"({"type": "Digits", "individual_digits": false})", {"Hey 123 friend!"}),
            (Strings{"Hey ", "123", " friend!"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Digits", "individual_digits": true})", {"Hey 123 friend!"}),
            (Strings{"Hey ", "1", "2", "3", " friend!"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Punctuation", "behavior": "Isolated"})", {"Hey friend!     How are you?!?"}),
            (Strings{"Hey friend", "!", "     How are you", "?", "!", "?"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Whitespace"})", {"How are you doing?"}),
            (Strings{"How", "are", "you", "doing", "?"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Whitespace"})", {"\n"}), Strings{});
  EXPECT_EQ(pre_tokenized(R"({"type": "WhitespaceSplit"})", {"Hey, man, Good?"}), (Strings{"Hey,", "man,", "Good?"}));
  EXPECT_EQ(pre_tokenized(R"({"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"},
                              {"type": "Digits", "individual_digits": true}]})",
                          {"ab12 c"}),
            (Strings{"ab", "1", "2", "c"}));
}

// ---- the BPE model ---------------------------------------------------------------

TEST(HfBpeModel, MergesByRank) {
  // HF model.rs "unrelated": the merges build the whole word.
  const std::string spec = R"({"type": "BPE", "vocab": {"u": 0, "n": 1, "r": 2, "e": 3, "l": 4, "a": 5, "t": 6,
      "d": 7, "re": 8, "at": 9, "ed": 10, "un": 11, "ated": 12, "rel": 13, "related": 14, "unrelated": 15},
      "merges": ["r e", "a t", "e d", "u n", "at ed", "re l", "rel ated", "un related"]})";
  EXPECT_EQ(bpe(spec, "unrelated"), (Ids{15}));
  EXPECT_EQ(bpe(spec, "tad"), (Ids{6, 5, 7}));
  // Merges as ["a", "b"] pairs mean the same.
  EXPECT_EQ(bpe(R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]})", "abab"), (Ids{2, 2}));
}

TEST(HfBpeModel, UnknownsFusedOrNot) {
  const std::string vocab = R"("vocab": {"<unk>": 0, "a": 1, "b": 2}, "merges": [], "unk_token": "<unk>")";
  EXPECT_EQ(bpe("{\"type\": \"BPE\", " + vocab + "}", "accb"), (Ids{1, 0, 0, 2}));
  EXPECT_EQ(bpe("{\"type\": \"BPE\", " + vocab + ", \"fuse_unk\": true}", "accb"), (Ids{1, 0, 2}));
  // Without an unk_token unknown characters are dropped, as HF does.
  EXPECT_EQ(bpe(R"({"type": "BPE", "vocab": {"a": 0}, "merges": []})", "xax"), (Ids{0}));
}

TEST(HfBpeModel, ByteFallback) {
  const std::string spec = R"({"type": "BPE", "vocab": {"<unk>": 0, "<0x61>": 1, "<0xC3>": 2, "<0xA9>": 3, "b": 4},
      "merges": [], "unk_token": "<unk>", "byte_fallback": true})";
  EXPECT_EQ(bpe(spec, "c"), (Ids{0}));                // no <0x63>: unk
  EXPECT_EQ(bpe(spec, "a"), (Ids{1}));                // "a" is not a token, its byte is
  EXPECT_EQ(bpe(spec, "b\xC3\xA9"), (Ids{4, 2, 3}));  // é -> <0xC3> <0xA9>
}

TEST(HfBpeModel, IgnoreMergesPrefixAndSuffix) {
  const std::string vocab = R"("vocab": {"a": 0, "b": 1, "c": 2, "bc": 3, "abc": 4}, "merges": ["b c"])";
  EXPECT_EQ(bpe("{\"type\": \"BPE\", " + vocab + "}", "abc"), (Ids{0, 3}));
  EXPECT_EQ(bpe("{\"type\": \"BPE\", " + vocab + ", \"ignore_merges\": true}", "abc"), (Ids{4}));
  // HF model.rs continuing_subword_prefix example.
  const std::string prefixed = R"({"type": "BPE", "vocab": {"a": 0, "##b": 1, "##c": 2, "ab": 3, "abc": 4},
      "merges": ["a ##b", "ab ##c"], "continuing_subword_prefix": "##"})";
  EXPECT_EQ(bpe(prefixed, "ab"), (Ids{3}));
  EXPECT_EQ(bpe(prefixed, "abc"), (Ids{4}));
  EXPECT_EQ(bpe(prefixed, "acb"), (Ids{0, 2, 1}));
  const std::string suffixed = R"({"type": "BPE", "vocab": {"a": 0, "b": 1, "b</w>": 2, "ab</w>": 3},
      "merges": ["a b</w>"], "end_of_word_suffix": "</w>"})";
  EXPECT_EQ(bpe(suffixed, "ab"), (Ids{3}));
  EXPECT_EQ(bpe(suffixed, "bab"), (Ids{1, 3}));
}

TEST(HfBpeModel, MalformedModelsAreRefused) {
  auto missing = BpeModel::from_json(parse(R"({"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]})"), "t.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing from the vocabulary"), std::string::npos);
  auto unigram = BpeModel::from_json(parse(R"({"type": "Unigram", "vocab": []})"), "t.json");
  ASSERT_FALSE(unigram.ok());
  EXPECT_NE(unigram.status().message().find("\"Unigram\""), std::string::npos);
}

// ---- added tokens ----------------------------------------------------------------

struct Split {
  std::string text;
  int32_t id;
  bool operator==(const Split& o) const { return text == o.text && id == o.id; }
};
std::ostream& operator<<(std::ostream& os, const Split& s) { return os << "(\"" << s.text << "\", " << s.id << ")"; }

std::vector<Split> added_splits(const std::string& tokens, const std::string& normalizer, const std::string& text,
                                bool split_special = false) {
  std::unique_ptr<Normalizer> n;
  if (!normalizer.empty()) n = *parse_normalizer(parse(normalizer), "t.json");
  auto v = AddedVocabulary::from_json(parse(tokens), n.get(), "t.json");
  EXPECT_TRUE(v.ok()) << v.status();
  if (!v.ok()) return {};
  std::vector<Split> out;
  for (const Piece& p : (*v)->extract_and_normalize(text, n.get(), split_special)) out.push_back({p.text, p.id});
  return out;
}

TEST(HfAddedTokens, OptionsAsInHfAddedVocabulary) {
  // HF added_vocabulary.rs options_use_cases, with the ids written out.
  const std::string tokens = R"([
      {"id": 0, "content": "my", "lstrip": true, "rstrip": true, "normalized": true, "special": false},
      {"id": 1, "content": "name", "normalized": true, "special": false},
      {"id": 2, "content": "ony", "single_word": true, "normalized": true, "special": false},
      {"id": 3, "content": "[CLS]", "normalized": false, "special": true},
      {"id": 4, "content": "[SEP]", "normalized": false, "special": true}])";
  EXPECT_EQ(added_splits(tokens, R"({"type": "Lowercase"})", "[CLS] My name is Anthony [SEP]"),
            (std::vector<Split>{{"", 3}, {"", 0}, {"", 1}, {" is anthony ", -1}, {"", 4}}));
  // split_special_tokens: [CLS]/[SEP] stay text; the normal tokens still match.
  EXPECT_EQ(added_splits(tokens, R"({"type": "Lowercase"})", "[CLS] My name", /*split_special=*/true),
            (std::vector<Split>{{"[cls]", -1}, {"", 0}, {"", 1}}));
}

TEST(HfAddedTokens, SingleWordAndUnicodeStrip) {
  // HF test_single_word_is_correct.
  const std::string mask = R"([{"id": 0, "content": "<mask>", "single_word": true, "normalized": true}])";
  EXPECT_EQ(added_splits(mask, R"({"type": "Lowercase"})", "<mask> My name <mask> A<mask> <mask>ony <mask>"),
            (std::vector<Split>{{"", 0}, {" my name ", -1}, {"", 0}, {" a<mask> <mask>ony ", -1}, {"", 0}}));
  // HF test_lstrip_unicode_space: \t and U+2000 are whitespace.
  const std::string strip =
      R"([{"id": 0, "content": "<mask>", "lstrip": true, "rstrip": true, "single_word": true, "normalized": true}])";
  EXPECT_EQ(added_splits(strip, "", "Hi <mask> there\t<mask>\t<mask>\xE2\x80\x80"),
            (std::vector<Split>{{"Hi", -1}, {"", 0}, {"there", -1}, {"", 0}, {"", 0}}));
  // Leftmost-longest: "<|a|b|>" wins over "<|a|>" at the same start.
  const std::string nested =
      R"([{"id": 5, "content": "<|a|>", "special": true}, {"id": 6, "content": "<|a|b|>", "special": true}])";
  EXPECT_EQ(added_splits(nested, "", "x<|a|b|>y<|a|>"), (std::vector<Split>{{"x", -1}, {"", 6}, {"y", -1}, {"", 5}}));
  auto dup =
      AddedVocabulary::from_json(parse(R"([{"id": 1, "content": "a"}, {"id": 1, "content": "b"}])"), nullptr, "t.json");
  EXPECT_FALSE(dup.ok());
}

// ---- post-processors ------------------------------------------------------------

TEST(HfPostProcessors, TemplateProcessing) {
  auto no_lookup = [](const std::string&) { return -1; };
  auto pp = parse_post_processor(parse(R"({"type": "Sequence", "processors": [
      {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
      {"type": "TemplateProcessing",
       "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "</s>", "type_id": 0}}],
       "pair": [],
       "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                          "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}]})"),
                                 "t.json", no_lookup);
  ASSERT_TRUE(pp.ok()) << pp.status();
  EXPECT_EQ(pp->apply({7, 8}), (Ids{1, 7, 8, 2}));
  auto unknown = parse_post_processor(
      parse(
          R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>"}}, {"Sequence": {"id": "A"}}]})"),
      "t.json", no_lookup);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("<x>"), std::string::npos);
  auto roberta = parse_post_processor(parse(R"({"type": "RobertaProcessing"})"), "t.json", no_lookup);
  ASSERT_FALSE(roberta.ok());
  EXPECT_NE(roberta.status().message().find("\"RobertaProcessing\""), std::string::npos);
}

// ---- decoders ---------------------------------------------------------------------

TEST(HfDecoders, EachDecoder) {
  EXPECT_EQ(decoded(R"({"type": "ByteLevel"})", {"Hello", "\xC4\xA0my",
                                                 "\xC4\xA0"
                                                 "friend"}),
            Strings{"Hello my friend"});
  EXPECT_EQ(decoded(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"})", {"▁Hey", "▁friend!"}),
            (Strings{"Hey", " friend!"}));
  EXPECT_EQ(decoded(R"({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never"})", {"▁Hey", "▁friend!"}),
            (Strings{" Hey", " friend!"}));
  // HF byte_fallback.rs: a run of byte tokens that forms UTF-8 becomes its text.
  EXPECT_EQ(decoded(R"({"type": "ByteFallback"})", {"<0x61>"}), Strings{"a"});
  EXPECT_EQ(decoded(R"({"type": "ByteFallback"})", {"<0xE5>", "<0x8f>", "<0xab>", "a"}),
            (Strings{"\xE5\x8F\xAB", "a"}));
  EXPECT_EQ(decoded(R"({"type": "Fuse"})", {"a", "b", "c"}), Strings{"abc"});
  // HF strip.rs.
  EXPECT_EQ(decoded(R"({"type": "Strip", "content": "H", "start": 1, "stop": 0})", {"Hey", " friend!", "HHH"}),
            (Strings{"ey", " friend!", "HH"}));
  EXPECT_EQ(decoded(R"({"type": "Strip", "content": "y", "start": 0, "stop": 1})", {"Hey", " friend!"}),
            (Strings{"He", " friend!"}));
  EXPECT_EQ(decoded(R"({"type": "Replace", "pattern": {"String": "▁"}, "content": " "})", {"▁a▁b"}), Strings{" a b"});
  // Mistral's chain.
  const std::string mistral = R"({"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})";
  EXPECT_EQ(decoded(mistral, {"▁Hello", "<0x0A>", "▁world"}), Strings{"Hello\n world"});
  auto ctc = parse_decoder(parse(R"({"type": "Sequence", "decoders": [{"type": "CTC"}]})"), "t.json");
  ASSERT_FALSE(ctc.ok());
  EXPECT_NE(ctc.status().message().find("unsupported decoder \"CTC\""), std::string::npos);
}

// ---- a whole hand-written tokenizer.json --------------------------------------------

// A Mistral-layout tokenizer (legacy Prepend/Replace normalizer, byte fallback,
// <s> template) on a vocabulary small enough to work the ids out by hand.
TEST(HfPipeline, LegacyMetaspaceLayoutEndToEnd) {
  std::string vocab = R"({"<unk>": 0, "<s>": 1, "</s>": 2)";
  for (int b = 0; b < 256; ++b) {
    char buf[24];
    std::snprintf(buf, sizeof(buf), ", \"<0x%02X>\": %d", b, 3 + b);
    vocab += buf;
  }
  // 259 "▁", 260 "H", 261 "i", 262 "▁H", 263 "▁Hi", 264 "w"
  vocab += R"(, "▁": 259, "H": 260, "i": 261, "▁H": 262, "▁Hi": 263, "w": 264})";
  const json root = parse(R"({"version": "1.0", "truncation": null, "padding": null,
      "added_tokens": [{"id": 0, "content": "<unk>", "special": true, "normalized": false},
                       {"id": 1, "content": "<s>", "special": true, "normalized": false},
                       {"id": 2, "content": "</s>", "special": true, "normalized": false}],
      "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                     {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
      "pre_tokenizer": null,
      "post_processor": {"type": "TemplateProcessing",
          "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
          "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
      "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
          {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
      "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                "vocab": )" +
                          vocab + R"(, "merges": ["▁ H", "▁H i"]}})");
  auto tok = BpeTokenizer::create_from_json(root, "/nowhere/tokenizer.json", {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  // "Hi Hi" -> "▁Hi▁Hi"; "!" (0x21) falls back to <0x21> = 3 + 33.
  EXPECT_EQ((*tok)->encode("Hi Hi!"), (Ids{263, 263, 36}));
  // Each stretch after an added token gets its own "▁" (legacy layout).
  EXPECT_EQ((*tok)->encode("Hi</s>Hi"), (Ids{263, 2, 263}));
  EncodeOptions split;
  split.split_special_tokens = true;
  // "</s>" as text: ▁Hi, then < / s > as bytes 0x3C 0x2F 0x73 0x3E, then H i.
  EXPECT_EQ((*tok)->encode("Hi</s>Hi", split), (Ids{263, 3 + 0x3C, 3 + 0x2F, 3 + 0x73, 3 + 0x3E, 260, 261}));
  EncodeOptions bos;
  bos.add_special_tokens = true;
  EXPECT_EQ((*tok)->encode("w", bos), (Ids{1, 259, 264}));
  EXPECT_TRUE((*tok)->add_bos_by_default());
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->decode({1, 263, 263, 36, 2}), "Hi Hi!");
  EXPECT_EQ((*tok)->decode({262, 3 + 0xC3, 3 + 0xA9}), "H\xC3\xA9");
}

}  // namespace
}  // namespace peft::data::hf
