// Tests for the training data pipeline (data/dataset.h): packing and label
// shift, instruction and padding masks, the seeded split and shuffles, rank
// sharding, resume, and bad-data reports. Most tests use a byte-level fake
// tokenizer (no assets); two use tok512.model from ../shared/assets.
#include "data/dataset.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "data/tokenizer.h"
#include "tests/testing/assets.h"

namespace peft::data {
namespace {

using ::peft::testing::kNoAssetsReason;
using ::peft::testing::make_temp_dir;
using ::peft::testing::shared_assets_dir;
using Format = DataOptions::Format;

constexpr int32_t kBos = 1;
constexpr int32_t kEos = 2;

// Byte-level tokenizer: byte b -> id b + 3; 1 = BOS, 2 = EOS, vocab 259.
class FakeTokenizer final : public Tokenizer {
 public:
  explicit FakeTokenizer(int32_t pad = -1) : pad_(pad) {}
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c + 3);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= 3 && id < 259) s.push_back(static_cast<char>(id - 3));
    }
    return s;
  }
  int32_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  int32_t pad_id() const override { return pad_; }
  bool add_bos_by_default() const override { return true; }
  std::string id_to_piece(int32_t id) const override { return decode({id}); }
  std::string kind() const override { return "fake"; }

 private:
  int32_t pad_;
};

std::vector<int32_t> ids(const std::string& s) { return FakeTokenizer().encode(s); }

