// Tests for data/sentencepiece_tokenizer.h through the dlopen'ed shim, in a
// binary that also links and uses libtorch: the protobuf clash between
// Debian's libsentencepiece and libtorch would crash this process at startup
// if sentencepiece were linked directly (see ../shared/docs/toolchain.md).
#include "data/sentencepiece_tokenizer.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <ATen/ops/ones.h>
#include <gtest/gtest.h>

#include "data/records.h"
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

// Texts that exercise every kind of cut: spaces, runs of spaces, newlines,
// no whitespace at all, multi-byte and invalid UTF-8, a literal "▁".
std::vector<std::pair<std::string, std::string>> chunking_texts(const std::string& dir) {
  std::vector<std::pair<std::string, std::string>> texts;
  std::string shakespeare = read_binary_file(dir + "/corpus/tinyshakespeare.txt").substr(0, 12000);
  texts.emplace_back("shakespeare", shakespeare);
  std::mt19937 rng(7);
  const std::vector<std::string> words = {"the", "Once", "upon", "time", "é", "日本語", "😀", "x", "▁", "a▁b", "42"};
  const std::vector<std::string> gaps = {" ", "  ", "   ", "    ", "        ", "\n", "\n\n", " \n ", "\t", "\r\n", ""};
  std::string mixed = "   leading spaces";
  for (int i = 0; i < 3000; ++i) {
    mixed += words[rng() % words.size()];
    mixed += gaps[rng() % gaps.size()];
  }
  mixed += "   ";  // trailing spaces
  texts.emplace_back("runs of spaces, newlines, tabs, UTF-8", mixed);
  std::string lines;
  for (int i = 0; i < 2000; ++i) lines += words[rng() % 4] + "\n";
  texts.emplace_back("newlines only", lines);
  std::string digits;  // no whitespace; Llama splits digits, so cuts stay exact
  for (int i = 0; i < 8000; ++i) digits += static_cast<char>('0' + rng() % 10);
  texts.emplace_back("digits without whitespace", digits);
  std::string cjk;
  for (int i = 0; i < 2000; ++i) cjk += i % 3 == 0 ? "日本" : i % 3 == 1 ? "語の" : "文章";
  texts.emplace_back("CJK without whitespace", cjk);
  std::string bad;
  for (int i = 0; i < 2000; ++i) bad += i % 5 == 0 ? "ok \xFF\xFE\xC3 end " : "word \xE6\x97 ";
  texts.emplace_back("invalid UTF-8", bad);
  return texts;
}

// Chunked encoding (cuts every 32-64 bytes) against one Encode of the whole
// text by the same library, for both LLaMA-family models (tok512 removes
// extra whitespace, Llama-2 does not).
TEST(SentencePieceTokenizerTest, ChunkedEncodingEqualsWholeEncoding) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  for (const std::string model : {"/llama2_tokenizer/tokenizer.model", "/llama2c_stories260K/tok512.model"}) {
    SentencePieceOptions whole_opts;
    whole_opts.chunk_bytes = std::numeric_limits<size_t>::max();
    SentencePieceOptions chunk_opts;
    chunk_opts.chunk_bytes = 64;
    auto whole = SentencePieceTokenizer::create(dir + model, whole_opts);
    auto chunked = SentencePieceTokenizer::create(dir + model, chunk_opts);
    ASSERT_TRUE(whole.ok() && chunked.ok()) << whole.status() << chunked.status();
    EXPECT_EQ((*chunked)->unchunked_reason(), "");
    EXPECT_EQ((*chunked)->max_text_bytes(), std::numeric_limits<size_t>::max());
    for (const auto& [name, text] : chunking_texts(dir)) {
      const std::vector<SentencePieceTokenizer::Cut> cuts = (*chunked)->cuts(text);
      EXPECT_GE(cuts.size(), text.size() / 64 - 1) << model << ": " << name;
      for (size_t k = 0; k < cuts.size(); ++k) {
        const size_t from = k == 0 ? 0 : cuts[k - 1].at;
        EXPECT_LE(cuts[k].at - from, 64u) << name;
        EXPECT_TRUE(cuts[k].exact) << model << ": " << name << ": cut at " << cuts[k].at;
      }
      const std::vector<int32_t> want = (*whole)->encode(text);
      const std::vector<int32_t> got = (*chunked)->encode(text);
      EXPECT_EQ(got, want) << model << ": " << name << " (" << cuts.size() << " cuts)";
      EXPECT_EQ((*chunked)->decode(got), (*whole)->decode(want)) << model << ": " << name;
    }
  }
}

