// File: data/hf/tokenizer_json.h (internal to //data)
//
// The Hugging Face tokenizer.json pipeline, as the tokenizers library runs it
// for one sequence:
//
//   text -> added tokens matched (added_vocabulary.h), the stretches between
//           them normalized (normalizers.h)
//        -> pre-tokenized into words (pre_tokenizers.h)
//        -> each word through the BPE model (bpe_model.h)
//        -> [post-processor special tokens, on request (post_processors.h)]
//   ids  -> token spellings, special ones skipped on request -> decoder (decoders.h)
//
//   PEFT_ASSIGN_OR_RETURN(auto tj, TokenizerJson::from_json(root, "tokenizer.json"));
//   std::vector<int32_t> ids;
//   tj->encode("Hello<|eot_id|>", /*split_special_tokens=*/false, &ids);
//
// "truncation" and "padding" are not applied: callers get every token of the
// text and decide lengths themselves.
#ifndef PEFT_DATA_HF_TOKENIZER_JSON_H_
#define PEFT_DATA_HF_TOKENIZER_JSON_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/added_vocabulary.h"
#include "data/hf/bpe_model.h"
#include "data/hf/decoders.h"
#include "data/hf/json_fields.h"
#include "data/hf/normalizers.h"
#include "data/hf/post_processors.h"
#include "data/hf/pre_tokenizers.h"

namespace peft::data::hf {

/// One loaded tokenizer.json. Immutable; every method is const and thread-safe.
class TokenizerJson {
 public:
  /// Builds every component of `root` (a parsed tokenizer.json).
  /// InvalidArgumentError naming `where` and the component for anything
  /// unsupported or malformed.
  static absl::StatusOr<std::unique_ptr<TokenizerJson>> from_json(const json& root, const std::string& where);

  /// GPT-2's layout from vocab.json + merges.txt: ByteLevel pre-tokenizer and
  /// decoder, no added tokens.
  static absl::StatusOr<std::unique_ptr<TokenizerJson>> gpt2(const json& vocab, const std::string& vocab_path,
                                                             std::string_view merges, const std::string& merges_path);

  /// Appends the ids of `text`. With `split_special_tokens`, special added
  /// tokens are not matched in the text.
  void encode(std::string_view text, bool split_special_tokens, std::vector<int32_t>* out) const;

  /// The text of `ids`: ids for which `skip(id)` holds are left out, the
  /// rest go through the decoder (joined by spaces when there is none, as HF
  /// does). Ids that name no token are left out.
  std::string decode(const std::vector<int32_t>& ids, const std::function<bool(int32_t)>& skip) const;

  /// One past the largest id of the model and the added tokens.
  int32_t vocab_size() const { return vocab_size_; }
  /// The spelling of `id` (an added token's content first); "" when none.
  std::string id_to_token(int32_t id) const;
  /// The id of `token` (added tokens first, then the model), -1 when none.
  int32_t token_to_id(std::string_view token) const;

  const BpeModel& model() const { return *model_; }
  const AddedVocabulary& added_vocabulary() const { return *added_; }
  const PostProcessor& post_processor() const { return post_processor_; }
  /// Whether the pre-tokenizer maps bytes to GPT-2's byte symbols.
  bool byte_level() const { return byte_level_; }

 private:
  TokenizerJson() = default;

  std::unique_ptr<Normalizer> normalizer_;       // may be null
  std::unique_ptr<PreTokenizer> pre_tokenizer_;  // may be null
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<AddedVocabulary> added_;
  PostProcessor post_processor_;
  std::unique_ptr<Decoder> decoder_;  // may be null
  int32_t vocab_size_ = 0;
  bool byte_level_ = false;
};

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_TOKENIZER_JSON_H_
