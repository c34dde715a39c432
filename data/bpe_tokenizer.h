//
// BPE tokenizers: Hugging Face tokenizer.json files (Llama 3, Qwen2.5,
// Mistral, TinyLlama, SmolLM, GPT-2 ...) and GPT-2's vocab.json + merges.txt.
//
// Sources:
//   - a tokenizer.json whose model is {"type": "BPE"}, run as the Hugging
//     Face tokenizers library runs it (data/hf/tokenizer_json.h): added
//     tokens, normalizers, pre-tokenizers, the BPE model, post-processor and
//     decoder. The supported components are listed in data/hf/*.h; any other
//     is refused with InvalidArgumentError naming it, never approximated.
//   - encoder.json + vocab.bpe (OpenAI) or vocab.json + merges.txt: GPT-2's
//     byte-level BPE (ByteLevel pre-tokenizer with GPT-2's regex, no added
//     tokens; "<|endoftext|>" in the text is ordinary text, as in OpenAI's
//     encoder.py).
//
// Special tokens in the text: with a tokenizer.json, the text of an added
// token maps to its id ("<|eot_id|>" -> 128009), as HF does. With
// TokenizerOptions::split_special_tokens (or EncodeOptions per call), the
// text of *special* added tokens is tokenized as ordinary text instead, which
// is what training on untrusted text needs; non-special added tokens still
// match.
//
// Text is bytes: ill-formed UTF-8 never reaches a regex and never fails; with
// a byte-level tokenizer any byte string encodes and decodes back to itself.
// decode() skips special tokens and BOS/EOS/PAD, and keeps bytes that do not
// form UTF-8 as they are (HF would write U+FFFD).
//
// Special ids: when a tokenizer_config.json sits beside the loaded file, its
// bos_token / eos_token / pad_token / add_bos_token are used. Otherwise BOS is
// the first token a TemplateProcessing post-processor puts before the text
// (then add_bos_by_default() is true), else "<|endoftext|>"; EOS is the last
// token the template puts after the text, else "<|endoftext|>"; PAD is -1.
// For GPT-2 this gives BOS = EOS = 50256, no BOS by default.
#ifndef PEFT_DATA_BPE_TOKENIZER_H_
#define PEFT_DATA_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::data {

/// A BPE tokenizer from tokenizer.json or GPT-2's vocab + merges files.
class BpeTokenizer final : public Tokenizer {
 public:
  /// Loads encoder.json/vocab.json (`vocab_path`) and vocab.bpe/merges.txt
  /// (`merges_path`). NotFoundError when a file is missing;
  /// InvalidArgumentError naming the file for malformed JSON, non-integer or
  /// duplicate ids, a merge line that is not "a b", a merge whose parts are
  /// not in the vocabulary, or a vocabulary lacking one of the 256 byte
  /// symbols.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> create(const std::string& vocab_path,
                                                              const std::string& merges_path);

  /// Loads a Hugging Face tokenizer.json with a BPE model. Errors as above,
  /// plus InvalidArgumentError naming the file and the component for a model
  /// that is not BPE or any unsupported or malformed component.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> create(const std::string& tokenizer_json_path,
                                                              const TokenizerOptions& options = {});

  /// create(tokenizer_json_path, options) for the file's content already
  /// parsed as `root` (load_tokenizer() parses a JSON file once to see what
  /// it is; a Llama 3 tokenizer.json takes ~0.5 s to parse).
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> create_from_json(const nlohmann::json& root,
                                                                        const std::string& tokenizer_json_path,
                                                                        const TokenizerOptions& options);

  ~BpeTokenizer() override;

  /// The ids of `text` (see the file comment). Thread-safe.
  std::vector<int32_t> encode(std::string_view text) const override;
  /// encode() with per-call options; add_special_tokens applies the
  /// tokenizer.json post-processor (e.g. BOS first).
  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& options) const override;
  /// Bytes of `ids`, special tokens skipped.
  std::string decode(const std::vector<int32_t>& ids) const override;
  /// One past the largest id of the vocabulary and added tokens (50257 for GPT-2).
  int32_t vocab_size() const override;
  /// See the file comment; 50256 for GPT-2.
  int32_t bos_id() const override;
  /// See the file comment; 50256 for GPT-2.
  int32_t eos_id() const override;
  /// From tokenizer_config.json, else -1.
  int32_t pad_id() const override;
  /// False for GPT-2 (see the file comment for when it is true).
  bool add_bos_by_default() const override;
  /// The vocabulary spelling, e.g. "Ġthe"; "" when out of range.
  std::string id_to_piece(int32_t id) const override;
  /// The id of the added token spelled `text` (tokenizer.json), -1 when none.
  int32_t added_token_id(std::string_view text) const override;
  /// chat_template.jinja beside the loaded file, else tokenizer_config.json's
  /// "chat_template" (a string, or the entry named "default" of a list).
  std::string chat_template() const override;
  /// "gpt2_bpe" (vocab + merges files) or "tokenizer_json".
  std::string kind() const override;

  /// The id of vocabulary or added token `piece`, -1 when none.
  int32_t piece_to_id(std::string_view piece) const;

  /// The merges as "left right" in priority order (highest first); a merge
  /// listed twice appears once, at the place that counts (the later one).
  std::vector<std::string> merges() const;

  /// True for ids decode() skips: special added tokens, BOS/EOS/PAD, and
  /// ids no vocabulary entry uses.
  bool is_special(int32_t id) const;

  struct State;  // defined in bpe_tokenizer.cc

 private:
  explicit BpeTokenizer(std::unique_ptr<State> state);

  std::unique_ptr<State> state_;
};

}  // namespace peft::data

#endif  // PEFT_DATA_BPE_TOKENIZER_H_
