//
// LLaMA-style sentencepiece tokenizer (tokenizer.model, tok512.model).
//
// Debian's libsentencepiece cannot live in a process that loads libtorch
// (embedded protobuf clash), so the model is held by the dlopen'ed shim in
// third_party/sentencepiece_shim (see spm_loader.h for how the .so is found;
// $PEFT_SPM_SHIM overrides). encode() equals
// SentencePieceProcessor.encode(text, add_bos=False, add_eos=False).
//
// Long texts in bounded memory: sentencepiece 0.1.97 needs about 240 bytes of
// memory per byte of text in one Encode call (a 5 MB line: 1.2 GB; 50 MB:
// over 8 GB). A text longer than chunk_bytes (64 KiB) is therefore encoded in
// pieces of at most chunk_bytes, cut where the result cannot change: at a
// character boundary whose two neighbouring characters (after whitespace
// escaping, " " -> "▁") appear next to each other in no vocabulary piece, so
// no BPE merge can cross the cut. Pieces after the first are encoded without
// the dummy-prefix "▁" (or, when the model removes extra whitespace and the
// piece starts with spaces, with it, which stands for the collapsed run), so
// the ids are exactly those of one Encode of the whole text. Cuts right
// before a space are preferred. Where the last half of a window holds no
// such boundary (e.g. 32 KB of "aaaa" or base64, whose every character pair
// is inside some piece), the cut is made at the window's last character
// boundary anyway: memory stays bounded and only the few tokens touching
// that cut may differ from one whole-text Encode. This applies to BPE (and
// char) models with the identity normalizer (every LLaMA-family model);
// other models (unigram, an NFKC normalizer, whitespace as suffix) are
// encoded whole, and max_text_bytes() tells callers to refuse longer texts.
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

/// How a SentencePieceTokenizer encodes long texts.
struct SentencePieceOptions {
  /// Texts longer than this are encoded in pieces of at most this many bytes
  /// (see the file comment); at least 16.
  size_t chunk_bytes = size_t{64} << 10;
  /// The longest text a model that cannot be encoded in pieces takes
  /// (max_text_bytes()); about 100 MB of sentencepiece memory.
  size_t max_unchunked_bytes = size_t{1} << 20;
};

/// A sentencepiece ModelProto loaded through the shim.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  /// Loads the serialized ModelProto at `model_path`. NotFoundError when the
  /// file is missing; InvalidArgumentError naming the path when sentencepiece
  /// rejects it; FailedPreconditionError when the shim cannot be loaded.
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> create(const std::string& model_path,
                                                                        const SentencePieceOptions& options = {});

  ~SentencePieceTokenizer() override;

  using Tokenizer::encode;  // the EncodeOptions overload: nothing to split here
  /// sentencepiece Encode without BOS/EOS; long texts in pieces (file comment).
  std::vector<int32_t> encode(std::string_view text) const override;
  /// Unlimited when long texts are encoded in pieces, else
  /// options.max_unchunked_bytes.
  size_t max_text_bytes() const override;
  /// Why long texts are not encoded in pieces ("" when they are), e.g. "a
  /// unigram model".
  const std::string& unchunked_reason() const { return unchunked_reason_; }
  /// A place where encode() cuts a text: the start of a piece after the
  /// first, and whether the cut is exact (else made for lack of an exact one).
  struct Cut {
    size_t at = 0;
    bool exact = true;
  };
  /// Where encode() cuts `text`; empty when it is encoded in one call. For
  /// tests and benchmarks.
  std::vector<Cut> cuts(std::string_view text) const;
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
  SentencePieceTokenizer(std::unique_ptr<spm_shim::SpmModel> model, const SentencePieceOptions& options);

  // Reads the vocabulary and normalizer settings that chunking depends on.
  absl::Status prepare_chunking(const std::string& model_path);
  // Where the piece starting at `start` ends (a cut, or text.size()).
  Cut next_cut(std::string_view text, size_t start) const;
  // Whether cutting between code points a and b keeps the encoding exact.
  bool safe_cut(uint32_t a, uint32_t b) const;

  std::unique_ptr<spm_shim::SpmModel> model_;
  SentencePieceOptions options_;
  std::string unchunked_reason_;  // "" when long texts are chunked
  bool remove_extra_whitespaces_ = false;
  bool byte_fallback_ = false;
  std::vector<uint64_t> pairs_;    // sorted (a << 32 | b): a, b adjacent in some piece
  std::vector<uint32_t> singles_;  // sorted code points that are pieces on their own
};

}  // namespace peft::data

#endif  // PEFT_DATA_SENTENCEPIECE_TOKENIZER_H_
