//
// The tokenizer interface every model and dataset codes against, and
// load_tokenizer(), which picks the implementation from a file or a model
// directory by looking at the content:
//
//   kind            files                                  implementation
//   sentencepiece   tokenizer.model / *.model (LLaMA)      sentencepiece_tokenizer.h (dlopen'ed shim)
//   tokenizer_json  tokenizer.json (a BPE model: Llama 3,  bpe_tokenizer.h over data/hf/ (the HF
//                   Qwen2.5, Mistral, TinyLlama, SmolLM)   tokenizers pipeline)
//   gpt2_bpe        vocab.json + merges.txt,               bpe_tokenizer.h
//                   encoder.json + vocab.bpe
//   llama2c         tokenizer.bin / tok512.bin (llama2.c)   llama2c_tokenizer.h (run.c's algorithm)
//
// Conventions shared by all implementations:
//   - encode() returns ids only for the text: it never adds BOS/EOS (callers
//     prepend bos_id() when add_bos_by_default(), or ask for
//     EncodeOptions::add_special_tokens);
//   - special tokens in the text: a tokenizer.json's added tokens are matched
//     in the text, so "<|eot_id|>" in the input becomes id 128009, as Hugging
//     Face tokenizers does. TokenizerOptions / EncodeOptions
//     split_special_tokens keeps the text of special tokens as ordinary text,
//     so that untrusted data cannot inject control tokens. The other formats
//     have no added tokens and always read such text as text;
//   - decode() drops BOS/EOS/control ids and ids outside [0, vocab_size());
//   - all methods are const and safe to call from several threads at once.
//
//   PEFT_ASSIGN_OR_RETURN(std::unique_ptr<peft::data::Tokenizer> tok,
//                         peft::data::load_tokenizer("/models/llama2"));
//   std::vector<int32_t> ids = tok->encode("Once upon a time");
//   if (tok->add_bos_by_default()) ids.insert(ids.begin(), tok->bos_id());
#ifndef PEFT_DATA_TOKENIZER_H_
#define PEFT_DATA_TOKENIZER_H_

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace peft::data {

/// Options fixed when a tokenizer is loaded.
struct TokenizerOptions {
  /// Read the text of special tokens ("<|eot_id|>", "</s>") in the input as
  /// ordinary text instead of mapping it to the token's id (HF's
  /// split_special_tokens).
  bool split_special_tokens = false;
};

/// Options of one encode() call.
struct EncodeOptions {
  /// Read special-token text as ordinary text in this call, whatever the
  /// tokenizer's own TokenizerOptions say.
  bool split_special_tokens = false;
  /// Add the special tokens the tokenizer puts around a sequence (BOS first
  /// when add_bos_by_default(); a tokenizer.json's post-processor).
  bool add_special_tokens = false;
};

/// A text <-> token id mapping. See the file comment for the conventions all
/// implementations follow.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  /// Token ids of `text` (UTF-8; invalid UTF-8 is tolerated, never a crash).
  /// Never adds BOS/EOS.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;

  /// encode() with per-call options. The default suits tokenizers without
  /// added tokens: it prepends BOS for add_special_tokens when
  /// add_bos_by_default().
  virtual std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options) const {
    std::vector<int32_t> ids = encode(text);
    if (options.add_special_tokens && add_bos_by_default() && bos_id() >= 0) ids.insert(ids.begin(), bos_id());
    return ids;
  }

  /// Text of `ids` as bytes; skips BOS/EOS/control ids and out-of-range ids.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;

  /// Number of ids (one past the largest valid id).
  virtual int32_t vocab_size() const = 0;

  /// Beginning-of-sequence id, -1 when none.
  virtual int32_t bos_id() const = 0;

  /// End-of-sequence id, -1 when none.
  virtual int32_t eos_id() const = 0;

  /// Padding id, -1 when none.
  virtual int32_t pad_id() const = 0;

  /// Whether sequences conventionally start with bos_id(): true for
  /// sentencepiece and llama2c (LLaMA), false for GPT-2 BPE.
  virtual bool add_bos_by_default() const = 0;

  /// The vocabulary entry of `id` in the tokenizer's own spelling ("▁the" for
  /// sentencepiece, "Ġthe" for GPT-2 BPE, " the" for llama2c); "" when out of
  /// range.
  virtual std::string id_to_piece(int32_t id) const = 0;

  /// The id of the added token spelled exactly `text` ("<|eot_id|>",
  /// "<|im_start|>"), i.e. text that encode() maps to that one id; -1 when
  /// the tokenizer has no such token (formats without added tokens).
  virtual int32_t added_token_id(std::string_view text) const { return -1; }

  /// The Jinja chat template shipped with the tokenizer (chat_template.jinja
  /// beside it, else tokenizer_config.json's "chat_template"); "" when none.
  /// data/chat_template.h recognises the common layouts in it.
  virtual std::string chat_template() const { return ""; }

  /// The longest text (in bytes) encode() takes in bounded memory; callers
  /// refuse longer ones (data/records.h names the record). Unlimited unless
  /// an implementation says otherwise (a sentencepiece model that cannot be
  /// encoded in pieces).
  virtual size_t max_text_bytes() const { return std::numeric_limits<size_t>::max(); }

  /// "sentencepiece", "tokenizer_json", "gpt2_bpe" or "llama2c".
  virtual std::string kind() const = 0;
};

/// Loads a tokenizer from a file or a model directory.
///
/// Directory: the first of tokenizer.json, tokenizer.model,
/// vocab.json + merges.txt, encoder.json + vocab.bpe, tokenizer.bin that
/// exists (tokenizer.json first, as transformers' AutoTokenizer does). File: the content is sniffed (sentencepiece
/// ModelProto, HF tokenizer.json, a vocab.json/encoder.json with merges.txt/vocab.bpe beside it, llama2.c
/// tokenizer.bin); the file name does not matter.
///
/// Errors: NotFoundError when `path` does not exist; InvalidArgumentError
/// naming the path and the problem for a file of the wrong kind, a corrupt
/// file, an unsupported tokenizer.json component (named), or a directory
/// without a tokenizer; FailedPreconditionError when a sentencepiece model
/// needs the shim library and it cannot be found.
absl::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path,
                                                          const TokenizerOptions& options = {});

}  // namespace peft::data

#endif  // PEFT_DATA_TOKENIZER_H_
