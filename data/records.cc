#include "data/records.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "data/chat_template.h"
#include "peft/core/status.h"

namespace peft::data {
namespace {

using json = nlohmann::json;
using Format = DataOptions::Format;

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
  if (j->contains("instruction")) return Format::kInstruction;
  return j->contains("messages") ? Format::kChat : Format::kJsonlText;
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
  // `chat` is the resolved template of chat records (null for other formats).
  RecordReader(const Tokenizer& tok, const DataOptions& opts, const ChatTemplate* chat)
      : tok_(tok),
        opts_(opts),
        chat_(chat),
        bos_(opts.add_bos && tok.bos_id() >= 0 && tok.add_bos_by_default() ? tok.bos_id() : -1),
        eos_(opts.add_eos && tok.eos_id() >= 0 ? tok.eos_id() : -1) {
    enc_.split_special_tokens = opts.split_special_tokens;
  }

  Record text(std::string_view text) const {
    if (std::optional<Record> big = too_large(text.size(), "text")) return *std::move(big);
    Record r;
    append(&r.doc, bos_, 0);
    append(&r.doc, tok_.encode(text, enc_), 1);
    append(&r.doc, eos_, 1);
    return r;
  }

  Record chat(std::string_view line) const {
    // The record's line bounds the text of any run of its messages.
    if (std::optional<Record> big = too_large(line.size(), "chat record")) return *std::move(big);
    std::string error;
    std::optional<json> j = parse_object(line, &error);
    if (!j.has_value()) return reject(BadRecord::kMalformedJson, error);
    auto list = j->find("messages");
    if (list == j->end()) return reject(BadRecord::kMissingField, "missing field \"messages\"");
    if (!list->is_array()) {
      return reject(BadRecord::kWrongType, absl::StrCat("\"messages\" is a ", list->type_name(), ", expected a list"));
    }
    if (list->empty()) return reject(BadRecord::kBadConversation, "\"messages\" is empty");
    std::vector<ChatMessage> messages;
    bool has_assistant = false;
    for (size_t i = 0; i < list->size(); ++i) {
      const json& m = (*list)[i];
      if (!m.is_object()) {
        return reject(BadRecord::kWrongType,
                      absl::StrCat("messages[", i, "] is a ", m.type_name(), ", expected an object"));
      }
      ChatMessage msg;
      for (auto [key, out] : {std::pair<const char*, std::string*>{"role", &msg.role}, {"content", &msg.content}}) {
        auto it = m.find(key);
        if (it == m.end() || it->is_null()) {
          return reject(BadRecord::kMissingField, absl::StrCat("messages[", i, "]: missing field \"", key, "\""));
        }
        if (!it->is_string()) {
          return reject(BadRecord::kWrongType,
                        absl::StrCat("messages[", i, "]: \"", key, "\" is a ", it->type_name(), ", expected a string"));
        }
        *out = it->get<std::string>();
      }
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
        return reject(BadRecord::kBadConversation, absl::StrCat("messages[", i, "]: unknown role \"", msg.role,
                                                                "\" (expected system, user or assistant)"));
      }
      has_assistant = has_assistant || msg.role == "assistant";
      messages.push_back(std::move(msg));
    }
    if (!has_assistant) return reject(BadRecord::kBadConversation, "no assistant turn (nothing to learn from)");
    ChatRenderOptions ro;
    ro.split_special_tokens = opts_.split_special_tokens;
    absl::StatusOr<RenderedChat> rendered = render_chat(*chat_, messages, tok_, ro);
    if (!rendered.ok()) return reject(BadRecord::kBadConversation, std::string(rendered.status().message()));
    Record r;
    r.doc.tokens = std::move(rendered->ids);
    r.doc.targets = std::move(rendered->targets);
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
    if (std::optional<Record> big = too_large(prompt.size(), "prompt")) return *std::move(big);
    if (std::optional<Record> big = too_large(fields[2].size(), "\"output\"")) return *std::move(big);
    Record r;
    append(&r.doc, bos_, 0);
    append(&r.doc, tok_.encode(prompt, enc_), 0);
    append(&r.doc, tok_.encode(fields[2], enc_), 1);
    append(&r.doc, eos_, 1);
    return r;
  }

