//
// Tokenizer metadata for GGUF files, as llama.cpp's vocabulary loader reads
// it (tokenizer.ggml.*), built from every tokenizer the project reads:
//
//   tokenizer (data/)                  tokenizer.ggml.model  pre          scores  merges
//   sentencepiece tokenizer.model      llama                 default      yes     -
//   llama2.c tokenizer.bin             llama                 default      yes     -
//   byte-level BPE (vocab.json +       gpt2                  gpt-2        -       yes, possibly []
//     merges.txt, encoder.json +
//     vocab.bpe, tokenizer.json)
//   tokenizer.json with Llama 3's      gpt2                  llama-bpe    -       yes
//     Split regex before ByteLevel
//   tokenizer.json with Qwen2's        gpt2                  qwen2        -       yes
//     Split regex before ByteLevel
//   tokenizer.json BPE with            llama                 default      -1000   -
//     byte_fallback and a Sequence
//     decoder (Llama 2, Mistral)
//
// Token types follow llama.cpp (1 normal, 2 unknown, 3 control, 4 user
// defined, 5 unused, 6 byte). llama.cpp refuses a gpt2 vocabulary without the
// merges key, so a BPE without merges (the quickstart's byte-level tokenizer)
// gets an explicit empty array.
//
//   PEFT_ASSIGN_OR_RETURN(Vocab v, vocab_from_tokenizer(*tok, model_dir));
//   PEFT_RETURN_IF_ERROR(fit_vocab_to_model(lm->config(), &v));
//   add_vocab_metadata(v, &metadata);
#ifndef PEFT_MODELS_GGUF_VOCAB_H_
#define PEFT_MODELS_GGUF_VOCAB_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"
#include "models/config.h"
#include "models/gguf/gguf_writer.h"

namespace peft::models::gguf {

/// llama_token_type values.
enum TokenType : int32_t {
  kTokenNormal = 1,
  kTokenUnknown = 2,
  kTokenControl = 3,
  kTokenUserDefined = 4,
  kTokenUnused = 5,
  kTokenByte = 6,
};

/// Everything written under tokenizer.ggml.*.
struct Vocab {
  std::string model;                // "llama" (sentencepiece, byte_fallback BPE) or "gpt2" (byte-level BPE)
  std::string pre;                  // pre-tokenizer: "default", "gpt-2", "llama-bpe", "qwen2"
  std::vector<std::string> tokens;  // id -> text in llama.cpp's spelling ("▁the", "Ġthe")
  std::vector<float> scores;        // llama only
  std::vector<int32_t> types;       // TokenType per id
  std::vector<std::string> merges;  // gpt2 only ("a b" in priority order; written even when empty)
  int64_t bos = -1, eos = -1, unk = -1, pad = -1;
  int64_t eot = -1, eom = -1;  // further end-of-generation ids (config.json lists of eos ids)
  bool add_bos = false;
  bool add_eos = false;
  std::optional<bool> add_space_prefix;  // llama only: sentencepiece's add_dummy_prefix
};

/// Reads the vocabulary of `tokenizer`, which was loaded from `source` (the
/// file or model directory given to data::load_tokenizer; a tokenizer.json
/// there is read again for its pre-tokenizer). Errors: a tokenizer kind or
/// pre-tokenizer llama.cpp has no counterpart for.
absl::StatusOr<Vocab> vocab_from_tokenizer(const data::Tokenizer& tokenizer, const std::string& source);

/// Makes `vocab` fit the model: pads the token list to config.vocab_size
/// with "[PAD<id>]" unused tokens (llama.cpp sizes the embedding from the
/// token list), takes the end-of-generation ids from config.json's
/// eos_token_id (first -> eos, then eot, eom) when it has any, and checks
/// every special id. Errors: a tokenizer larger than the model's vocabulary.
absl::Status fit_vocab_to_model(const ModelConfig& config, Vocab* vocab);

/// Appends the tokenizer.ggml.* keys.
void add_vocab_metadata(const Vocab& vocab, Metadata* metadata);

/// Sentencepiece's whitespace marker "▁" (U+2581), which llama.cpp's llama
/// vocabulary expects in place of a space.
inline constexpr const char* kSpaceMarker = "\xE2\x96\x81";

}  // namespace peft::models::gguf

#endif  // PEFT_MODELS_GGUF_VOCAB_H_
