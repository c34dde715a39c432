#include "data/dataset.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

using json = nlohmann::json;
using Format = DataOptions::Format;

constexpr int64_t kMaxSeqLen = int64_t{1} << 24;
// Salts keep the split and the epoch shuffles independent for one seed.
constexpr uint64_t kSplitSalt = 0x9b1c3a4e2f0d5c71ULL;
constexpr uint64_t kShuffleSalt = 0x2545f4914f6cdd1dULL;

// SplitMix64 (Steele et al. 2014): fully specified, so orders agree on every
// platform, unlike std::shuffle with std::uniform_int_distribution.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    const uint64_t z = state_;
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(z);  // == the reference next(): finalise(state += golden)
  }
  // Uniform in [0, n), n >= 1, by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};

const char* format_name(Format f) {
  switch (f) {
    case Format::kAuto: return "auto";
    case Format::kJsonlText: return "jsonl_text";
    case Format::kPlainText: return "plain_text";
    case Format::kInstruction: return "instruction";
  }
  return "?";
}

// A tokenized record before it becomes examples.
struct Document {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> targets;
  uint64_t content_hash = 0;
};

// The outcome of reading one record: a document or a reason to reject it.
struct Record {
  std::optional<BadRecord> bad;
  std::string what;
  Document doc;
};

Record reject(BadRecord kind, std::string what) {
  Record r;
  r.bad = kind;
  r.what = std::move(what);
  return r;
}

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isspace(static_cast<unsigned char>(c)); });
}

// Splits `content` into lines (without "\n" or a trailing "\r"), calling
// fn(line, lineno) with 1-based numbers; stops early when fn returns false.
template <typename Fn>
absl::Status for_each_line(std::string_view content, Fn&& fn) {
  int64_t lineno = 0;
  size_t pos = 0;
  while (pos < content.size()) {
    size_t end = content.find('\n', pos);
    if (end == std::string_view::npos) end = content.size();
    std::string_view line = content.substr(pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    PEFT_RETURN_IF_ERROR(fn(line, ++lineno));
    pos = end + 1;
  }
  return absl::OkStatus();
}

// Parses one JSON line; nlohmann 3.11's parser and destructor are iterative,
// so deep nesting cannot overflow the stack.
std::optional<json> parse_object(std::string_view line, std::string* error) {
  try {
    json j = json::parse(line.begin(), line.end());
    if (!j.is_object()) {
      *error = absl::StrCat("malformed JSON: expected an object, got ", j.type_name());
      return std::nullopt;
    }
    return j;
  } catch (const json::exception& e) {
    *error = absl::StrCat("malformed JSON: ", e.what());
    return std::nullopt;
  }
}

Format detect_format(std::string_view content, const std::string& name) {
  std::string ext = absl::AsciiStrToLower(std::filesystem::path(name).extension().string());
  const bool jsonl_ext = ext == ".jsonl" || ext == ".json" || ext == ".ndjson";
  if (ext == ".txt" || ext == ".text" || ext == ".md") return Format::kPlainText;
  std::string_view first;
  (void)for_each_line(content, [&](std::string_view line, int64_t) {
    if (is_blank(line)) return absl::OkStatus();
    first = line;
    return absl::CancelledError();  // stop at the first non-blank line
  });
  std::string error;
  std::optional<json> j = parse_object(first, &error);
  if (!j.has_value()) return jsonl_ext ? Format::kJsonlText : Format::kPlainText;
  return j->contains("instruction") ? Format::kInstruction : Format::kJsonlText;
}

uint64_t hash_tokens(const std::vector<int32_t>& tokens) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the ids
  for (int32_t t : tokens) {
    h ^= static_cast<uint32_t>(t);
    h *= 0x100000001b3ULL;
  }
  return h;
}

// Turns records into documents for one tokenizer and options.
class RecordReader {
 public:
  RecordReader(const Tokenizer& tok, const DataOptions& opts)
      : tok_(tok),
        opts_(opts),
        bos_(opts.add_bos && tok.bos_id() >= 0 && tok.add_bos_by_default() ? tok.bos_id() : -1),
        eos_(opts.add_eos && tok.eos_id() >= 0 ? tok.eos_id() : -1) {}