// The assets' reference ids, encoded 16 bytes at a time.
TEST(SentencePieceTokenizerTest, ChunkedEncodingMatchesReferenceIds) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  SentencePieceOptions opts;
  opts.chunk_bytes = 16;
  for (const auto& [model, ref] : std::vector<std::pair<std::string, std::string>>{
           {"/llama2_tokenizer/tokenizer.model", "/llama2_tokenizer/reference_encodings.jsonl"},
           {"/llama2c_stories260K/tok512.model", "/llama2c_stories260K/reference_encodings_tok512.jsonl"}}) {
    auto tok = SentencePieceTokenizer::create(dir + model, opts);
    ASSERT_TRUE(tok.ok()) << tok.status();
    auto records = read_reference_jsonl(dir + ref);
    ASSERT_FALSE(records.empty());
    // Records cut only where the cut is exact must give the reference ids;
    // the others (no exact cut within 8 bytes) must still decode to the text.
    std::vector<testing::ReferenceRecord> exact;
    size_t cut = 0, inexact = 0;
    for (const auto& r : records) {
      const std::vector<SentencePieceTokenizer::Cut> cuts = (*tok)->cuts(r.text);
      const bool all_exact = std::all_of(cuts.begin(), cuts.end(), [](const auto& c) { return c.exact; });
      cut += cuts.empty() ? 0 : 1;
      if (all_exact) {
        exact.push_back(r);
      } else {
        ++inexact;
        if (model.find("llama2_") != std::string::npos) {
          EXPECT_EQ((*tok)->decode((*tok)->encode(r.text)), r.text);
        }
      }
    }
    EXPECT_GT(cut, records.size() / 4) << model;
    EXPECT_GT(cut, inexact + 20) << model;
    CheckResult enc = check_encodings(**tok, exact);
    EXPECT_EQ(enc.passed, enc.total) << model << ": " << enc.failures;
    std::cout << model << ": " << cut << " of " << records.size() << " references cut in 16-byte pieces, " << inexact
              << " of them inexactly; " << enc.passed << "/" << enc.total << " exact ones match\n";
  }
}

// A window with no exact cut (every character pair is inside some piece) is
// cut anyway: bounded pieces, the text survives, few tokens differ.
TEST(SentencePieceTokenizerTest, TextWithoutAnExactCutIsStillCut) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  SentencePieceOptions opts;
  opts.chunk_bytes = 64;
  auto tok = SentencePieceTokenizer::create(dir + "/llama2_tokenizer/tokenizer.model", opts);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const std::string text(4096, 'a');
  const std::vector<SentencePieceTokenizer::Cut> cuts = (*tok)->cuts(text);
  ASSERT_EQ(cuts.size(), 4096u / 64 - 1);
  EXPECT_FALSE(cuts[0].exact);
  const std::vector<int32_t> ids = (*tok)->encode(text);
  EXPECT_EQ((*tok)->decode(ids), text);
}

