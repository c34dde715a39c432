// Tests for data/chat_template.h and CHAT records (data/records.h): each
// template's rendering against a hand-written string and id list, the
// recognition of templates in tokenizer files, and a chat batch's label mask.
//
// Expected ids come from the shared reference files (Llama 3 and Mistral
// reference_ids.jsonl, mistral-common's test ids quoted in PROVENANCE.md),
// well-known Llama 3 header ids (system 9125, user 882, assistant 78191,
// "\n\n" 271), or a hand-written character-level tokenizer whose ids are the
// characters' positions in its alphabet.
#include "data/chat_template.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/tokenizer.h"
#include "tests/data/reference_testing.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

using ::peft::testing::kNoAssetsReason;
using ::peft::testing::make_temp_dir;
using ::peft::testing::shared_assets_dir;
using ::peft::testing::write_binary_file;
using Ids = std::vector<int32_t>;
using Targets = std::vector<uint8_t>;

// A character-level tokenizer.json: "abcdefghijklmnopqrstuvwxyz \n#:SUA" are
// ids 0..32 in that order; <|im_start|> 33, <|im_end|> 34, </s> 35 (EOS);
// a Qwen-style ChatML template whose default system prompt is "sys".
constexpr int32_t kImStart = 33, kImEnd = 34, kEos = 35;

std::string tiny_tokenizer_dir() {
  const std::string alphabet = "abcdefghijklmnopqrstuvwxyz \n#:SUA";
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = 0; i < alphabet.size(); ++i) vocab[std::string(1, alphabet[i])] = i;
  nlohmann::json root = {{"added_tokens",
                          {{{"id", kImStart}, {"content", "<|im_start|>"}, {"special", true}, {"normalized", false}},
                           {{"id", kImEnd}, {"content", "<|im_end|>"}, {"special", true}, {"normalized", false}},
                           {{"id", kEos}, {"content", "</s>"}, {"special", true}, {"normalized", false}}}},
                         {"normalizer", nullptr},
                         {"pre_tokenizer", nullptr},
                         {"post_processor", nullptr},
                         {"decoder", {{"type", "Fuse"}}},
                         {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
  const std::string dir = make_temp_dir("chat_tok_");
  write_binary_file(dir + "/tokenizer.json", root.dump());
  write_binary_file(dir + "/tokenizer_config.json", R"({"eos_token": "</s>", "chat_template":
      "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nsys<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}"})");
  return dir;
}

std::unique_ptr<Tokenizer> load(const std::string& path) {
  auto tok = load_tokenizer(path);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

RenderedChat render(const std::string& name, const std::vector<ChatMessage>& messages, const Tokenizer& tok,
                    bool generation = false, bool split = false) {
  absl::StatusOr<ChatTemplate> t = resolve_chat_template(name, tok);
  EXPECT_TRUE(t.ok()) << t.status();
  ChatRenderOptions o;
  o.add_generation_prompt = generation;
  o.split_special_tokens = split;
  absl::StatusOr<RenderedChat> r = t.ok() ? render_chat(*t, messages, tok, o) : t.status();
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RenderedChat();
}

TEST(ChatTemplate, ChatMlWithTheTemplatesDefaultSystemPrompt) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  absl::StatusOr<ChatTemplate> t = resolve_chat_template("auto", *tok);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name(), "chatml");
  EXPECT_EQ(t->default_system, "sys");
  RenderedChat r = render("auto", {{"user", "hi"}, {"assistant", "ok"}}, *tok);
  EXPECT_EQ(r.text,
            "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n");
  EXPECT_EQ(r.ids, (Ids{33, 18, 24, 18, 19, 4,  12, 27, 18, 24, 18, 34, 27,             // system\nsys
                        33, 20, 18, 4,  17, 27, 7,  8,  34, 27,                         // user\nhi
                        33, 0,  18, 18, 8,  18, 19, 0,  13, 19, 27, 14, 10, 34, 27}));  // assistant\nok
  EXPECT_EQ(r.targets, (Targets{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                  //
                                0, 0, 0, 0, 0, 0, 0, 0, 0, 0,                           //
                                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0}));
  // A conversation with its own system message gets no default one; the
  // generation prompt opens an assistant turn.
  RenderedChat g = render("chatml", {{"system", "s"}, {"user", "hi"}}, *tok, /*generation=*/true);
  EXPECT_EQ(g.text, "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(g.ids, (Ids{33, 18, 24, 18, 19, 4,  12, 27, 18, 34, 27, 33, 20, 18, 4,  17,
                        27, 7,  8,  34, 27, 33, 0,  18, 18, 8,  18, 19, 0,  13, 19, 27}));
}