  Record text(std::string_view text) const {
    Record r;
    append(&r.doc, bos_, 0);
    append(&r.doc, tok_.encode(text), 1);
    append(&r.doc, eos_, 1);
    return r;
  }

  Record json_text(std::string_view line) const {
    std::string error;
    std::optional<json> j = parse_object(line, &error);
    if (!j.has_value()) return reject(BadRecord::kMalformedJson, error);
    const bool has_text = j->contains("text"), has_ids = j->contains("ids");
    if (has_text && has_ids) return reject(BadRecord::kWrongType, "has both \"text\" and \"ids\"; expected one");
    if (has_ids) return ids((*j)["ids"]);
    if (!has_text) return reject(BadRecord::kMissingField, "missing field \"text\" (or \"ids\")");
    const json& t = (*j)["text"];
    if (!t.is_string())
      return reject(BadRecord::kWrongType, absl::StrCat("\"text\" is a ", t.type_name(), ", expected a string"));
    return text(t.get_ref<const std::string&>());
  }

  Record instruction(std::string_view line) const {
    std::string error;
    std::optional<json> j = parse_object(line, &error);
    if (!j.has_value()) return reject(BadRecord::kMalformedJson, error);
    std::string fields[3];
    const char* names[3] = {"instruction", "input", "output"};
    for (int i = 0; i < 3; ++i) {
      auto it = j->find(names[i]);
      const bool optional = i == 1;
      if (it == j->end() || (optional && it->is_null())) {
        if (optional) continue;
        return reject(BadRecord::kMissingField, absl::StrCat("missing field \"", names[i], "\""));
      }
      if (!it->is_string()) {
        return reject(BadRecord::kWrongType,
                      absl::StrCat("\"", names[i], "\" is a ", it->type_name(), ", expected a string"));
      }
      fields[i] = it->get<std::string>();
    }
    const std::string& tmpl = fields[1].empty() ? opts_.prompt_template_no_input : opts_.prompt_template;
    // One pass: "{input}" inside the instruction text stays literal.
    const std::string prompt = absl::StrReplaceAll(tmpl, {{"{instruction}", fields[0]}, {"{input}", fields[1]}});
    Record r;
    append(&r.doc, bos_, 0);
    append(&r.doc, tok_.encode(prompt), 0);
    append(&r.doc, tok_.encode(fields[2]), 1);
    append(&r.doc, eos_, 1);
    return r;
  }

 private:
  Record ids(const json& a) const {
    if (!a.is_array())
      return reject(BadRecord::kWrongType, absl::StrCat("\"ids\" is a ", a.type_name(), ", expected an array"));
    const int64_t vocab = tok_.vocab_size();
    std::vector<int32_t> ids;
    ids.reserve(a.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const json& v = a[i];
      // Unsigned first: get<int64_t>() would wrap values above INT64_MAX.
      if (v.is_number_unsigned()) {
        const uint64_t u = v.get<uint64_t>();
        if (u >= static_cast<uint64_t>(vocab)) {
          return reject(BadRecord::kIdOutOfRange,
                        absl::StrCat("\"ids\"[", i, "] = ", u, " is outside the vocabulary [0, ", vocab, ")"));
        }
        ids.push_back(static_cast<int32_t>(u));
      } else if (v.is_number_integer()) {
        return reject(BadRecord::kIdOutOfRange, absl::StrCat("\"ids\"[", i, "] = ", v.get<int64_t>(),
                                                             " is outside the vocabulary [0, ", vocab, ")"));
      } else {
        return reject(BadRecord::kWrongType,
                      absl::StrCat("\"ids\"[", i, "] is a ", v.type_name(), ", expected an integer"));
      }
    }
    Record r;
    if (bos_ >= 0 && (ids.empty() || ids.front() != bos_)) append(&r.doc, bos_, 0);
    append(&r.doc, ids, 1);
    if (bos_ >= 0) r.doc.targets[0] = 0;
    if (eos_ >= 0 && (ids.empty() || ids.back() != eos_)) append(&r.doc, eos_, 1);
    return r;
  }