std::vector<int32_t> cat(std::vector<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

std::vector<int64_t> row(const at::Tensor& t, int64_t r) {
  at::Tensor x = t[r].contiguous();
  return std::vector<int64_t>(x.data_ptr<int64_t>(), x.data_ptr<int64_t>() + x.numel());
}

DataOptions options(int64_t seq_len, bool pack = true, double validation_fraction = 0.0, uint64_t seed = 1) {
  DataOptions o;
  o.seq_len = seq_len;
  o.pack = pack;
  o.validation_fraction = validation_fraction;
  o.seed = seed;
  return o;
}

// JSON lines {"text": "<i>"} for i in [0, n): every document distinct.
std::string numbered_docs(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s += "{\"text\": \"<" + std::to_string(i) + ">\"}\n";
  return s;
}

DataSplits load_ok(const std::string& content, const DataOptions& o, const std::string& name = "mem.jsonl",
                   const Tokenizer& tok = FakeTokenizer()) {
  absl::StatusOr<DataSplits> d = load_dataset_from_memory(content, name, tok, o);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? *std::move(d) : DataSplits{};
}

std::string write_file(const std::string& name, const std::string& content) {
  const std::string path = make_temp_dir("dataset_") + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

// The decoded text of each example (padding mode: one document each).
std::set<std::string> texts(const Dataset& d) {
  std::set<std::string> out;
  for (int64_t i = 0; i < d.size(); ++i) out.insert(FakeTokenizer().decode(d.example(i).tokens));
  return out;
}

TEST(DatasetTest, PackingCutsWindowsWithShiftedLabels) {
  DataSplits d = load_ok("{\"text\": \"ab\"}\n{\"text\": \"cde\"}\n{\"text\": \"f\"}\n", options(3));
  // Stream: [1 a b 2 | 1 c d e 2 | 1 f 2] (12 tokens); windows of 4, stride 3.
  const int32_t a = ids("a")[0], b = ids("b")[0], c = ids("c")[0], dd = ids("d")[0], e = ids("e")[0];
  ASSERT_EQ(d.train.size(), 3);
  EXPECT_EQ(d.train.example(0).tokens, (std::vector<int32_t>{kBos, a, b, kEos}));
  EXPECT_EQ(d.train.example(1).tokens, (std::vector<int32_t>{kEos, kBos, c, dd}));
  EXPECT_EQ(d.train.example(2).tokens, (std::vector<int32_t>{dd, e, kEos, kBos}));
  EXPECT_EQ(d.stats.dropped_tail_tokens, 2);
  EXPECT_EQ(d.stats.train_tokens, 12);
  EXPECT_EQ(d.stats.records, 3);
  EXPECT_EQ(d.stats.format, Format::kJsonlText);
  EXPECT_EQ(d.validation.size(), 0);

  absl::StatusOr<Batch> batch = d.train.collate({0, 1, 2});
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->input_ids.sizes(), (at::IntArrayRef{3, 3}));
  EXPECT_EQ(batch->input_ids.scalar_type(), at::kLong);
  EXPECT_EQ(row(batch->input_ids, 0), (std::vector<int64_t>{kBos, a, b}));
  EXPECT_EQ(row(batch->labels, 0), (std::vector<int64_t>{a, b, kEos}));
  // BOS is never a label.
  EXPECT_EQ(row(batch->input_ids, 1), (std::vector<int64_t>{kEos, kBos, c}));
  EXPECT_EQ(row(batch->labels, 1), (std::vector<int64_t>{kIgnoreIndex, c, dd}));
  EXPECT_EQ(row(batch->labels, 2), (std::vector<int64_t>{e, kEos, kIgnoreIndex}));
  EXPECT_TRUE(batch->attention_mask.eq(1).all().item<bool>());
  EXPECT_EQ(batch->tokens, 7);
  EXPECT_EQ(batch->tokens, batch->labels.ne(kIgnoreIndex).sum().item<int64_t>());
}

TEST(DatasetTest, InstructionMasksKeepOnlyResponseAndEos) {
  DataOptions o = options(24, /*pack=*/false);
  o.format = Format::kInstruction;
  o.prompt_template = "I:{instruction}|{input}\nR:";
  o.prompt_template_no_input = "I:{instruction}\nR:";
  DataSplits d = load_ok(
      "{\"instruction\": \"hi\", \"output\": \"ok\"}\n"
      "{\"instruction\": \"x{input}\", \"input\": \"in\", \"output\": \"yz\", \"extra\": 1}\n",
      o);
  ASSERT_EQ(d.train.size(), 2);
  const std::vector<int32_t> prompt0 = cat({{kBos}, ids("I:hi\nR:")});
  EXPECT_EQ(d.train.example(0).tokens, cat({prompt0, ids("ok"), {kEos}}));
  // One-pass substitution: "{input}" inside the instruction stays literal.
  EXPECT_EQ(d.train.example(1).tokens, cat({{kBos}, ids("I:x{input}|in\nR:"), ids("yz"), {kEos}}));

  absl::StatusOr<Batch> batch = d.train.collate({0});
  ASSERT_TRUE(batch.ok()) << batch.status();
  std::vector<int64_t> want(24, kIgnoreIndex);
  const int64_t p = static_cast<int64_t>(prompt0.size());  // first response token is predicted at p - 1
  want[p - 1] = ids("o")[0];
  want[p] = ids("k")[0];
  want[p + 1] = kEos;
  EXPECT_EQ(row(batch->labels, 0), want);
  EXPECT_EQ(batch->tokens, 3);
}

TEST(DatasetTest, PackedInstructionMasksStayAligned) {
  std::string content;
  for (int i = 0; i < 6; ++i) {
    content += "{\"instruction\": \"q" + std::to_string(i) + "\", \"input\": \"" + std::string(i % 2, 'z') +
               "\", \"output\": \"answer " + std::to_string(i) + "\"}\n";
  }
  DataOptions padded = options(256, /*pack=*/false);
  DataSplits one_each = load_ok(content, padded);
  EXPECT_EQ(one_each.stats.format, Format::kInstruction);
  std::vector<int32_t> stream;
  std::vector<uint8_t> targets;
  for (int64_t i = 0; i < one_each.train.size(); ++i) {
    const Example& e = one_each.train.example(i);
    stream.insert(stream.end(), e.tokens.begin(), e.tokens.end());
    targets.insert(targets.end(), e.targets.begin(), e.targets.end());
  }
  const int64_t t = 7;
  DataSplits packed = load_ok(content, options(t));
  ASSERT_EQ(packed.train.size(), (static_cast<int64_t>(stream.size()) - 1) / t);
  for (int64_t k = 0; k < packed.train.size(); ++k) {
    const Example& e = packed.train.example(k);
    EXPECT_EQ(e.tokens, std::vector<int32_t>(stream.begin() + k * t, stream.begin() + k * t + t + 1)) << k;
    EXPECT_EQ(e.targets, std::vector<uint8_t>(targets.begin() + k * t, targets.begin() + k * t + t + 1)) << k;
  }
}

TEST(DatasetTest, PaddingMasksPadPositions) {
  const int32_t a = ids("a")[0], b = ids("b")[0], c = ids("c")[0];
  for (int32_t tok_pad : {-1, 0}) {
    SCOPED_TRACE(tok_pad);
    FakeTokenizer tok(tok_pad);
    DataSplits d = load_ok("{\"text\": \"abc\"}\n", options(6, /*pack=*/false), "x.jsonl", tok);
    const int64_t pad = tok_pad >= 0 ? tok_pad : kEos;  // no pad id: EOS pads
    EXPECT_EQ(d.train.pad_id(), pad);
    absl::StatusOr<Batch> batch = d.train.collate({0});
    ASSERT_TRUE(batch.ok()) << batch.status();
    EXPECT_EQ(row(batch->input_ids, 0), (std::vector<int64_t>{kBos, a, b, c, pad, pad}));
    EXPECT_EQ(row(batch->labels, 0), (std::vector<int64_t>{a, b, c, kEos, kIgnoreIndex, kIgnoreIndex}));
    EXPECT_EQ(row(batch->attention_mask, 0), (std::vector<int64_t>{1, 1, 1, 1, 0, 0}));
    EXPECT_EQ(batch->tokens, 4);
  }
}

TEST(DatasetTest, PreTokenizedIdsGetBosEosOnlyWhenMissing) {
  DataSplits d = load_ok("{\"ids\": [4, 5]}\n{\"ids\": [1, 6, 2]}\n", options(8, /*pack=*/false));
  ASSERT_EQ(d.train.size(), 2);
  EXPECT_EQ(d.train.example(0).tokens, (std::vector<int32_t>{kBos, 4, 5, kEos}));
  EXPECT_EQ(d.train.example(1).tokens, (std::vector<int32_t>{kBos, 6, kEos}));
  EXPECT_EQ(d.train.example(1).targets, (std::vector<uint8_t>{0, 1, 1}));
}

TEST(DatasetTest, PlainTextSplitsDocumentsAtBlankLines) {
  DataSplits d = load_ok("a\nb\n\n \t\n\r\nc\r\nd\n\n\ne", options(16, /*pack=*/false), "notes.txt");
  EXPECT_EQ(d.stats.format, Format::kPlainText);
  EXPECT_EQ(d.stats.records, 3);
  EXPECT_EQ(texts(d.train), (std::set<std::string>{"a\nb", "c\nd", "e"}));
}

TEST(DatasetTest, AutoDetectsFormat) {
  struct Case {
    std::string name, content;
    Format want;
  };
  const std::vector<Case> cases = {
      {"a.jsonl", "\n{\"text\": \"x\"}\n", Format::kJsonlText},
      {"a.json", "{\"instruction\": \"i\", \"output\": \"o\"}\n", Format::kInstruction},
      {"a.txt", "{\"text\": \"x\"}\n", Format::kPlainText},
      {"a.data", "{\"ids\": [5, 6]}\n", Format::kJsonlText},
      {"a.data", "{ plain words\n", Format::kPlainText},
      {"noext", "Hello there\n", Format::kPlainText},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name + ": " + c.content);
    DataSplits d = load_ok(c.content, options(64, /*pack=*/false), c.name);
    EXPECT_EQ(d.stats.format, c.want);
  }
}

