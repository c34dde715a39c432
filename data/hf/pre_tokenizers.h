// File: data/hf/pre_tokenizers.h (internal to //data)
//
// tokenizer.json "pre_tokenizer": cuts normalized text into the words the
// model tokenizes one by one (HF tokenizers pre_tokenizers/*).
//
//   type             fields                                      effect
//   Sequence         pretokenizers: [...]                        each in turn, over all pieces
//   Split            pattern {String|Regex}, behavior, invert    split on a pattern
//   ByteLevel        add_prefix_space, use_regex                 GPT-2 split, bytes -> printable symbols
//   Metaspace        replacement, prepend_scheme, split          ' ' -> '▁', prefix, split before '▁'
//                    (legacy add_prefix_space)
//   Digits           individual_digits                           isolate (runs of) digits
//   Punctuation      behavior                                    split on punctuation
//   Whitespace                                                  \w+ and [^\w\s]+, whitespace dropped
//   WhitespaceSplit                                             split on whitespace, dropped
//
// Any other type is refused by name. Pieces that are added tokens pass
// through untouched; empty pieces are dropped.
#ifndef PEFT_DATA_HF_PRE_TOKENIZERS_H_
#define PEFT_DATA_HF_PRE_TOKENIZERS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"

namespace peft::data::hf {

/// A stretch of text on its way through the pipeline, or an added token
/// already resolved to its id.
struct Piece {
  std::string text;
  int32_t id = -1;        // >= 0: an added token; the model never sees it
  bool at_start = false;  // begins at offset 0 of the original input
};

/// One pre-tokenizer. Immutable and thread-safe.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Replaces every text piece of `pieces` by its sub-pieces, in order.
  virtual void pre_tokenize(std::vector<Piece>* pieces) const = 0;
};

/// Builds the pre-tokenizer of JSON `j` (not null). InvalidArgumentError
/// naming `where` and the component for an unknown type, a malformed field or
/// a regex that does not compile.
absl::StatusOr<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& j, const std::string& where);

/// GPT-2's ByteLevel pre-tokenizer (the vocab.json + merges.txt layout).
std::unique_ptr<PreTokenizer> gpt2_byte_level_pre_tokenizer();

/// The printable symbol GPT-2 gives each byte (UTF-8, e.g. "Ġ" for ' ').
const std::string& byte_to_symbol(unsigned char b);
/// The byte of a byte-level symbol's code point, -1 when it is none.
int byte_of_symbol(uint32_t cp);

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_PRE_TOKENIZERS_H_
