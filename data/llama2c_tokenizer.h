//
// The llama2.c binary tokenizer (tokenizer.bin, tok512.bin) with run.c's
// encode and decode.
//
// File layout (little-endian): int32 max_token_length, then per token
// float32 score, int32 byte length, the bytes. The vocabulary size is not
// stored; it is the number of records, and the file must end exactly after
// the last one. Fixed ids by llama2.c convention: 0 <unk>, 1 BOS ("\n<s>\n"),
// 2 EOS ("\n</s>\n"), 3..258 the byte pieces "<0x00>".."<0xFF>"; "▁" is already
// a space in the stored strings.
//
// encode (run.c): prepend a " " piece when the text is non-empty (the dummy
// prefix), look up each UTF-8 codepoint (at most 4 bytes) and fall back to
// byte ids (byte + 3) for codepoints not in the vocab, then repeatedly merge
// the adjacent pair whose concatenation is the highest-scoring vocab entry
// (leftmost on ties; scores must exceed -1e10). Unlike sentencepiece with
// remove_extra_whitespaces, whitespace is never collapsed.
//
// decode (run.c): pieces concatenated; the leading space of a piece that
// follows BOS, or starts the sequence, is dropped; "<0xXX>" pieces become the
// raw byte; BOS and EOS are skipped.
#ifndef PEFT_DATA_LLAMA2C_TOKENIZER_H_
#define PEFT_DATA_LLAMA2C_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "data/tokenizer.h"

namespace peft::data {

/// A llama2.c tokenizer.bin.
class Llama2cTokenizer final : public Tokenizer {
 public:
  /// Reads and validates the tokenizer.bin at `path`. NotFoundError when it
  /// does not exist; InvalidArgumentError naming the path for a truncated or
  /// malformed file (bad max_token_length, a record longer than it, fewer than
  /// 259 tokens, ids 3..258 not the byte pieces, trailing bytes).
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> create(const std::string& path);

  /// Same as create() for bytes already in memory; `name` is used in errors.
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> create_from_bytes(std::string_view data,
                                                                             const std::string& name);

  // index_ holds views into pieces_: not copyable.
  Llama2cTokenizer(const Llama2cTokenizer&) = delete;
  Llama2cTokenizer& operator=(const Llama2cTokenizer&) = delete;

  using Tokenizer::encode;  // the EncodeOptions overload: nothing to split here
  /// run.c encode(text, bos=0, eos=0).
  std::vector<int32_t> encode(std::string_view text) const override;
  /// run.c decode over the sequence, BOS/EOS skipped.
  std::string decode(const std::vector<int32_t>& ids) const override;
  /// Number of records in the file.
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  /// 1.
  int32_t bos_id() const override { return kBosId; }
  /// 2.
  int32_t eos_id() const override { return kEosId; }
  /// -1 (llama2.c has no padding token).
  int32_t pad_id() const override { return -1; }
  /// Always true (run.c prepends BOS).
  bool add_bos_by_default() const override { return true; }
  /// The stored string, e.g. " the" or "<0x0A>"; "" when out of range.
  std::string id_to_piece(int32_t id) const override;
  /// "llama2c".
  std::string kind() const override { return "llama2c"; }

  /// The file's max_token_length.
  int32_t max_token_length() const { return max_token_length_; }
  /// The score of `id` (0 when out of range).
  float score(int32_t id) const;

 private:
  static constexpr int32_t kBosId = 1;
  static constexpr int32_t kEosId = 2;
  static constexpr int32_t kByteOffset = 3;  // id of "<0x00>"

  Llama2cTokenizer(int32_t max_token_length, std::vector<std::string> pieces, std::vector<float> scores);

  /// Id of the vocab entry spelled exactly `piece`, -1 when none.
  int32_t lookup(std::string_view piece) const;

  int32_t max_token_length_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string_view, int32_t> index_;  // views into pieces_
};

}  // namespace peft::data

#endif  // PEFT_DATA_LLAMA2C_TOKENIZER_H_