TEST(DatasetTest, ShuffleIsDeterministicPerSeedAndEpoch) {
  const std::string content = numbered_docs(30);
  DataSplits d1 = load_ok(content, options(16, false, 0.2, 7));
  DataSplits d2 = load_ok(content, options(16, false, 0.2, 7));
  DataSplits d3 = load_ok(content, options(16, false, 0.2, 8));
  for (int64_t epoch : {0, 1, 5}) {
    std::vector<int64_t> order = d1.train.epoch_order(epoch);
    EXPECT_EQ(order, d2.train.epoch_order(epoch));
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < d1.train.size(); ++i) EXPECT_EQ(sorted[i], i);
  }
  EXPECT_NE(d1.train.epoch_order(0), d1.train.epoch_order(1));  // reshuffled per epoch
  EXPECT_NE(texts(d1.train), texts(d3.train));                  // another seed, another split
  // Same seed: the same batches, tensor for tensor.
  absl::StatusOr<Batch> b1 = d1.train.batch(3, 4, 0, 1), b2 = d2.train.batch(3, 4, 0, 1);
  ASSERT_TRUE(b1.ok() && b2.ok());
  EXPECT_TRUE(b1->input_ids.equal(b2->input_ids));
  EXPECT_TRUE(b1->labels.equal(b2->labels));
  EXPECT_EQ(b1->example_indices, b2->example_indices);
  // Another seed with the same examples: another order.
  DataSplits d4 = load_ok(content, options(16, false, 0.0, 7)), d5 = load_ok(content, options(16, false, 0.0, 8));
  EXPECT_NE(d4.train.epoch_order(0), d5.train.epoch_order(0));
  // Validation is read in file order.
  std::vector<int64_t> identity(d1.validation.size());
  for (size_t i = 0; i < identity.size(); ++i) identity[i] = static_cast<int64_t>(i);
  EXPECT_EQ(d1.validation.epoch_order(3), identity);
}

TEST(DatasetTest, ValidationSplitIsByDocumentDisjointAndStable) {
  const std::string content = numbered_docs(40);
  DataSplits d = load_ok(content, options(16, false, 0.25, 3));
  EXPECT_EQ(d.stats.validation_documents, 10);
  EXPECT_EQ(d.stats.train_documents, 30);
  const std::set<std::string> train = texts(d.train), val = texts(d.validation);
  ASSERT_EQ(train.size(), 30u);
  ASSERT_EQ(val.size(), 10u);
  std::set<std::string> all = train;
  all.insert(val.begin(), val.end());
  EXPECT_EQ(all.size(), 40u);  // disjoint, and together every document
  EXPECT_EQ(texts(load_ok(content, options(16, false, 0.25, 3)).validation), val);
  // Packing changes windows, not which documents are held out.
  DataSplits packed = load_ok(content, options(4, true, 0.25, 3));
  std::vector<int32_t> stream;  // windows overlap by one token
  for (int64_t i = 0; i < packed.validation.size(); ++i) {
    const std::vector<int32_t>& t = packed.validation.example(i).tokens;
    stream.insert(stream.end(), t.begin() + (i == 0 ? 0 : 1), t.end());
  }
  const std::string val_stream = FakeTokenizer().decode(stream);
  size_t found = 0;
  for (const std::string& doc : val) found += val_stream.find(doc) != std::string::npos;
  EXPECT_GE(found, val.size() - 1);  // the last one may sit in the dropped tail
  for (const std::string& doc : train) EXPECT_EQ(val_stream.find(doc), std::string::npos) << doc;
  // A tiny fraction still holds out one document; zero holds out none.
  EXPECT_EQ(load_ok(content, options(16, false, 0.001, 3)).stats.validation_documents, 1);
  EXPECT_EQ(load_ok(content, options(16, false, 0.0, 3)).validation.size(), 0);
}