  static void append(Document* d, int32_t id, uint8_t target) {
    if (id < 0) return;
    d->tokens.push_back(id);
    d->targets.push_back(target);
  }
  static void append(Document* d, const std::vector<int32_t>& ids, uint8_t target) {
    d->tokens.insert(d->tokens.end(), ids.begin(), ids.end());
    d->targets.insert(d->targets.end(), ids.size(), target);
  }

  const Tokenizer& tok_;
  const DataOptions& opts_;
  const int32_t bos_;
  const int32_t eos_;
};

// Whether `d` can teach anything: some target, and with padding also a label
// (a target after the first token).
bool is_empty(const Document& d, bool pack) {
  const size_t first = pack ? 0 : 1;
  return d.tokens.size() <= first ||
         std::none_of(d.targets.begin() + first, d.targets.end(), [](uint8_t t) { return t != 0; });
}

// Bytes read so far across the reading threads, passed to
// DataOptions::progress about every kProgressBytes (one call at a time, with
// a growing count).
class ProgressMeter {
 public:
  ProgressMeter(const DataOptions& opts, int64_t total) : opts_(opts), total_(total) {}

  void add(int64_t bytes) {
    if (!opts_.progress) return;
    const int64_t done = done_.fetch_add(bytes) + bytes;
    if (done < next_.load()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (done < next_.load()) return;
    next_.store(done + DataOptions::kProgressBytes);
    opts_.progress(std::min(done_.load(), total_), total_);
  }

 private:
  const DataOptions& opts_;
  const int64_t total_;
  std::atomic<int64_t> done_{0};
  std::atomic<int64_t> next_{DataOptions::kProgressBytes};
  std::mutex mu_;
};

// The documents of one piece of a file: `chunk` starts after `lines_before`
// lines and, for plain text, on a paragraph boundary. Its counts go to
// `stats` (records, empty documents, skipped); bad records are handled per
// options.on_bad.
absl::StatusOr<std::vector<Document>> read_chunk(std::string_view chunk, int64_t lines_before, const std::string& name,
                                                 Format format, const Tokenizer& tok, const DataOptions& opts,
                                                 ProgressMeter* meter, DataStats* stats) {
  RecordReader reader(tok, opts);
  std::vector<Document> docs;
  auto report = [&](std::string_view line) { meter->add(static_cast<int64_t>(line.size()) + 1); };
  auto handle = [&](Record r, int64_t chunk_lineno) -> absl::Status {
    const int64_t lineno = lines_before + chunk_lineno;
    ++stats->records;
    if (!r.bad.has_value() && !opts.pack && static_cast<int64_t>(r.doc.tokens.size()) > opts.seq_len + 1) {
      r.bad = BadRecord::kTooLong;
      r.what = absl::StrCat("sample of ", r.doc.tokens.size(),
                            " tokens is longer than the context (seq_len + 1 = ", opts.seq_len + 1, ")");
    }
    if (r.bad.has_value()) {
      std::string message = absl::StrCat(name, ":", lineno, ": ", r.what);
      if (opts.on_bad == DataOptions::OnBadRecord::kStop) return absl::InvalidArgumentError(message);
      ++stats->skipped[static_cast<int>(*r.bad)];
      if (stats->skipped_messages.size() < DataStats::kMaxSkippedMessages) {
        stats->skipped_messages.push_back(std::move(message));
      }
      return absl::OkStatus();
    }
    if (is_empty(r.doc, opts.pack)) {
      ++stats->empty_documents;
      return absl::OkStatus();
    }
    r.doc.content_hash = hash_tokens(r.doc.tokens);
    docs.push_back(std::move(r.doc));
    return absl::OkStatus();
  };

  if (format == Format::kPlainText) {
    std::string paragraph;
    int64_t first_line = 0;
    PEFT_RETURN_IF_ERROR(for_each_line(chunk, [&](std::string_view line, int64_t lineno) -> absl::Status {
      report(line);
      if (is_blank(line)) {
        if (first_line == 0) return absl::OkStatus();
        const int64_t start = first_line;
        first_line = 0;
        return handle(reader.text(paragraph), start);
      }
      if (first_line == 0) {
        first_line = lineno;
        paragraph.assign(line);
      } else {
        paragraph.append("\n").append(line);
      }
      return absl::OkStatus();
    }));
    if (first_line != 0) PEFT_RETURN_IF_ERROR(handle(reader.text(paragraph), first_line));
  } else {
    PEFT_RETURN_IF_ERROR(for_each_line(chunk, [&](std::string_view line, int64_t lineno) -> absl::Status {
      report(line);
      if (is_blank(line)) return absl::OkStatus();
      return handle(format == Format::kInstruction ? reader.instruction(line) : reader.json_text(line), lineno);
    }));
  }
  return docs;
}

// Where to cut `content` into about `pieces` chunks: after a line end, and
// for plain text after a blank line (paragraphs never straddle two chunks).
std::vector<size_t> chunk_starts(std::string_view content, Format format, int pieces) {
  std::vector<size_t> starts = {0};
  const size_t target = content.size() / static_cast<size_t>(pieces) + 1;
  size_t pos = 0;
  while (true) {
    size_t cut = pos + target;
    if (cut >= content.size()) break;
    cut = content.find('\n', cut);
    if (cut == std::string_view::npos) break;
    ++cut;  // the start of the next line
    if (format == Format::kPlainText) {
      // Move on to just after the next blank line.
      while (cut < content.size()) {
        size_t end = content.find('\n', cut);
        if (end == std::string_view::npos) end = content.size();
        const bool blank = is_blank(content.substr(cut, end - cut));
        cut = std::min(end + 1, content.size());
        if (blank) break;
      }
      if (cut >= content.size()) break;
    }
    starts.push_back(cut);
    pos = cut;
  }
  return starts;
}

// The documents of `content` in file order, read by options.threads threads
// (each a run of whole lines; the result does not depend on the count).
absl::StatusOr<std::vector<Document>> read_documents(std::string_view content, const std::string& name, Format format,
                                                     const Tokenizer& tok, const DataOptions& opts, DataStats* stats) {
  ProgressMeter meter(opts, static_cast<int64_t>(content.size()));
  int threads = opts.threads > 0 ? opts.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // Small files are not worth the threads.
  if (content.size() < 2 * static_cast<size_t>(DataOptions::kProgressBytes)) threads = 1;
  const std::vector<size_t> starts = chunk_starts(content, format, threads == 1 ? 1 : 4 * threads);
  const size_t n = starts.size();
  std::vector<int64_t> lines_before(n, 0);
  for (size_t i = 1; i < n; ++i) {
    lines_before[i] = lines_before[i - 1] + std::count(content.begin() + static_cast<std::ptrdiff_t>(starts[i - 1]),
                                                       content.begin() + static_cast<std::ptrdiff_t>(starts[i]), '\n');
  }
  struct Piece {
    absl::StatusOr<std::vector<Document>> docs = std::vector<Document>();
    DataStats stats;
  };
  std::vector<Piece> pieces(n);
  auto work = [&](size_t i) {
    const size_t end = i + 1 < n ? starts[i + 1] : content.size();
    pieces[i].docs = read_chunk(content.substr(starts[i], end - starts[i]), lines_before[i], name, format, tok, opts,
                                &meter, &pieces[i].stats);
  };
  if (n == 1) {  // always so for one thread
    for (size_t i = 0; i < n; ++i) work(i);
  } else {
    std::atomic<size_t> next{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < std::min<int>(threads, static_cast<int>(n)); ++t) {
      pool.emplace_back([&] {
        for (size_t i = next++; i < n; i = next++) work(i);
      });
    }
    for (std::thread& t : pool) t.join();
  }
  // In file order: the first error is the one a single thread would report.
  std::vector<Document> docs;
  for (Piece& p : pieces) {
    if (!p.docs.ok()) return p.docs.status();
    stats->records += p.stats.records;
    stats->empty_documents += p.stats.empty_documents;
    for (int k = 0; k < kNumBadRecordKinds; ++k) stats->skipped[k] += p.stats.skipped[k];
    for (std::string& m : p.stats.skipped_messages) {
      if (stats->skipped_messages.size() < DataStats::kMaxSkippedMessages)
        stats->skipped_messages.push_back(std::move(m));
    }
    std::move(p.docs->begin(), p.docs->end(), std::back_inserter(docs));
  }
  return docs;
}

// True for the documents held out: the n_val smallest keys hash(seed, content).
std::vector<bool> choose_validation(const std::vector<Document>& docs, const DataOptions& opts) {
  const int64_t n = static_cast<int64_t>(docs.size());
  std::vector<bool> val(n, false);
  if (opts.validation_fraction <= 0.0 || n < 2) return val;
  const int64_t n_val = std::clamp<int64_t>(std::llround(opts.validation_fraction * n), 1, n - 1);
  const uint64_t salt = mix64(opts.seed ^ kSplitSalt);
  std::vector<std::pair<uint64_t, int64_t>> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = {mix64(salt ^ docs[i].content_hash), i};
  std::nth_element(keys.begin(), keys.begin() + n_val, keys.end());
  for (int64_t i = 0; i < n_val; ++i) val[keys[i].second] = true;
  return val;
}

// Packs documents into windows of seq_len + 1 with stride seq_len.
std::vector<Example> pack(const std::vector<const Document*>& docs, int64_t seq_len, int64_t* dropped) {
  std::vector<int32_t> stream;
  std::vector<uint8_t> targets;
  for (const Document* d : docs) {
    stream.insert(stream.end(), d->tokens.begin(), d->tokens.end());
    targets.insert(targets.end(), d->targets.begin(), d->targets.end());
  }
  const int64_t s = static_cast<int64_t>(stream.size());
  const int64_t windows = s >= seq_len + 1 ? (s - 1) / seq_len : 0;
  *dropped += windows > 0 ? s - (windows * seq_len + 1) : s;
  std::vector<Example> out(windows);
  for (int64_t k = 0; k < windows; ++k) {
    const int64_t b = k * seq_len, e = b + seq_len + 1;
    out[k].tokens.assign(stream.begin() + b, stream.begin() + e);
    out[k].targets.assign(targets.begin() + b, targets.begin() + e);
  }
  return out;
}

std::vector<Example> one_per_document(const std::vector<const Document*>& docs) {
  std::vector<Example> out;
  out.reserve(docs.size());
  for (const Document* d : docs) out.push_back({d->tokens, d->targets});
  return out;
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

}  // namespace

absl::Status DataOptions::validate() const {
  if (seq_len < 1 || seq_len > kMaxSeqLen) {
    return absl::InvalidArgumentError(
        absl::StrCat("DataOptions.seq_len = ", seq_len, " must be in [1, ", kMaxSeqLen, "]"));
  }
  if (!(validation_fraction >= 0.0 && validation_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DataOptions.validation_fraction = ", validation_fraction, " must be in [0, 1)"));
  }
  if (prompt_template.find("{instruction}") == std::string::npos) {
    return absl::InvalidArgumentError("DataOptions.prompt_template has no \"{instruction}\"");
  }
  if (prompt_template_no_input.find("{instruction}") == std::string::npos) {
    return absl::InvalidArgumentError("DataOptions.prompt_template_no_input has no \"{instruction}\"");
  }
  return absl::OkStatus();
}

const char* bad_record_name(BadRecord kind) {
  switch (kind) {
    case BadRecord::kMalformedJson: return "malformed JSON";
    case BadRecord::kMissingField: return "missing field";
    case BadRecord::kWrongType: return "wrong field type";
    case BadRecord::kTooLong: return "longer than the context";
    case BadRecord::kIdOutOfRange: return "id outside the vocabulary";
  }
  return "?";
}

int64_t DataStats::skipped_total() const {
  int64_t total = 0;
  for (int64_t s : skipped) total += s;
  return total;
}

std::string DataStats::summary() const {
  std::string out =
      absl::StrCat(format_name(format), ": ", records, " records -> ", train_documents, " train / ",
                   validation_documents, " validation documents, ", train_tokens, " / ", validation_tokens, " tokens, ",
                   train_examples, " / ", validation_examples, " examples");
  if (dropped_tail_tokens > 0) absl::StrAppend(&out, "; ", dropped_tail_tokens, " tail tokens dropped");
  if (empty_documents > 0) absl::StrAppend(&out, "; ", empty_documents, " empty documents dropped");
  std::vector<std::string> skips;
  for (int k = 0; k < kNumBadRecordKinds; ++k) {
    if (skipped[k] > 0) skips.push_back(absl::StrCat(skipped[k], " ", bad_record_name(static_cast<BadRecord>(k))));
  }
  if (!skips.empty()) absl::StrAppend(&out, "; skipped ", absl::StrJoin(skips, ", "));
  // Where: the first kMaxSkippedMessages skipped records, one "path:line: what" a line.
  for (const std::string& m : skipped_messages) absl::StrAppend(&out, "\n  skipped ", m);
  const int64_t unlisted = skipped_total() - static_cast<int64_t>(skipped_messages.size());
  if (unlisted > 0) absl::StrAppend(&out, "\n  ... and ", unlisted, " more skipped records");
  return out;
}

// ---------------------------------------------------------------------------
// Dataset

struct Dataset::Storage {
  std::vector<Example> examples;
  std::vector<int64_t> labels;  // [N] targets after the first token of each example
};

struct Dataset::OrderCache {
  std::mutex mu;
  int64_t epoch = -1;
  std::shared_ptr<const std::vector<int64_t>> order;
};

absl::StatusOr<Dataset> Dataset::create(std::vector<Example> examples, int64_t seq_len, int32_t pad_id, uint64_t seed,
                                        Order order) {
  if (seq_len < 1 || seq_len > kMaxSeqLen) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: seq_len = ", seq_len, " must be in [1, ", kMaxSeqLen, "]"));
  }
  if (pad_id < 0) return absl::InvalidArgumentError(absl::StrCat("Dataset: pad_id = ", pad_id, " must be >= 0"));
  auto storage = std::make_shared<Storage>();
  storage->labels.reserve(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    const Example& e = examples[i];
    const int64_t len = static_cast<int64_t>(e.tokens.size());
    if (len < 2 || len > seq_len + 1 || e.targets.size() != e.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Dataset: example ", i, " has ", len, " tokens and ",
                                                     e.targets.size(), " targets; need 2..", seq_len + 1, " of each"));
    }
    for (int64_t t = 0; t < len; ++t) {
      if (e.tokens[t] < 0 || e.targets[t] > 1) {
        return absl::InvalidArgumentError(absl::StrCat("Dataset: example ", i, " position ", t, ": token ", e.tokens[t],
                                                       ", target ", int{e.targets[t]}));
      }
    }
    storage->labels.push_back(std::count(e.targets.begin() + 1, e.targets.end(), uint8_t{1}));
  }
  storage->examples = std::move(examples);
  Dataset d;
  d.storage_ = std::move(storage);
  d.seq_len_ = seq_len;
  d.pad_id_ = pad_id;
  d.seed_ = seed;
  d.order_ = order;
  d.cache_ = std::make_shared<OrderCache>();
  return d;
}