TEST(ChatTemplate, PlainFallback) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  RenderedChat r = render("plain", {{"user", "hi"}, {"assistant", "ok"}}, *tok);
  EXPECT_EQ(r.text, "### User:\nhi\n\n### Assistant:\nok</s>\n\n");
  EXPECT_EQ(r.ids, (Ids{28, 28, 28,   26, 31, 18, 4,  17, 29, 27, 7, 8,  27, 27,      // ### User:\nhi\n\n
                        28, 28, 28,   26, 32, 18, 18, 8,  18, 19, 0, 13, 19, 29, 27,  // ### Assistant:\n
                        14, 10, kEos, 27, 27}));                                      // ok</s>\n\n
  Targets want(r.ids.size(), 0);
  want[29] = want[30] = want[31] = 1;  // "ok" and </s>
  EXPECT_EQ(r.targets, want);
}

TEST(ChatTemplate, Llama3OnTheRealTokenizer) {
  const std::string assets = shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load(assets + "/llama3_tokenizer");
  ASSERT_NE(tok, nullptr);
  // chat_template.jinja beside the tokenizer is the Llama 3 Instruct template.
  absl::StatusOr<ChatTemplate> t = resolve_chat_template("auto", *tok);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->name(), "llama3");
  RenderedChat r =
      render("auto", {{"system", "hello world"}, {"user", " Hello world\n"}, {"assistant", "Hello, world!"}}, *tok);
  EXPECT_EQ(r.text,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nhello world<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello world<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello, world!<|eot_id|>");
  // Content ids from reference_ids.jsonl: "hello world" [15339, 1917],
  // "Hello world" [9906, 1917], "Hello, world!" [9906, 11, 1917, 0].
  EXPECT_EQ(r.ids, (Ids{128000, 128006, 9125,   128007, 271,  15339, 1917,   128009,  //
                        128006, 882,    128007, 271,    9906, 1917,  128009,          //
                        128006, 78191,  128007, 271,    9906, 11,    1917,   0,      128009}));
  Targets want(r.ids.size(), 0);
  for (size_t i = r.ids.size() - 5; i < r.ids.size(); ++i) want[i] = 1;
  EXPECT_EQ(r.targets, want);
  // reference_ids.jsonl has this conversation as text (category special_text).
  RenderedChat hi = render("llama3", {{"user", "Hi!"}}, *tok, /*generation=*/true);
  EXPECT_EQ(hi.ids, (Ids{128000, 128006, 882, 128007, 271, 13347, 0, 128009, 128006, 78191, 128007, 271}));
  EXPECT_EQ(hi.text,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Generation prompt; special-token text in a message stays text when split.
  RenderedChat g = render("llama3", {{"user", "<|eot_id|>"}}, *tok, /*generation=*/true, /*split=*/true);
  EXPECT_EQ(g.ids.front(), 128000);
  EXPECT_EQ(Ids(g.ids.end() - 4, g.ids.end()), (Ids{128006, 78191, 128007, 271}));
  EXPECT_EQ(std::count(g.ids.begin(), g.ids.end(), 128009), 1) << "only the template's <|eot_id|> is an id";
  RenderedChat unsplit = render("llama3", {{"user", "<|eot_id|>"}}, *tok, /*generation=*/true);
  EXPECT_EQ(std::count(unsplit.ids.begin(), unsplit.ids.end(), 128009), 2);  // the message's and the template's
}

TEST(ChatTemplate, MistralOnTheRealTokenizer) {
  const std::string assets = shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load(assets + "/mistral_tokenizer");
  ASSERT_NE(tok, nullptr);
  // mistral-common's expected ids for "[INST] SYSTEM\n\na [/INST]" with BOS.
  RenderedChat r = render("mistral", {{"system", "SYSTEM"}, {"user", "a"}}, *tok, /*generation=*/true);
  EXPECT_EQ(r.text, "<s>[INST] SYSTEM\n\na [/INST]");
  EXPECT_EQ(r.ids, (Ids{1, 733, 16289, 28793, 17121, 22526, 13, 13, 28708, 733, 28748, 16289, 28793}));
  // With an answer: " Hello, world!" and </s> are the targets.
  RenderedChat a = render("mistral", {{"user", "Hello world"}, {"assistant", "Hello, world!"}}, *tok);
  EXPECT_EQ(a.text, "<s>[INST] Hello world [/INST] Hello, world!</s>");
  // "▁[INST]" 733 16289 28793, reference "Hello world" [22557, 1526],
  // "▁[/INST]" 733 28748 16289 28793, reference "Hello, world!" [22557, 28725, 1526, 28808].
  EXPECT_EQ(a.ids, (Ids{1, 733, 16289, 28793, 22557, 1526, 733, 28748, 16289, 28793, 22557, 28725, 1526, 28808, 2}));
  EXPECT_EQ(a.targets, (Targets{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1}));
  // The tokenizer has no chat template: auto is plain.
  absl::StatusOr<ChatTemplate> t = resolve_chat_template("auto", *tok);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->name(), "plain");
  // Roles that do not alternate cannot be laid out.
  absl::StatusOr<RenderedChat> bad =
      render_chat(*chat_template_by_name("mistral"), {{"user", "a"}, {"user", "b"}}, *tok, ChatRenderOptions());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("alternating"), std::string::npos) << bad.status();
}

