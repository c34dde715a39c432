// File: data/hf/added_vocabulary.h (internal to //data)
//
// tokenizer.json "added_tokens" (HF tokenizers tokenizer/added_vocabulary.rs):
// tokens matched in the text before the model runs.
//
//   {"id": 128009, "content": "<|eot_id|>", "special": true, "normalized": false,
//    "lstrip": false, "rstrip": false, "single_word": false}
//
// Matching is leftmost-longest over the text, in two passes: tokens with
// normalized = false against the raw text, then tokens with normalized = true
// (their content normalized too) against each normalized stretch between the
// first pass's matches. single_word rejects a match touching a word character
// (Rust's \w) on either side; lstrip / rstrip widen it over the whitespace
// before / after. With split_special_tokens, special tokens are not matched
// (their text is tokenized as text); other added tokens still are.
#ifndef PEFT_DATA_HF_ADDED_VOCABULARY_H_
#define PEFT_DATA_HF_ADDED_VOCABULARY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "data/hf/json_fields.h"
#include "data/hf/normalizers.h"
#include "data/hf/pre_tokenizers.h"

namespace peft::data::hf {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;
  bool normalized = true;  // HF's default for a token that does not say
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
};

/// The added tokens of one tokenizer. Immutable once built; thread-safe.
class AddedVocabulary {
 public:
  /// Parses the "added_tokens" list; `normalizer` (may be null) spells the
  /// normalized tokens' content the way normalized text will look.
  /// InvalidArgumentError naming `where` for a malformed entry, an empty
  /// content, a negative or huge id, or two contents sharing an id.
  static absl::StatusOr<std::unique_ptr<AddedVocabulary>> from_json(const json& list, const Normalizer* normalizer,
                                                                    const std::string& where);
  /// No added tokens.
  AddedVocabulary() = default;

  /// Splits `text` into pieces: matched tokens (Piece::id set) and the text
  /// between them, normalized with `normalizer` (may be null). The first text
  /// piece that starts the input has at_start set.
  std::vector<Piece> extract_and_normalize(std::string_view text, const Normalizer* normalizer,
                                           bool split_special_tokens) const;

  /// The added token spelled `content`, nullptr when none.
  const AddedToken* find(std::string_view content) const;
  /// The added token with id `id`, nullptr when none.
  const AddedToken* find(int32_t id) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie for leftmost-longest matching.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
      int32_t token = -1;                                       // index into tokens_ ending here
    };
    std::vector<Node> nodes{Node{}};
    std::vector<int32_t> root_child = std::vector<int32_t>(256, -1);

    void insert(std::string_view key, int32_t token);
    // Longest key starting at s[i]: its token index and end, or -1.
    int32_t longest_at(std::string_view s, size_t i, size_t* end) const;
    bool empty() const { return nodes.size() == 1; }
  };

  // Splits one text piece with `trie`; unmatched stretches go to `out` with
  // their text unchanged.
  void split(const Piece& piece, const Trie& trie, bool split_special_tokens, std::vector<Piece>* out) const;

  std::vector<AddedToken> tokens_;
  std::unordered_map<std::string, int32_t> by_content_;  // -> index into tokens_
  std::unordered_map<int32_t, int32_t> by_id_;           // -> index into tokens_
  Trie raw_trie_, normalized_trie_;
};

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_ADDED_VOCABULARY_H_