int64_t Dataset::size() const { return storage_ ? static_cast<int64_t>(storage_->examples.size()) : 0; }

const Example& Dataset::example(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "Dataset::example(", i, "): size is ", size());
  return storage_->examples[i];
}

std::shared_ptr<const std::vector<int64_t>> Dataset::order_of(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->epoch == epoch && cache_->order) return cache_->order;
  const int64_t n = size();
  auto order = std::make_shared<std::vector<int64_t>>(n);
  for (int64_t i = 0; i < n; ++i) (*order)[i] = i;
  if (order_ == Order::kShuffled) {
    SplitMix64 rng(mix64(mix64(seed_ ^ kShuffleSalt) ^ static_cast<uint64_t>(epoch)));
    for (int64_t i = n - 1; i > 0; --i) std::swap((*order)[i], (*order)[rng.below(static_cast<uint64_t>(i) + 1)]);
  }
  cache_->epoch = epoch;
  cache_->order = order;
  return order;
}

std::vector<int64_t> Dataset::epoch_order(int64_t epoch) const {
  if (size() == 0) return {};
  return *order_of(epoch);
}

absl::StatusOr<DataPosition> Dataset::advance(const DataPosition& pos, int64_t count) const {
  const int64_t n = size();
  if (n == 0) return absl::InvalidArgumentError("Dataset: empty");
  if (pos.epoch < 0 || pos.index < 0 || pos.index >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: position (epoch ", pos.epoch, ", index ", pos.index, ") outside [0, ", n, ")"));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("Dataset: cannot advance by ", count));
  int64_t index = 0, epoch = 0;
  if (add_overflows(pos.index, count, &index) || add_overflows(pos.epoch, index / n, &epoch)) {
    return absl::InvalidArgumentError("Dataset: position overflows int64");
  }
  return DataPosition{epoch, index % n};
}

absl::StatusOr<DataPosition> Dataset::position_at_step(int64_t step, int64_t batch_size) const {
  int64_t count = 0;
  if (step < 0 || batch_size < 1 || mul_overflows(step, batch_size, &count)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: step ", step, " x batch_size ", batch_size, " is not a valid sample count"));
  }
  return advance(DataPosition{}, count);
}

absl::StatusOr<Batch> Dataset::batch_at(const DataPosition& start, int64_t batch_size, int64_t rank,
                                        int64_t world_size) const {
  if (size() == 0) return absl::InvalidArgumentError("Dataset::batch: the dataset is empty");
  if (batch_size < 1 || world_size < 1 || rank < 0 || rank >= world_size || batch_size % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Dataset::batch: batch_size ", batch_size, ", rank ", rank,
                                                   ", world_size ", world_size,
                                                   ": need batch_size >= 1 divisible by world_size and 0 <= rank < "
                                                   "world_size"));
  }
  // The last row's position must exist too, so the iterator can always advance.
  PEFT_RETURN_IF_ERROR(advance(start, batch_size).status());
  const int64_t local = batch_size / world_size;
  std::vector<int64_t> global_rows(batch_size);
  DataPosition pos = start;
  std::shared_ptr<const std::vector<int64_t>> order = order_of(pos.epoch);
  int64_t global_tokens = 0;
  for (int64_t j = 0; j < batch_size; ++j) {
    global_rows[j] = (*order)[pos.index];
    global_tokens += storage_->labels[global_rows[j]];
    if (++pos.index == size()) {
      pos = {pos.epoch + 1, 0};
      order = order_of(pos.epoch);
    }
  }
  PEFT_ASSIGN_OR_RETURN(Batch b, collate(std::vector<int64_t>(global_rows.begin() + rank * local,
                                                              global_rows.begin() + (rank + 1) * local)));
  b.global_tokens = global_tokens;
  return b;
}