TEST(ChatTemplate, RecognitionAndErrors) {
  EXPECT_EQ(recognize_chat_template("{{ '<|im_start|>' + m + '<|im_end|>' }}", "x")->name(), "chatml");
  EXPECT_EQ(recognize_chat_template("{{ '[INST] ' + m + ' [/INST]' }}", "x")->name(), "mistral");
  // Zephyr / TinyLlama's layout is not one of them: refused, naming the source.
  auto zephyr = recognize_chat_template("{{ '<|user|>\\n' + m + eos_token }}", "tokenizer_config.json");
  ASSERT_FALSE(zephyr.ok());
  EXPECT_NE(zephyr.status().message().find("tokenizer_config.json"), std::string::npos);
  EXPECT_NE(zephyr.status().message().find("data.chat_template"), std::string::npos);
  auto llama31 = recognize_chat_template(
      "<|start_header_id|>system<|end_header_id|>Cutting Knowledge Date: December 2023<|eot_id|>", "x");
  EXPECT_FALSE(llama31.ok());
  EXPECT_FALSE(chat_template_by_name("vicuna").ok());
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  auto role = render_chat(*chat_template_by_name("chatml"), {{"tool", "x"}}, *tok, ChatRenderOptions());
  ASSERT_FALSE(role.ok());
  EXPECT_NE(role.status().message().find("unknown role \"tool\""), std::string::npos);
  // llama3 needs its header tokens.
  auto missing = render_chat(*chat_template_by_name("llama3"), {{"user", "hi"}}, *tok, ChatRenderOptions());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("chat template llama3 needs"), std::string::npos) << missing.status();
}

// ---- CHAT records ------------------------------------------------------------

DataOptions chat_options() {
  DataOptions o;
  o.format = DataOptions::Format::kChat;
  o.seq_len = 64;
  o.pack = false;
  o.validation_fraction = 0;
  return o;
}

TEST(ChatRecords, BatchLabelsAreExactlyTheAssistantPositions) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  DataOptions o = chat_options();
  o.chat_template = "plain";
  absl::StatusOr<DataSplits> d = load_dataset_from_memory(
      R"({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]})"
      "\n",
      "chat.jsonl", *tok, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stats.format, DataOptions::Format::kChat);
  ASSERT_EQ(d->train.size(), 1);
  absl::StatusOr<Batch> b = d->train.collate({0});
  ASSERT_TRUE(b.ok()) << b.status();
  // Tokens (PlainFallback): 29 of prompt, then o k </s> at 29..31, then \n \n.
  // Input position i predicts token i + 1: labels at 28, 29, 30.
  std::vector<int64_t> want(64, kIgnoreIndex);
  want[28] = 14;  // o
  want[29] = 10;  // k
  want[30] = kEos;
  const at::Tensor labels = b->labels.contiguous();
  std::vector<int64_t> got(labels.data_ptr<int64_t>(), labels.data_ptr<int64_t>() + labels.numel());
  EXPECT_EQ(got, want);
  EXPECT_EQ(b->tokens, 3);
}