TEST(DatasetTest, RanksGetDisjointSlicesCoveringTheGlobalBatch) {
  DataSplits d = load_ok(numbered_docs(23), options(8, false, 0.0, 11));
  const int64_t batch_size = 8, world = 4;
  for (int64_t step = 0; step < 7; ++step) {
    SCOPED_TRACE(step);
    absl::StatusOr<Batch> global = d.train.batch(step, batch_size, 0, 1);
    ASSERT_TRUE(global.ok()) << global.status();
    std::vector<int64_t> joined;
    int64_t tokens = 0;
    for (int64_t r = 0; r < world; ++r) {
      absl::StatusOr<Batch> local = d.train.batch(step, batch_size, r, world);
      ASSERT_TRUE(local.ok()) << local.status();
      ASSERT_EQ(local->input_ids.size(0), batch_size / world);
      EXPECT_TRUE(local->input_ids.equal(global->input_ids.narrow(0, r * 2, 2)));
      EXPECT_TRUE(local->labels.equal(global->labels.narrow(0, r * 2, 2)));
      EXPECT_EQ(local->global_tokens, global->tokens);
      joined.insert(joined.end(), local->example_indices.begin(), local->example_indices.end());
      tokens += local->tokens;
    }
    EXPECT_EQ(joined, global->example_indices);
    EXPECT_EQ(tokens, global->tokens);
    // Within one epoch (steps 0 and 1 of 23 examples) no example repeats.
    if (step < 2) {
      EXPECT_EQ(std::set<int64_t>(joined.begin(), joined.end()).size(), joined.size());
    }
  }
  EXPECT_FALSE(d.train.batch(0, 6, 0, 4).ok());  // 6 rows do not split over 4 ranks
  EXPECT_FALSE(d.train.batch(0, 8, 4, 4).ok());  // rank out of range
  EXPECT_FALSE(d.train.batch(0, 8, -1, 4).ok());
  EXPECT_FALSE(d.train.batch(-1, 8, 0, 4).ok());
  EXPECT_FALSE(d.train.batch(std::numeric_limits<int64_t>::max(), 8, 0, 1).ok());
  EXPECT_FALSE(Dataset().batch(0, 1, 0, 1).ok());
}

TEST(DatasetTest, EpochsWrapAndPositionsResumeExactly) {
  DataSplits d = load_ok(numbered_docs(5), options(8, false, 0.0, 5));
  ASSERT_EQ(d.train.size(), 5);
  const std::vector<int64_t> e0 = d.train.epoch_order(0), e1 = d.train.epoch_order(1);
  // Global batch 2 of size 2: the last example of epoch 0, the first of epoch 1.
  absl::StatusOr<Batch> straddle = d.train.batch(2, 2, 0, 1);
  ASSERT_TRUE(straddle.ok());
  EXPECT_EQ(straddle->example_indices, (std::vector<int64_t>{e0[4], e1[0]}));

  BatchIterator it(d.train, 2, 0, 1);
  std::vector<std::vector<int64_t>> seen;
  DataPosition saved;
  for (int step = 0; step < 9; ++step) {
    if (step == 4) saved = it.position();
    absl::StatusOr<Batch> b = it.next();
    ASSERT_TRUE(b.ok()) << b.status();
    seen.push_back(b->example_indices);
  }
  EXPECT_EQ(saved, (DataPosition{1, 3}));  // 8 examples read = 1 epoch + 3
  absl::StatusOr<DataPosition> at4 = d.train.position_at_step(4, 2);
  ASSERT_TRUE(at4.ok());
  EXPECT_EQ(*at4, saved);

  BatchIterator resumed(d.train, 2, 0, 1);
  ASSERT_TRUE(resumed.restore({saved.epoch, saved.index}).ok());
  for (int step = 4; step < 9; ++step) {
    absl::StatusOr<Batch> b = resumed.next();
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(b->example_indices, seen[step]) << step;
  }
  // A new batch size continues from the same example.
  BatchIterator one_by_one(d.train, 1, 0, 1);
  ASSERT_TRUE(one_by_one.restore(saved).ok());
  EXPECT_EQ(one_by_one.next()->example_indices, (std::vector<int64_t>{seen[4][0]}));
  EXPECT_EQ(one_by_one.position(), (DataPosition{1, 4}));

  EXPECT_FALSE(resumed.restore({0, 5}).ok());
  EXPECT_FALSE(resumed.restore({-1, 0}).ok());
  EXPECT_FALSE(d.train.advance({std::numeric_limits<int64_t>::max(), 4}, 5).ok());
}

