// File: data/hf/pattern.h (internal to //data)
//
// Patterns and the split behaviours of the Hugging Face tokenizers library
// (tokenizer/pattern.rs, NormalizedString::split): a pattern cuts a string
// into contiguous spans, each a match or not, and a behaviour turns the spans
// into pieces.
//
//   PEFT_ASSIGN_OR_RETURN(auto re, Regex::compile(R"(\p{N}{1,3})", /*literal=*/false, "tokenizer.json"));
//   std::vector<Span> spans;
//   re->find_spans("abc 1234", &spans);   // "abc " no, "123" yes, "4" yes
//   std::vector<Range> pieces;
//   apply_behavior(spans, SplitBehavior::kIsolated, &pieces);
//
// Regexes are PCRE2 with UTF and UCP (so \s, \w, \p{L} are Unicode classes,
// (?i) folds case, lookahead works), which covers the Oniguruma patterns that
// tokenizer.json files carry. Iteration follows the onig crate's find_iter:
// an empty match right after the previous match is skipped, any other empty
// match counts (and splits the text there).
#ifndef PEFT_DATA_HF_PATTERN_H_
#define PEFT_DATA_HF_PATTERN_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

struct pcre2_real_code_8;

namespace peft::data::hf {

/// [begin, end) byte offsets into a string, and whether the pattern matched it.
struct Span {
  size_t begin = 0;
  size_t end = 0;
  bool match = false;
};

/// A byte range of a piece.
struct Range {
  size_t begin = 0;
  size_t end = 0;
};

/// A compiled PCRE2 pattern. Immutable; find_spans may run on many threads.
class Regex {
 public:
  /// Compiles `pattern` (a literal string when `literal`). InvalidArgumentError
  /// naming `where`, the pattern and PCRE2's message when it does not compile.
  static absl::StatusOr<std::shared_ptr<const Regex>> compile(const std::string& pattern, bool literal,
                                                              const std::string& where);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// Appends spans covering all of `s` (matches and the gaps between them);
  /// one non-match span for an empty `s`. Stretches of ill-formed UTF-8 never
  /// reach PCRE2: they are non-match spans of their own and the text on
  /// either side is searched separately.
  void find_spans(std::string_view s, std::vector<Span>* out) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex(pcre2_real_code_8* code, std::string pattern) : code_(code), pattern_(std::move(pattern)) {}
  void find_spans_valid(std::string_view s, size_t base, std::vector<Span>* out) const;

  pcre2_real_code_8* code_;
  std::string pattern_;
};

/// Spans of the characters for which `pred` holds (one match span per
/// character) and the stretches between them; the char-function Pattern.
void find_char_spans(std::string_view s, const std::function<bool(uint32_t)>& pred, std::vector<Span>* out);

/// Flips every span's `match`.
void invert_spans(std::vector<Span>* spans);

/// What happens to the matched delimiters when splitting; for "the-final--countdown"
/// split on '-':
///   kRemoved            "the" "final" "countdown"
///   kIsolated           "the" "-" "final" "-" "-" "countdown"
///   kMergedWithPrevious "the-" "final-" "-" "countdown"
///   kMergedWithNext     "the" "-final" "-" "-countdown"
///   kContiguous         "the" "-" "final" "--" "countdown"
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

/// Parses "Removed", "Isolated", "MergedWithPrevious", "MergedWithNext",
/// "Contiguous"; false for anything else.
bool parse_split_behavior(const std::string& name, SplitBehavior* out);

/// Appends the pieces `spans` make under `behavior`, empty ones dropped.
void apply_behavior(const std::vector<Span>& spans, SplitBehavior behavior, std::vector<Range>* out);

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_PATTERN_H_