absl::StatusOr<Batch> Dataset::batch(int64_t step, int64_t batch_size, int64_t rank, int64_t world_size) const {
  PEFT_ASSIGN_OR_RETURN(DataPosition start, position_at_step(step, batch_size));
  return batch_at(start, batch_size, rank, world_size);
}

absl::StatusOr<Batch> Dataset::collate(const std::vector<int64_t>& indices) const {
  const int64_t b = static_cast<int64_t>(indices.size()), t = seq_len_;
  for (int64_t i : indices) {
    if (i < 0 || i >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("Dataset::collate: index ", i, " outside [0, ", size(), ")"));
    }
  }
  Batch out;
  out.input_ids = at::empty({b, t}, at::kLong);       // [B, T]
  out.labels = at::empty({b, t}, at::kLong);          // [B, T]
  out.attention_mask = at::empty({b, t}, at::kLong);  // [B, T]
  int64_t* ids = out.input_ids.data_ptr<int64_t>();
  int64_t* labels = out.labels.data_ptr<int64_t>();
  int64_t* mask = out.attention_mask.data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const Example& e = storage_->examples[indices[r]];
    const int64_t n = static_cast<int64_t>(e.tokens.size()) - 1;  // real input positions
    for (int64_t p = 0; p < t; ++p) {
      const int64_t k = r * t + p;
      const bool real = p < n;
      ids[k] = real ? e.tokens[p] : pad_id_;
      labels[k] = real && e.targets[p + 1] ? e.tokens[p + 1] : kIgnoreIndex;
      mask[k] = real ? 1 : 0;
    }
    out.tokens += storage_->labels[indices[r]];
  }
  out.global_tokens = out.tokens;
  out.example_indices = indices;
  return out;
}

