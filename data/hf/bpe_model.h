// File: data/hf/bpe_model.h (internal to //data)
//
// The BPE model of tokenizer.json (HF tokenizers models/bpe): a word's
// characters become symbols, and adjacent symbols merge by lowest merge rank
// (leftmost first among equal ranks) until no merge applies.
//
//   field                       meaning here
//   vocab, merges               token -> id; "a b" strings or ["a", "b"] pairs, in priority order
//   unk_token                   id for characters not in the vocabulary (none: they are dropped)
//   fuse_unk                    consecutive unknown characters give one unk
//   byte_fallback               unknown characters become <0xXX> byte tokens first
//   ignore_merges               a word that is itself in the vocabulary is one token
//   continuing_subword_prefix   spelling of non-initial characters ("##")
//   end_of_word_suffix          spelling of the final character ("</w>")
//   dropout                     ignored: encoding is deterministic
//
// Word results are cached per thread (words under 256 bytes; no locks, so
// threads encoding at once do not slow each other down); all methods are
// const and thread-safe.
#ifndef PEFT_DATA_HF_BPE_MODEL_H_
#define PEFT_DATA_HF_BPE_MODEL_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"

namespace peft::data::hf {

class BpeModel {
 public:
  /// The "model" object of a tokenizer.json. InvalidArgumentError naming
  /// `where` for a type other than BPE, malformed vocab/merges, a merge whose
  /// parts or result are not in the vocabulary, or an unk_token missing from it.
  static absl::StatusOr<std::unique_ptr<BpeModel>> from_json(const json& model, const std::string& where);

  /// vocab.json / encoder.json content and merges.txt / vocab.bpe text
  /// (an optional "#version" first line). Errors name the respective path.
  static absl::StatusOr<std::unique_ptr<BpeModel>> from_vocab_and_merges(const json& vocab,
                                                                         const std::string& vocab_path,
                                                                         std::string_view merges,
                                                                         const std::string& merges_path);

  /// Appends the ids of `word` (one pre-token) to `out`.
  void tokenize(const std::string& word, std::vector<int32_t>* out) const;

  /// The id of vocabulary entry `token`, -1 when none.
  int32_t token_to_id(std::string_view token) const;
  /// Spelling of `id`; "" when the id is unused or out of range.
  const std::string& id_to_token(int32_t id) const;
  /// One past the largest vocabulary id.
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  /// Merges in rank order, as (left, right) spellings.
  std::vector<std::pair<std::string, std::string>> merges() const;

 private:
  BpeModel() = default;
  absl::Status set_vocab(const json& vocab, const std::string& where);
  absl::Status add_merge(std::string_view left, std::string_view right, int32_t rank, const std::string& where);
  absl::Status finish(const std::string& where);
  void merge_word(std::string_view word, std::vector<int32_t>* ids) const;
  int32_t char_id(std::string_view ch, uint32_t cp, bool first, bool last) const;

  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  std::vector<std::string> tokens_;  // id -> spelling ("" for unused ids)
  // Views into tokens_, which does not change once the vocabulary is read;
  // lookups by string_view need no allocation.
  std::unordered_map<std::string_view, int32_t> ids_;
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string prefix_, suffix_;                // continuing_subword_prefix, end_of_word_suffix
  std::array<int32_t, 256> byte_token_ids_{};  // <0xXX> ids, -1 where missing
  std::vector<int32_t> small_char_ids_;        // code point < 2048 -> id of the one-character token, -1
  // Identifies this model's entries in the per-thread word caches (an address
  // could be reused by a later model; this number is never).
  uint64_t cache_key_ = 0;
};

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_BPE_MODEL_H_