struct BadCase {
  std::string name;    // file name (its extension picks the format)
  std::string good;    // a valid first line
  std::string bad;     // the line at line 3
  std::string phrase;  // expected in the message
  BadRecord kind;
  bool pack = true;
};

std::vector<BadCase> bad_cases() {
  const std::string text = "{\"text\": \"fine\"}";
  const std::string inst = "{\"instruction\": \"i\", \"output\": \"o\"}";
  return {
      {"a.jsonl", text, "{\"text\": \"unterminated", "malformed JSON", BadRecord::kMalformedJson},
      {"a.jsonl", text, "[1, 2]", "expected an object", BadRecord::kMalformedJson},
      {"a.jsonl", text, "{\"txt\": \"x\"}", "missing field \"text\"", BadRecord::kMissingField},
      {"a.jsonl", text, "{\"text\": 5}", "\"text\" is a number", BadRecord::kWrongType},
      {"a.jsonl", text, "{\"text\": \"x\", \"ids\": [5]}", "both", BadRecord::kWrongType},
      {"a.jsonl", text, "{\"ids\": [5, 1.5]}", "\"ids\"[1] is a number", BadRecord::kWrongType},
      {"a.jsonl", text, "{\"ids\": [5, 259]}", "\"ids\"[1] = 259 is outside the vocabulary", BadRecord::kIdOutOfRange},
      {"a.jsonl", text, "{\"ids\": [-3]}", "\"ids\"[0] = -3", BadRecord::kIdOutOfRange},
      {"a.jsonl", text, "{\"ids\": [18446744073709551615]}", "outside the vocabulary", BadRecord::kIdOutOfRange},
      {"a.jsonl", text, "{\"text\": \"far too long for eight\"}", "longer than the context", BadRecord::kTooLong,
       false},
      {"a.json", inst, "{\"instruction\": \"i\"}", "missing field \"output\"", BadRecord::kMissingField},
      {"a.json", inst, "{\"instruction\": \"i\", \"input\": [], \"output\": \"o\"}", "\"input\" is a array",
       BadRecord::kWrongType},
      {"a.txt", "fine", "this paragraph is too long", "longer than the context", BadRecord::kTooLong, false},
  };
}

TEST(DatasetTest, BadDataIsReportedWithFileAndLine) {
  FakeTokenizer tok;
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.bad);
    // Line 2 is blank: line numbers count every line of the file.
    const std::string path = write_file(c.name, c.good + "\n\n" + c.bad + "\n\n" + c.good + "\n");
    absl::StatusOr<DataSplits> d = load_dataset(path, tok, options(8, c.pack));
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(d.status().message().find(path + ":3: "), std::string::npos) << d.status();
    EXPECT_NE(d.status().message().find(c.phrase), std::string::npos) << d.status();
  }
}

TEST(DatasetTest, ProgressIsReportedAboutEveryMegabyte) {
  FakeTokenizer tok;
  std::string content;
  while (content.size() < 3 * static_cast<size_t>(DataOptions::kProgressBytes) + 1000) {
    content += "{\"text\": \"a few words of text for the progress test\"}\n";
  }
  const std::string path = write_file("progress.jsonl", content);
  DataOptions o = options(8);
  std::vector<std::pair<int64_t, int64_t>> calls;
  o.progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  ASSERT_TRUE(load_dataset(path, tok, o).ok());
  ASSERT_EQ(calls.size(), 3u);
  for (size_t i = 0; i < calls.size(); ++i) {
    EXPECT_EQ(calls[i].second, static_cast<int64_t>(content.size()));
    // At the first line that starts a megabyte or more after the last report.
    const int64_t gap = calls[i].first - (i == 0 ? 0 : calls[i - 1].first);
    EXPECT_GE(gap, DataOptions::kProgressBytes) << i;
    EXPECT_LT(gap, DataOptions::kProgressBytes + 100) << i;
  }
  // A small file reports nothing.
  calls.clear();
  ASSERT_TRUE(load_dataset(write_file("small.jsonl", content.substr(0, content.find('\n', 5000) + 1)), tok, o).ok());
  EXPECT_TRUE(calls.empty());
}