 private:
  // A kTooLarge record when `bytes` of text exceed what the tokenizer encodes
  // in bounded memory.
  std::optional<Record> too_large(size_t bytes, const char* what) const {
    if (bytes <= tok_.max_text_bytes()) return std::nullopt;
    return reject(BadRecord::kTooLarge,
                  absl::StrCat(what, " of ", bytes, " bytes is longer than the ", tok_.max_text_bytes(), " bytes this ",
                               tok_.kind(), " tokenizer encodes in bounded memory"));
  }

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
  const ChatTemplate* chat_;
  const int32_t bos_;
  const int32_t eos_;
  EncodeOptions enc_;
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
                                                 const ChatTemplate* chat, ProgressMeter* meter, DataStats* stats) {
  RecordReader reader(tok, opts, chat);
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
      if (format == Format::kChat) return handle(reader.chat(line), lineno);
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
absl::StatusOr<std::vector<Document>> read_all(std::string_view content, const std::string& name, Format format,
                                               const Tokenizer& tok, const DataOptions& opts, const ChatTemplate* chat,
                                               DataStats* stats) {
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
                                chat, &meter, &pieces[i].stats);
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
}  // namespace

const char* format_name(Format format) {
  switch (format) {
    case Format::kAuto: return "auto";
    case Format::kJsonlText: return "jsonl_text";
    case Format::kPlainText: return "plain_text";
    case Format::kInstruction: return "instruction";
    case Format::kChat: return "chat";
  }
  return "?";
}
absl::Status DataOptions::validate() const {
  if (seq_len < 1 || seq_len > DataOptions::kMaxSeqLen) {
    return absl::InvalidArgumentError(
        absl::StrCat("DataOptions.seq_len = ", seq_len, " must be in [1, ", DataOptions::kMaxSeqLen, "]"));
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
  if (!chat_template.empty() && chat_template != "auto" && !chat_template_by_name(chat_template).ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("DataOptions.chat_template: ", chat_template_by_name(chat_template).status().message()));
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
    case BadRecord::kBadConversation: return "bad conversation";
    case BadRecord::kTooLarge: return "too large to tokenize";
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

absl::StatusOr<std::vector<Document>> read_documents(std::string_view content, const std::string& name,
                                                     const Tokenizer& tokenizer, const DataOptions& options,
                                                     DataStats* stats) {
  PEFT_RETURN_IF_ERROR(options.validate());
  if (tokenizer.vocab_size() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": tokenizer has an empty vocabulary"));
  }
  if (content.substr(0, 3) == "\xEF\xBB\xBF") content.remove_prefix(3);  // UTF-8 byte order mark
  if (is_blank(content)) return absl::InvalidArgumentError(absl::StrCat(name, ": empty file (no records)"));
  stats->format = options.format == Format::kAuto ? detect_format(content, name) : options.format;
  std::optional<ChatTemplate> chat;
  if (stats->format == Format::kChat) {
    absl::StatusOr<ChatTemplate> t = resolve_chat_template(options.chat_template, tokenizer);
    if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(name, ": chat records: ", t.status().message()));
    // A template that needs tokens this tokenizer lacks fails every record
    // alike: say so once, before reading.
    absl::StatusOr<RenderedChat> probe =
        render_chat(*t, {{"user", "a"}, {"assistant", "b"}}, tokenizer, ChatRenderOptions());
    if (!probe.ok())
      return absl::InvalidArgumentError(absl::StrCat(name, ": chat records: ", probe.status().message()));
    chat = *t;
  }
  PEFT_ASSIGN_OR_RETURN(std::vector<Document> docs,
                        read_all(content, name, stats->format, tokenizer, options, chat ? &*chat : nullptr, stats));
  if (docs.empty()) {
    std::string why = stats->skipped_total() > 0 ? absl::StrCat("; first: ", stats->skipped_messages.front()) : "";
    return absl::InvalidArgumentError(absl::StrCat(name, ": no usable records (", stats->records, " read, ",
                                                   stats->skipped_total(), " skipped, ", stats->empty_documents,
                                                   " empty)", why));
  }
  return docs;
}

}  // namespace peft::data
