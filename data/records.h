//
// Record parsing, the first half of the data pipeline (data/dataset.h is the
// second): a file of records -> tokenized documents with per-token target
// flags. `peft eval` reads its --data through here too, so training and
// evaluation accept the same files by the same rules.
//
// Input formats (DataOptions::Format), one record per line unless noted:
//   kJsonlText    {"text": "..."}  or the pre-tokenized form {"ids": [3, 17, ...]}
//                 (the output of `peft tokenize`). Every token is a target.
//   kInstruction  {"instruction": "...", "input": "...", "output": "..."}; "input"
//                 may be missing, null or "". The prompt is rendered from
//                 prompt_template (prompt_template_no_input when input is empty)
//                 and tokenized separately from the output, so the boundary is
//                 exact: prompt tokens are never targets; output tokens and the
//                 EOS are.
//   kChat         {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
//                 rendered with a chat template (data/chat_template.h: llama3,
//                 chatml, mistral or plain; chat_template "auto" takes the
//                 tokenizer's own). Template tokens go in as ids; the targets are
//                 the assistant turns' content and closing token. The template
//                 places BOS/EOS itself: add_bos / add_eos do not apply. A
//                 conversation needs an assistant turn.
//   kPlainText    UTF-8 text split into documents at blank lines (lines that are
//                 empty or whitespace only); a document keeps its inner line
//                 breaks. Chosen over "the whole file is one document" so that the
//                 validation split by document works on a single text file
//                 (tinyshakespeare gives ~7k speeches). Every token is a target.
//   kAuto         by extension: .jsonl/.json/.ndjson -> JSON lines, .txt/.text/.md
//                 -> plain text; any other name is JSON lines when its first
//                 non-blank line parses as a JSON object, else plain text. JSON
//                 lines are kInstruction when that first line has an
//                 "instruction" key, kChat when it has "messages", else
//                 kJsonlText. A JSON *array* file (one big [...]) is not supported.
//
// Special-token text ("<|eot_id|>") inside record text maps to the token's id
// where the tokenizer matches added tokens (tokenizer.json), as Hugging Face
// does; split_special_tokens keeps it as ordinary text, which training on
// untrusted text needs.
//
// Documents: BOS + tokens + EOS. BOS is added when add_bos, the tokenizer has
// one and its convention is to add it (add_bos_by_default(): LLaMA yes, GPT-2
// no, where the EOS <|endoftext|> alone separates documents); EOS when add_eos
// and the tokenizer has one. A pre-tokenized {"ids"} line gets them only when
// they are not already there, so ids with or without BOS/EOS both work. BOS is
// never a target (nothing predicts the start of a document).
//
// Text longer than Tokenizer::max_text_bytes() (only a sentencepiece model
// that cannot be encoded in pieces has a limit, 1 MiB) is a bad record
// (kTooLarge) instead of an encode whose memory would grow without bound.
//
// Bad data: every problem is reported as "<path>:<line>: <what>". With
// OnBadRecord::kStop the first one is the error; with kSkip the record is
// dropped and counted by reason in DataStats. An empty file, a file with no
// usable record, and a training split too short for one example are always
// errors. Nothing here crashes on hostile input.
#ifndef PEFT_DATA_RECORDS_H_
#define PEFT_DATA_RECORDS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::data {

/// How a file becomes examples. seq_len is required; the rest has defaults.
///
///   DataOptions o;
///   o.format = DataOptions::Format::kInstruction;
///   o.seq_len = 512;
///   o.pack = false;                 // one padded example per record
///   o.on_bad = DataOptions::OnBadRecord::kSkip;
struct DataOptions {
  enum class Format { kAuto, kJsonlText, kPlainText, kInstruction, kChat };
  enum class OnBadRecord { kStop, kSkip };