// Reading with several threads gives the same documents, in the same order,
// with the same counts, skips and errors as one thread, in every format
// (files over 2 MB are cut into 4 pieces per thread at line or paragraph ends).
TEST(DatasetTest, ThreadsDoNotChangeTheResult) {
  FakeTokenizer tok;
  struct Case {
    std::string name;
    std::string record;  // %d: a number that makes records differ
    std::string separator;
    bool pack;
  };
  const std::vector<Case> cases = {
      {"t.jsonl", "{\"text\": \"record number %d\"}", "\n", true},
      {"i.jsonl", "{\"instruction\": \"echo\", \"input\": \"%d\", \"output\": \"%d\"}", "\n", false},
      {"p.txt", "paragraph %d, first line\nand its second line", "\n\n", true},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string content;
    for (int i = 0; content.size() < 3 * static_cast<size_t>(DataOptions::kProgressBytes); ++i) {
      std::string r = c.record;
      for (size_t at; (at = r.find("%d")) != std::string::npos;) r.replace(at, 2, std::to_string(i));
      content += r + c.separator;
      // Bad records here and there (text format has none: any paragraph is fine).
      // The first one far into the file (a later piece), so that the
      // reported line number needs the line counts of the pieces before.
      if (c.name != "p.txt" && i % 20011 == 15000) content += "{\"broken\n";
    }
    const std::string path = write_file(c.name, content);
    for (bool skip : {true, false}) {
      DataOptions o = options(96, c.pack, 0.1, 7);
      o.on_bad = skip ? DataOptions::OnBadRecord::kSkip : DataOptions::OnBadRecord::kStop;
      o.threads = 1;
      absl::StatusOr<DataSplits> one = load_dataset(path, tok, o);
      o.threads = 3;
      absl::StatusOr<DataSplits> three = load_dataset(path, tok, o);
      ASSERT_EQ(one.ok(), three.ok());
      if (!one.ok()) {
        ASSERT_FALSE(skip);
        ASSERT_NE(c.name, "p.txt");
        EXPECT_EQ(one.status(), three.status());
        EXPECT_NE(std::string(one.status().message()).find(":15002: malformed JSON"), std::string::npos)
            << one.status();
        continue;
      }
      ASSERT_TRUE(skip || c.name == "p.txt");
      EXPECT_GT(one->stats.records, 40000);
      if (c.name != "p.txt") {
        ASSERT_GE(one->stats.skipped_messages.size(), 2u);
        EXPECT_NE(one->stats.skipped_messages[0].find(":15002: "), std::string::npos) << one->stats.skipped_messages[0];
      }
      EXPECT_EQ(one->stats.summary(), three->stats.summary());
      EXPECT_EQ(one->stats.skipped_messages, three->stats.skipped_messages);
      ASSERT_EQ(one->train.size(), three->train.size());
      ASSERT_EQ(one->validation.size(), three->validation.size());
      for (int64_t i = 0; i < one->train.size(); ++i) {
        ASSERT_EQ(one->train.example(i).tokens, three->train.example(i).tokens) << i;
        ASSERT_EQ(one->train.example(i).targets, three->train.example(i).targets) << i;
      }
      for (int64_t i = 0; i < one->validation.size(); ++i) {
        ASSERT_EQ(one->validation.example(i).tokens, three->validation.example(i).tokens) << i;
      }
    }
  }
}

TEST(DatasetTest, SkipModeListsTheFirstSkippedRecordsAndCountsTheRest) {
  FakeTokenizer tok;
  std::string content = "{\"text\": \"fine\"}\n";
  const int bad = DataStats::kMaxSkippedMessages + 4;
  for (int i = 0; i < bad; ++i) content += "{\"text\": 5}\n";
  const std::string path = write_file("many.jsonl", content);
  DataOptions o = options(8, /*pack=*/false);
  o.on_bad = DataOptions::OnBadRecord::kSkip;
  absl::StatusOr<DataSplits> d = load_dataset(path, tok, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stats.skipped_total(), bad);
  ASSERT_EQ(d->stats.skipped_messages.size(), static_cast<size_t>(DataStats::kMaxSkippedMessages));
  const std::string summary = d->stats.summary();
  EXPECT_NE(summary.find("\n  skipped " + path + ":2: "), std::string::npos) << summary;
  EXPECT_NE(summary.find(absl::StrCat("\n  skipped ", path, ":", DataStats::kMaxSkippedMessages + 1, ": ")),
            std::string::npos)
      << summary;
  EXPECT_EQ(summary.find(absl::StrCat(path, ":", DataStats::kMaxSkippedMessages + 2, ": ")), std::string::npos)
      << summary;
  EXPECT_NE(summary.find("\n  ... and 4 more skipped records"), std::string::npos) << summary;
}

TEST(DatasetTest, SkipModeCountsSkippedRecordsByReason) {
  FakeTokenizer tok;
  int64_t want[kNumBadRecordKinds] = {};
  for (const BadCase& c : bad_cases()) {
    SCOPED_TRACE(c.bad);
    DataOptions o = options(8, c.pack);
    o.on_bad = DataOptions::OnBadRecord::kSkip;
    const std::string path = write_file(c.name, c.good + "\n\n" + c.bad + "\n\n" + c.good + "\n\n" + c.bad + "\n");
    absl::StatusOr<DataSplits> d = load_dataset(path, tok, o);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(d->stats.records, 4);
    EXPECT_EQ(d->stats.skipped_of(c.kind), 2);
    EXPECT_EQ(d->stats.skipped_total(), 2);
    ASSERT_EQ(d->stats.skipped_messages.size(), 2u);
    EXPECT_EQ(d->stats.skipped_messages[0].rfind(path + ":3: ", 0), 0u) << d->stats.skipped_messages[0];
    EXPECT_EQ(d->stats.skipped_messages[1].rfind(path + ":7: ", 0), 0u) << d->stats.skipped_messages[1];
    EXPECT_NE(d->stats.summary().find(std::string("2 ") + bad_record_name(c.kind)), std::string::npos)
        << d->stats.summary();
    // The summary says where: each skipped record's "path:line: what" on its own line.
    EXPECT_NE(d->stats.summary().find("\n  skipped " + d->stats.skipped_messages[0]), std::string::npos)
        << d->stats.summary();
    EXPECT_NE(d->stats.summary().find("\n  skipped " + d->stats.skipped_messages[1]), std::string::npos)
        << d->stats.summary();
    want[static_cast<int>(c.kind)] += 2;
  }
  // One file with every kind of bad JSON line at once.
  std::string mixed = "{\"text\": \"fine\"}\n";
  for (const BadCase& c : bad_cases()) {
    if (c.name == "a.jsonl" && c.pack) mixed += c.bad + "\n";
  }
  DataOptions o = options(4);
  o.on_bad = DataOptions::OnBadRecord::kSkip;
  absl::StatusOr<DataSplits> d = load_dataset_from_memory(mixed, "mixed.jsonl", tok, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stats.skipped_of(BadRecord::kMalformedJson), 2);
  EXPECT_EQ(d->stats.skipped_of(BadRecord::kMissingField), 1);
  EXPECT_EQ(d->stats.skipped_of(BadRecord::kWrongType), 3);
  EXPECT_EQ(d->stats.skipped_of(BadRecord::kIdOutOfRange), 3);
  EXPECT_EQ(d->stats.train_documents, 1);
}

