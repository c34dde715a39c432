//
// LLaMA-style sentencepiece tokenizer (tokenizer.model, tok512.model).
//
// Debian's libsentencepiece cannot live in a process that loads libtorch
// (embedded protobuf clash), so the model is held by the dlopen'ed shim in
// third_party/sentencepiece_shim (see spm_loader.h for how the .so is found;
// $PEFT_SPM_SHIM overrides). encode() equals
// SentencePieceProcessor.encode(text, add_bos=False, add_eos=False).
#ifndef PEFT_DATA_SENTENCEPIECE_TOKENIZER_H_
#define PEFT_DATA_SENTENCEPIECE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::spm_shim {
class SpmModel;
}  // namespace peft::spm_shim

namespace peft::data {

/// A sentencepiece ModelProto loaded through the shim.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  /// Loads the serialized ModelProto at `model_path`. NotFoundError when the
  /// file is missing; InvalidArgumentError naming the path when sentencepiece
  /// rejects it; FailedPreconditionError when the shim cannot be loaded.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> create(const std::string& model_path);

  ~SentencePieceTokenizer() override;

  using Tokenizer::encode;  // the EncodeOptions overload: nothing to split here
  /// sentencepiece Encode without BOS/EOS.
  std::vector<int32_t> encode(std::string_view text) const override;
  /// sentencepiece Decode after dropping control and out-of-range ids.
  std::string decode(const std::vector<int32_t>& ids) const override;
  /// Number of pieces.
  int32_t vocab_size() const override;
  /// From the model's trainer spec (1 for LLaMA); -1 when disabled.
  int32_t bos_id() const override;
  /// From the model's trainer spec (2 for LLaMA); -1 when disabled.
  int32_t eos_id() const override;
  /// From the model's trainer spec (-1 for LLaMA).
  int32_t pad_id() const override;
  /// Always true (LLaMA convention).
  bool add_bos_by_default() const override { return true; }
  /// The piece, e.g. "▁the" or "<0x0A>"; "" when out of range.
  std::string id_to_piece(int32_t id) const override;
  /// "sentencepiece".
  std::string kind() const override { return "sentencepiece"; }

  /// The piece's score (0 when out of range).
  float score(int32_t id) const;
  /// The ModelProto piece type: 1 normal, 2 unknown, 3 control, 5 unused,
  /// 6 byte (user-defined pieces read as 1); 0 when out of range.
  int piece_type(int32_t id) const;
  /// From the model's trainer spec (0 for LLaMA); -1 when disabled.
  int32_t unk_id() const;

 private:
  explicit SentencePieceTokenizer(std::unique_ptr<spm_shim::SpmModel> model);

  std::unique_ptr<spm_shim::SpmModel> model_;
};

}  // namespace peft::data

#endif  // PEFT_DATA_SENTENCEPIECE_TOKENIZER_H_
