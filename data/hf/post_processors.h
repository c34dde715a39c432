// File: data/hf/post_processors.h (internal to //data)
//
// tokenizer.json "post_processor" for single sequences (HF tokenizers
// processors/*): the special tokens added around an encoding when the caller
// asks for them (add_special_tokens).
//
//   type                 effect on ids
//   TemplateProcessing   "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}, ...]
//                        with "special_tokens": {"<s>": {"ids": [1], ...}}
//   ByteLevel            none (it only trims offsets)
//   Sequence             processors: [...] applied in turn
//
// Any other type is refused by name. Pair templates are read but unused:
// this project encodes single sequences only.
#ifndef PEFT_DATA_HF_POST_PROCESSORS_H_
#define PEFT_DATA_HF_POST_PROCESSORS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"

namespace peft::data::hf {

/// A resolved single-sequence post-processor: ids before and after the text.
struct PostProcessor {
  std::vector<int32_t> prefix;
  std::vector<int32_t> suffix;

  /// prefix + ids + suffix.
  std::vector<int32_t> apply(const std::vector<int32_t>& ids) const;
};

/// Builds the post-processor of JSON `j` (null: none). `token_id` resolves a
/// special token name that has no "ids" in the template's table (-1: none).
/// InvalidArgumentError naming `where` for an unknown type, a template piece
/// that is neither SpecialToken nor Sequence, or an unknown special token.
absl::StatusOr<PostProcessor> parse_post_processor(const json& j, const std::string& where,
                                                   const std::function<int32_t(const std::string&)>& token_id);

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_POST_PROCESSORS_H_
