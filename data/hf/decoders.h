// File: data/hf/decoders.h (internal to //data)
//
// tokenizer.json "decoder": turns token spellings back into text (HF
// tokenizers decoders/*). Each decoder maps the list of token strings to a
// new list; decode() joins the final list.
//
//   type          fields                       effect
//   ByteLevel                                  byte symbols -> bytes, all tokens fused
//   Metaspace     replacement, prepend_scheme  '▁' -> ' ' (dropped in the first token unless "never")
//   ByteFallback                               runs of <0xXX> tokens -> their bytes
//   Fuse                                       all tokens -> one
//   Strip         content, start, stop         drop up to start leading / stop trailing `content`
//   Replace       pattern {String|Regex}, content
//   Sequence      decoders: [...]
//
// Any other type is refused by name. One deliberate difference from HF:
// where HF writes U+FFFD for bytes that do not form UTF-8 (ByteLevel,
// ByteFallback), the bytes themselves are kept, so that decoding pieces of a
// sequence one at a time and joining them gives the same bytes as decoding
// the whole sequence.
#ifndef PEFT_DATA_HF_DECODERS_H_
#define PEFT_DATA_HF_DECODERS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"

namespace peft::data::hf {

/// One decoder. Immutable and thread-safe.
class Decoder {
 public:
  virtual ~Decoder() = default;
  /// Rewrites the token strings in place.
  virtual void decode_chain(std::vector<std::string>* tokens) const = 0;
  /// decode_chain, then the strings joined.
  std::string decode(std::vector<std::string> tokens) const;
};

/// Builds the decoder of JSON `j` (not null). InvalidArgumentError naming
/// `where` and the component for an unknown type or a malformed field.
absl::StatusOr<std::unique_ptr<Decoder>> parse_decoder(const json& j, const std::string& where);

/// GPT-2's ByteLevel decoder (the vocab.json + merges.txt layout).
std::unique_ptr<Decoder> byte_level_decoder();

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_DECODERS_H_
