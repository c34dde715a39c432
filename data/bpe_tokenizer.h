//
// GPT-2 byte-level BPE (OpenAI encoder.py; Hugging Face ByteLevel BPE).
//
// Sources (same content, two spellings):
//   - encoder.json + vocab.bpe (OpenAI) or vocab.json + merges.txt (Hugging
//     Face): a JSON object token -> id, and one merge "a b" per line (lower
//     line = higher priority; an optional first line "#version: ...");
//   - a Hugging Face tokenizer.json whose model is {"type": "BPE"}, with merges
//     as "a b" strings or ["a", "b"] pairs, `added_tokens`, and a ByteLevel
//     pre-tokenizer (alone, or in a Sequence after Split{Regex, "Isolated"}
//     steps as in Llama 3). Other normalizers / pre-tokenizers, word prefixes
//     or suffixes are rejected with InvalidArgumentError; dropout is ignored
//     (encoding is deterministic).
//
// encode: the text is split into pre-tokens with the GPT-2 regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (PCRE2, UTF + UCP), each pre-token's bytes are mapped to GPT-2's printable
// byte alphabet, and adjacent symbols merge by lowest merge rank until none
// applies. Results are cached per pre-token. Invalid UTF-8 never reaches the
// regex: each maximal run of invalid bytes is a pre-token of its own, so any
// byte string encodes and decodes back to itself. Added/special tokens in the
// text are NOT matched: "<|endoftext|>" in the input is ordinary text (as in
// OpenAI's encoder and the gpt-3-encoder reference).
//
// decode: ids map back through the byte alphabet to bytes; special tokens
// (<|endoftext|>, BOS/EOS/PAD, added tokens marked special) are skipped,
// other added tokens are emitted verbatim.
//
// Special ids: when a tokenizer_config.json sits beside the loaded file, its
// bos_token / eos_token / pad_token / add_bos_token are used. Otherwise BOS is
// the first special token of a TemplateProcessing post-processor (then
// add_bos_by_default() is true), else "<|endoftext|>"; EOS is "<|endoftext|>";
// PAD is -1. For GPT-2 this gives BOS = EOS = 50256, no BOS by default.
#ifndef PEFT_DATA_BPE_TOKENIZER_H_
#define PEFT_DATA_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::data {

/// Byte-level BPE in the GPT-2 family.
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

  /// Loads a Hugging Face tokenizer.json with a byte-level BPE model. Errors
  /// as above, plus InvalidArgumentError naming the file for a model that is
  /// not BPE or an unsupported normalizer / pre-tokenizer.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> create(const std::string& tokenizer_json_path);

  ~BpeTokenizer() override;

  /// Byte-level BPE of `text` (see file comment). Thread-safe.
  std::vector<int32_t> encode(std::string_view text) const override;
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
  /// "gpt2_bpe".
  std::string kind() const override { return "gpt2_bpe"; }

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