// Peak memory of one 5 MB line, measured in a child process (fresh high-water
// mark): one sentencepiece Encode of it takes about 1.2 GB; in 64 KiB pieces
// the growth is a few tens of MB.
TEST(SentencePieceTokenizerTest, FiveMegabyteLineEncodesInBoundedMemory) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  auto tok = load_or_die(dir + "/llama2_tokenizer/tokenizer.model");
  ASSERT_NE(tok, nullptr);
  const std::string corpus = read_binary_file(dir + "/corpus/tinyshakespeare.txt");
  std::string line;
  while (line.size() < (size_t{5} << 20)) line += corpus;
  line.resize(size_t{5} << 20);
  for (char& c : line) c = c == '\n' ? ' ' : c;  // one JSONL line's text
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    auto hwm_kb = [] {
      std::ifstream in("/proc/self/status");
      std::string key;
      long value = 0;
      while (in >> key) {
        if (key == "VmHWM:") {
          in >> value;
          return value;
        }
      }
      return -1L;
    };
    // A fresh high-water mark: the child's starts at what it shares with us.
    std::ofstream("/proc/self/clear_refs") << "5";
    const long before = hwm_kb();
    const size_t n = tok->encode(line).size();
    const long after = hwm_kb();
    const std::string report = std::to_string(after - before) + " " + std::to_string(n);
    (void)!write(fds[1], report.data(), report.size());
    _exit(0);
  }
  close(fds[1]);
  char buf[64] = {};
  const ssize_t got = read(fds[0], buf, sizeof(buf) - 1);
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_GT(got, 0);
  long growth_kb = 0, tokens = 0;
  ASSERT_EQ(std::sscanf(buf, "%ld %ld", &growth_kb, &tokens), 2) << buf;
  std::cout << "5 MB line: " << tokens << " tokens, peak RSS growth " << growth_kb / 1024 << " MB\n";
  EXPECT_GT(tokens, 1000000);
  EXPECT_LT(growth_kb, 200 * 1024) << "peak RSS grew by " << growth_kb / 1024 << " MB";
}

// A model that cannot be encoded in pieces (here tok512 turned into a unigram
// model) has a text limit, and a longer record is refused with file:line.
TEST(SentencePieceTokenizerTest, UnchunkableModelRefusesLongRecords) {
  const std::string dir = shared_assets_dir();
  if (dir.empty()) GTEST_SKIP() << kNoAssetsReason;
  const std::string tmp = make_temp_dir("spm_unigram_");
  // A second trainer_spec with model_type = UNIGRAM merges into the first.
  write_binary_file(tmp + "/unigram.model",
                    read_binary_file(dir + "/llama2c_stories260K/tok512.model") + std::string("\x12\x02\x18\x01", 4));
  SentencePieceOptions opts;
  opts.max_unchunked_bytes = 100;
  auto tok = SentencePieceTokenizer::create(tmp + "/unigram.model", opts);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->unchunked_reason(), "a unigram model");
  EXPECT_EQ((*tok)->max_text_bytes(), 100u);
  EXPECT_TRUE((*tok)->cuts(std::string(1000, 'a')).empty());
  DataOptions data;
  data.seq_len = 8;
  DataStats stats;
  const std::string content = "{\"text\": \"a short story\"}\n{\"text\": \"" + std::string(200, 'b') + "\"}\n";
  auto docs = read_documents(content, "long.jsonl", **tok, data, &stats);
  ASSERT_FALSE(docs.ok());
  EXPECT_EQ(docs.status().message(),
            "long.jsonl:2: text of 200 bytes is longer than the 100 bytes this sentencepiece tokenizer encodes in "
            "bounded memory");
  data.on_bad = DataOptions::OnBadRecord::kSkip;
  stats = DataStats();
  docs = read_documents(content, "long.jsonl", **tok, data, &stats);
  ASSERT_TRUE(docs.ok()) << docs.status();
  EXPECT_EQ(docs->size(), 1u);
  EXPECT_EQ(stats.skipped_of(BadRecord::kTooLarge), 1);
  EXPECT_NE(stats.summary().find("1 too large to tokenize"), std::string::npos) << stats.summary();
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
