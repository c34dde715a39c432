// File: data/hf/normalizers.h (internal to //data)
//
// tokenizer.json "normalizer": rewrites each stretch of input text between
// added tokens before pre-tokenization (HF tokenizers normalizers/*).
//
//   type        fields                                  effect
//   Sequence    normalizers: [...]                      each in turn
//   Prepend     prepend: "▁"                            prefix a non-empty text
//   Replace     pattern: {String|Regex}, content        every match -> content
//   NFC NFD NFKC NFKD                                   Unicode normal forms
//   Lowercase                                           char::to_lowercase per character
//   Strip       strip_left, strip_right                 trim Unicode whitespace
//
// Any other type is refused by name.
#ifndef PEFT_DATA_HF_NORMALIZERS_H_
#define PEFT_DATA_HF_NORMALIZERS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"

namespace peft::data::hf {

/// One normalizer. Immutable and thread-safe.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  /// Rewrites `text` in place.
  virtual void normalize(std::string* text) const = 0;
};

/// Builds the normalizer of JSON `j` (not null). InvalidArgumentError naming
/// `where` and the component for an unknown type or a malformed field.
absl::StatusOr<std::unique_ptr<Normalizer>> parse_normalizer(const json& j, const std::string& where);

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_NORMALIZERS_H_