TEST(DatasetTest, EmptyOrUnusableFilesAreErrors) {
  FakeTokenizer tok;
  for (const std::string& content : {std::string(""), std::string(" \n\r\n\t\n"), std::string("\xEF\xBB\xBF\n")}) {
    const std::string path = write_file("empty.jsonl", content);
    absl::StatusOr<DataSplits> d = load_dataset(path, tok, options(8));
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(d.status().message(), path + ": empty file (no records)");
  }
  EXPECT_EQ(load_dataset("/nonexistent/x.jsonl", tok, options(8)).status().code(), absl::StatusCode::kNotFound);

  DataOptions skip = options(8);
  skip.on_bad = DataOptions::OnBadRecord::kSkip;
  absl::StatusOr<DataSplits> all_bad = load_dataset_from_memory("{\n{\"t\": 1}\n", "bad.jsonl", tok, skip);
  ASSERT_FALSE(all_bad.ok());
  EXPECT_NE(all_bad.status().message().find("no usable records"), std::string::npos) << all_bad.status();
  EXPECT_NE(all_bad.status().message().find("bad.jsonl:1:"), std::string::npos) << all_bad.status();

  absl::StatusOr<DataSplits> short_data = load_dataset_from_memory("{\"text\": \"ab\"}\n", "s.jsonl", tok, options(8));
  ASSERT_FALSE(short_data.ok());
  EXPECT_NE(short_data.status().message().find("fewer than seq_len + 1 = 9"), std::string::npos) << short_data.status();
}

TEST(DatasetTest, OptionsAndExamplesAreValidated) {
  FakeTokenizer tok;
  EXPECT_FALSE(load_dataset_from_memory("x", "a.txt", tok, options(0)).ok());
  EXPECT_FALSE(load_dataset_from_memory("x", "a.txt", tok, options(4, true, 1.0)).ok());
  EXPECT_FALSE(load_dataset_from_memory("x", "a.txt", tok, options(4, true, -0.1)).ok());
  DataOptions o = options(4);
  o.prompt_template = "no placeholder";
  EXPECT_FALSE(o.validate().ok());

  using Order = Dataset::Order;
  EXPECT_TRUE(Dataset::create({}, 4, 0, 0, Order::kShuffled).ok());
  EXPECT_FALSE(Dataset::create({{{1}, {0}}}, 4, 0, 0, Order::kShuffled).ok());  // too short
  EXPECT_FALSE(Dataset::create({{{1, 2, 3, 4, 5, 6}, {0, 1, 1, 1, 1, 1}}}, 4, 0, 0, Order::kShuffled).ok());
  EXPECT_FALSE(Dataset::create({{{1, 2}, {0}}}, 4, 0, 0, Order::kShuffled).ok());      // size mismatch
  EXPECT_FALSE(Dataset::create({{{1, -2}, {0, 1}}}, 4, 0, 0, Order::kShuffled).ok());  // negative id
  EXPECT_FALSE(Dataset::create({{{1, 2}, {0, 1}}}, 4, -1, 0, Order::kShuffled).ok());  // pad id
  absl::StatusOr<Dataset> ok = Dataset::create({{{1, 2}, {0, 1}}}, 4, 0, 0, Order::kShuffled);
  ASSERT_TRUE(ok.ok());
  EXPECT_FALSE(ok->collate({1}).ok());
}