// ---------------------------------------------------------------------------
// BatchIterator

BatchIterator::BatchIterator(Dataset dataset, int64_t batch_size, int64_t rank, int64_t world_size)
    : dataset_(std::move(dataset)), batch_size_(batch_size), rank_(rank), world_size_(world_size) {}

absl::StatusOr<Batch> BatchIterator::next() {
  PEFT_ASSIGN_OR_RETURN(Batch b, dataset_.batch_at(position_, batch_size_, rank_, world_size_));
  PEFT_ASSIGN_OR_RETURN(position_, dataset_.advance(position_, batch_size_));
  return b;
}

absl::Status BatchIterator::restore(const DataPosition& pos) {
  PEFT_RETURN_IF_ERROR(dataset_.advance(pos, 0).status());
  position_ = pos;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Loading

absl::StatusOr<DataSplits> load_dataset_from_memory(std::string_view content, const std::string& name,
                                                    const Tokenizer& tokenizer, const DataOptions& options) {
  PEFT_RETURN_IF_ERROR(options.validate());
  if (tokenizer.vocab_size() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": tokenizer has an empty vocabulary"));
  }
  if (content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);  // UTF-8 byte order mark
  if (is_blank(content)) return absl::InvalidArgumentError(absl::StrCat(name, ": empty file (no records)"));

  DataSplits out;
  DataStats& stats = out.stats;
  stats.format = options.format == Format::kAuto ? detect_format(content, name) : options.format;
  PEFT_ASSIGN_OR_RETURN(std::vector<Document> docs,
                        read_documents(content, name, stats.format, tokenizer, options, &stats));
  if (docs.empty()) {
    std::string why = stats.skipped_total() > 0 ? absl::StrCat("; first: ", stats.skipped_messages.front()) : "";
    return absl::InvalidArgumentError(absl::StrCat(name, ": no usable records (", stats.records, " read, ",
                                                   stats.skipped_total(), " skipped, ", stats.empty_documents,
                                                   " empty)", why));
  }

  const std::vector<bool> is_val = choose_validation(docs, options);
  std::vector<const Document*> train_docs, val_docs;
  for (size_t i = 0; i < docs.size(); ++i) {
    (is_val[i] ? val_docs : train_docs).push_back(&docs[i]);
    (is_val[i] ? stats.validation_tokens : stats.train_tokens) += static_cast<int64_t>(docs[i].tokens.size());
  }
  stats.train_documents = static_cast<int64_t>(train_docs.size());
  stats.validation_documents = static_cast<int64_t>(val_docs.size());

  std::vector<Example> train_examples, val_examples;
  if (options.pack) {
    train_examples = pack(train_docs, options.seq_len, &stats.dropped_tail_tokens);
    val_examples = pack(val_docs, options.seq_len, &stats.dropped_tail_tokens);
  } else {
    train_examples = one_per_document(train_docs);
    val_examples = one_per_document(val_docs);
  }
  if (train_examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the training documents hold ", stats.train_tokens,
                                                   " tokens, fewer than seq_len + 1 = ", options.seq_len + 1,
                                                   " needed for one packed example"));
  }
  stats.train_examples = static_cast<int64_t>(train_examples.size());
  stats.validation_examples = static_cast<int64_t>(val_examples.size());
  docs.clear();

  const int32_t pad = tokenizer.pad_id() >= 0 ? tokenizer.pad_id() : std::max(tokenizer.eos_id(), 0);
  PEFT_ASSIGN_OR_RETURN(out.train, Dataset::create(std::move(train_examples), options.seq_len, pad, options.seed,
                                                   Dataset::Order::kShuffled));
  PEFT_ASSIGN_OR_RETURN(out.validation, Dataset::create(std::move(val_examples), options.seq_len, pad, options.seed,
                                                        Dataset::Order::kSequential));
  return out;
}

absl::StatusOr<DataSplits> load_dataset(const std::string& path, const Tokenizer& tokenizer,
                                        const DataOptions& options) {
  PEFT_RETURN_IF_ERROR(options.validate());
  PEFT_ASSIGN_OR_RETURN(std::string content, io::read_file(path));
  return load_dataset_from_memory(content, path, tokenizer, options);
}

}  // namespace peft::data