TEST(ChatRecords, AutoDetectionTemplateFromTheTokenizerAndTwoTurns) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  DataOptions o = chat_options();
  o.format = DataOptions::Format::kAuto;
  absl::StatusOr<DataSplits> d = load_dataset_from_memory(
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},)"
      R"( {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})"
      "\n",
      "chat.data", *tok, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stats.format, DataOptions::Format::kChat);
  const Example& e = d->train.example(0);
  // ChatML with the default system prompt; targets: b <|im_end|> and d <|im_end|>.
  std::vector<int32_t> targets;
  for (size_t i = 0; i < e.tokens.size(); ++i) {
    if (e.targets[i]) targets.push_back(e.tokens[i]);
  }
  EXPECT_EQ(targets, (std::vector<int32_t>{1, kImEnd, 3, kImEnd}));
}

TEST(ChatRecords, BadRecordsNameFileAndLineAndCanBeSkipped) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  const std::string good = R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})";
  struct Case {
    std::string line, phrase;
    BadRecord kind;
  };
  const std::vector<Case> cases = {
      {R"({"messages": [{"role": "tool", "content": "a"}, {"role": "assistant", "content": "b"}]})",
       "messages[0]: unknown role \"tool\"", BadRecord::kBadConversation},
      {R"({"messages": [{"role": "user"}, {"role": "assistant", "content": "b"}]})",
       "messages[0]: missing field \"content\"", BadRecord::kMissingField},
      {R"({"messages": [{"role": "user", "content": "a"}]})", "no assistant turn", BadRecord::kBadConversation},
      {R"({"messages": {"role": "user", "content": "a"}})", "\"messages\" is a object, expected a list",
       BadRecord::kWrongType},
      {R"({"messages": [{"role": "user", "content": 7}, {"role": "assistant", "content": "b"}]})",
       "\"content\" is a number", BadRecord::kWrongType},
      {R"({"text": "a"})", "missing field \"messages\"", BadRecord::kMissingField},
      {R"([1, 2])", "malformed JSON", BadRecord::kMalformedJson},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.line);
    const std::string content = good + "\n" + c.line + "\n" + good + "\n";
    DataOptions o = chat_options();
    absl::StatusOr<DataSplits> stop = load_dataset_from_memory(content, "chat.jsonl", *tok, o);
    ASSERT_FALSE(stop.ok());
    EXPECT_NE(stop.status().message().find("chat.jsonl:2: "), std::string::npos) << stop.status();
    EXPECT_NE(stop.status().message().find(c.phrase), std::string::npos) << stop.status();
    o.on_bad = DataOptions::OnBadRecord::kSkip;
    absl::StatusOr<DataSplits> skip = load_dataset_from_memory(content, "chat.jsonl", *tok, o);
    ASSERT_TRUE(skip.ok()) << skip.status();
    EXPECT_EQ(skip->stats.skipped_of(c.kind), 1);
    EXPECT_EQ(skip->train.size(), 2);
  }
  // A template the tokenizer cannot serve is one error before any record.
  DataOptions o = chat_options();
  o.chat_template = "llama3";
  absl::StatusOr<DataSplits> d = load_dataset_from_memory(good + "\n", "chat.jsonl", *tok, o);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("chat.jsonl: chat records: chat template llama3 needs"), std::string::npos)
      << d.status();
  o.chat_template = "vicuna";
  EXPECT_FALSE(load_dataset_from_memory(good + "\n", "chat.jsonl", *tok, o).ok());
}

TEST(ChatRecords, SplitSpecialTokensAppliesToTextRecordsToo) {
  auto tok = load(tiny_tokenizer_dir());
  ASSERT_NE(tok, nullptr);
  DataOptions o = chat_options();
  o.format = DataOptions::Format::kJsonlText;
  o.add_eos = false;
  absl::StatusOr<DataSplits> mapped = load_dataset_from_memory(R"({"text": "a</s>"})", "t.jsonl", *tok, o);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(mapped->train.example(0).tokens, (std::vector<int32_t>{0, kEos}));
  o.split_special_tokens = true;
  absl::StatusOr<DataSplits> split = load_dataset_from_memory(R"({"text": "a</s>"})", "t.jsonl", *tok, o);
  ASSERT_TRUE(split.ok()) << split.status();
  // '<', '/', '>' are not in the alphabet (dropped, no unk token); "s" is 18.
  EXPECT_EQ(split->train.example(0).tokens, (std::vector<int32_t>{0, 18}));
}

}  // namespace
}  // namespace peft::data