TEST(DatasetTest, HostileInputNeverCrashes) {
  FakeTokenizer tok;
  std::mt19937 rng(1234);
  const std::string alphabet = "{}[]\":,.-+eE0123456789 \t\n\r\\u/textidsnputoqrlfa\xff\xc3";
  std::vector<std::string> inputs = {
      std::string(200000, '[') + std::string(200000, ']'),
      "{\"text\": " + std::string(100000, '[') + "\n",
      "{\"ids\": [1e400, 99999999999999999999999]}\n",
      "{\"text\": \"\\ud800\"}\n",
      std::string("{\"text\": \"a\0b\"}\n", 16),
      "{\"instruction\": \"\", \"output\": \"\"}\n",
      "{\"ids\": []}\n{\"text\": \"\"}\n",
  };
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 200, ' ');
    for (char& c : s) c = alphabet[rng() % alphabet.size()];
    inputs.push_back(s);
  }
  int loaded = 0;
  for (const std::string& in : inputs) {
    for (Format f : {Format::kAuto, Format::kJsonlText, Format::kInstruction, Format::kPlainText}) {
      for (auto on_bad : {DataOptions::OnBadRecord::kStop, DataOptions::OnBadRecord::kSkip}) {
        for (bool pack : {true, false}) {
          DataOptions o = options(4, pack, 0.3);
          o.format = f;
          o.on_bad = on_bad;
          absl::StatusOr<DataSplits> d = load_dataset_from_memory(in, "fuzz.jsonl", tok, o);
          if (!d.ok()) continue;
          ++loaded;
          EXPECT_TRUE(d->train.batch(3, 2, 1, 2).ok());
        }
      }
    }
  }
  EXPECT_GT(loaded, 0);
}

// ---------------------------------------------------------------------------
// With the real tok512 sentencepiece tokenizer (BOS = 1, EOS = 2).

class DatasetAssetsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    assets_ = shared_assets_dir();
    if (assets_.empty()) GTEST_SKIP() << kNoAssetsReason;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = load_tokenizer(assets_ + "/llama2c_stories260K/tok512.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *std::move(tok);
  }
  std::string assets_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(DatasetAssetsTest, TinyShakespeareParagraphs) {
  std::ifstream in(assets_ + "/corpus/tinyshakespeare.txt", std::ios::binary);
  std::string text(20000, '\0');
  in.read(text.data(), text.size());
  text.resize(in.gcount());
  text.resize(text.rfind("\n\n"));  // whole paragraphs only
  const std::string path = write_file("shakespeare.txt", text);

  absl::StatusOr<DataSplits> padded = load_dataset(path, *tok_, options(4096, false, 0.1, 9));
  ASSERT_TRUE(padded.ok()) << padded.status();
  EXPECT_GT(padded->stats.train_documents, 50);
  for (int64_t i = 0; i < padded->train.size(); ++i) {
    const Example& e = padded->train.example(i);
    ASSERT_EQ(e.tokens.front(), 1);
    ASSERT_EQ(e.tokens.back(), 2);
    const std::string doc = tok_->decode(e.tokens);
    EXPECT_NE(text.find(doc), std::string::npos) << doc;
  }

  absl::StatusOr<DataSplits> packed = load_dataset(path, *tok_, options(64, true, 0.1, 9));
  ASSERT_TRUE(packed.ok()) << packed.status();
  EXPECT_EQ(packed->stats.train_documents, padded->stats.train_documents);
  EXPECT_EQ(packed->stats.train_tokens, padded->stats.train_tokens);
  absl::StatusOr<Batch> b = packed->train.batch(1, 8, 0, 1);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->input_ids.sizes(), (at::IntArrayRef{8, 64}));
  // Labels are the inputs shifted by one, except where the next token is BOS.
  at::Tensor next = b->input_ids.narrow(1, 1, 63), lab = b->labels.narrow(1, 0, 63);
  EXPECT_TRUE(lab.eq(next).logical_or(next.eq(1).logical_and(lab.eq(kIgnoreIndex))).all().item<bool>());
  EXPECT_TRUE(b->labels.lt(tok_->vocab_size()).all().item<bool>());
}

TEST_F(DatasetAssetsTest, InstructionResponseTokensAreTheOnlyLabels) {
  DataOptions o = options(128, false);
  const std::string path = write_file(
      "sft.jsonl", "{\"instruction\": \"Tell a story.\", \"input\": \"\", \"output\": \"Once upon a time.\"}\n");
  absl::StatusOr<DataSplits> d = load_dataset(path, *tok_, o);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stats.format, Format::kInstruction);
  absl::StatusOr<Batch> b = d->train.collate({0});
  ASSERT_TRUE(b.ok());
  std::vector<int32_t> response, prompt;
  const std::vector<int64_t> labels = row(b->labels, 0), inputs = row(b->input_ids, 0);
  for (size_t p = 0; p < labels.size(); ++p) {
    if (labels[p] != kIgnoreIndex) {
      response.push_back(static_cast<int32_t>(labels[p]));
      if (prompt.empty()) prompt.assign(inputs.begin(), inputs.begin() + p + 1);
    }
  }
  ASSERT_FALSE(response.empty());
  EXPECT_EQ(response.back(), 2);  // EOS carries loss
  EXPECT_EQ(tok_->decode(response), "Once upon a time.");
  EXPECT_EQ(tok_->decode(prompt), "### Instruction:\nTell a story.\n\n### Response:\n");
}

}  // namespace
}  // namespace peft::data