  Format format = Format::kAuto;
  /// Prompt of an instruction record with a non-empty input; "{instruction}"
  /// and "{input}" are replaced in one pass (text inside the values is never
  /// re-expanded). Alpaca's template.
  std::string prompt_template = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";
  /// Prompt of an instruction record whose input is missing, null or "".
  std::string prompt_template_no_input = "### Instruction:\n{instruction}\n\n### Response:\n";
  /// Template of chat records: "auto" (the tokenizer's own chat template when
  /// it is one of the recognised layouts, plain when it has none), "llama3",
  /// "chatml", "mistral" or "plain".
  std::string chat_template = "auto";
  /// Tokenize special-token text inside records as ordinary text.
  bool split_special_tokens = false;
  /// Tokens the model sees per example (T); an example holds seq_len + 1
  /// tokens so that inputs and shifted labels both have length T. Required.
  int64_t seq_len = 0;
  /// Pack documents into full windows (true) or pad one document per example.
  bool pack = true;
  /// Prepend BOS (only where the tokenizer has one and adds it by default).
  bool add_bos = true;
  /// Append EOS (only where the tokenizer has one).
  bool add_eos = true;
  /// Share of documents held out for validation, in [0, 1).
  double validation_fraction = 0.05;
  /// Seeds the validation split and the per-epoch shuffles.
  uint64_t seed = 0;
  OnBadRecord on_bad = OnBadRecord::kStop;
  /// Threads that read and tokenize a file (0 = one per core). Files under
  /// 2 MB use one. The documents, their order and the errors do not depend
  /// on it.
  int threads = 1;
  /// Called while a file is read and tokenized, about every kProgressBytes of
  /// it: (bytes done, bytes in all). Unset: nothing is reported. Calls come
  /// one at a time, from the reading threads.
  std::function<void(int64_t done, int64_t total)> progress;
  static constexpr int64_t kProgressBytes = 1 << 20;
  /// The largest seq_len (2^24).
  static constexpr int64_t kMaxSeqLen = int64_t{1} << 24;

  /// InvalidArgumentError naming the field for seq_len outside [1, 2^24],
  /// validation_fraction outside [0, 1), a template without "{instruction}",
  /// or an unknown chat_template name.
  absl::Status validate() const;
};

/// Why a record was rejected.
enum class BadRecord {
  kMalformedJson,    // not JSON, or not a JSON object
  kMissingField,     // no "text"/"ids" (text format), "instruction"/"output", "messages", "role"/"content"
  kWrongType,        // a field of the wrong type (non-string text, non-integer id, ...)
  kTooLong,          // longer than seq_len + 1 tokens with pack = false
  kIdOutOfRange,     // a pre-tokenized id outside [0, vocab_size)
  kBadConversation,  // a chat record with an unknown role, no assistant turn, or turns its template cannot lay out
  kTooLarge,         // text longer than the tokenizer encodes in bounded memory (Tokenizer::max_text_bytes)
};
inline constexpr int kNumBadRecordKinds = 7;

/// "malformed JSON", "missing field", ...
const char* bad_record_name(BadRecord kind);

/// What load_dataset() read, kept and dropped.
struct DataStats {
  DataOptions::Format format = DataOptions::Format::kAuto;  // the format used (never kAuto)
  int64_t records = 0;                                      // non-blank lines (JSON) or paragraphs (text) read
  int64_t empty_documents = 0;                              // records with no tokens to learn from, dropped
  int64_t train_documents = 0;
  int64_t validation_documents = 0;
  int64_t train_tokens = 0;  // tokens of the kept documents, BOS/EOS included
  int64_t validation_tokens = 0;
  int64_t train_examples = 0;
  int64_t validation_examples = 0;
  int64_t dropped_tail_tokens = 0;            // pack = true: stream tails shorter than a window
  int64_t skipped[kNumBadRecordKinds] = {};   // kSkip: records dropped, by BadRecord
  std::vector<std::string> skipped_messages;  // the first kMaxSkippedMessages "path:line: what"

  static constexpr int kMaxSkippedMessages = 16;

  int64_t skipped_of(BadRecord kind) const { return skipped[static_cast<int>(kind)]; }
  int64_t skipped_total() const;
  /// One line for logs: "12000 records -> 11400 train / 600 validation documents, ...".
  std::string summary() const;
};

/// "jsonl_text", "plain_text", "instruction", "chat" ("auto" for kAuto).
const char* format_name(DataOptions::Format format);

/// A tokenized record: BOS + tokens + EOS as the options say, and which
/// tokens are targets (targets[i] == 1 when tokens[i] is predicted).
struct Document {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> targets;  // same length as tokens, 0 or 1
  uint64_t content_hash = 0;     // FNV-1a of tokens (the validation split's key)
};

/// The usable documents of `content` (a whole file called `name`) in file
/// order, read by options.threads threads. Sets stats->format (auto-detected
/// when options.format is kAuto), ->records, ->empty_documents and the
/// skipped counts. Errors: an empty file, a bad record under kStop
/// ("name:line: what"), no usable record at all, and for chat records a
/// chat template that cannot be resolved. A UTF-8 byte order mark is ignored.
absl::StatusOr<std::vector<Document>> read_documents(std::string_view content, const std::string& name,
                                                     const Tokenizer& tokenizer, const DataOptions& options,
                                                     DataStats* stats);

}  // namespace peft::data

#endif  // PEFT_DATA_RECORDS_H_
