#include "data/hf/pattern.h"

#include <algorithm>
#include <optional>
#include <utility>

#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "data/hf/unicode.h"

namespace peft::data::hf {
namespace {

struct MatchDataFree {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};

}  // namespace

absl::StatusOr<std::shared_ptr<const Regex>> Regex::compile(const std::string& pattern, bool literal,
                                                            const std::string& where) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2_UCP: \s, \w, \d and POSIX classes follow Unicode properties.
  // PCRE2_LITERAL cannot be combined with UCP (and needs no classes).
  const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                   &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat(where, ": cannot compile regex \"", pattern, "\" at offset ",
                                                   error_offset, ": ", reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
  return std::shared_ptr<const Regex>(new Regex(code, pattern));
}

Regex::~Regex() { pcre2_code_free(code_); }

void Regex::find_spans_valid(std::string_view s, size_t base, std::vector<Span>* out) const {
  std::unique_ptr<pcre2_match_data, MatchDataFree> md(pcre2_match_data_create_from_pattern(code_, nullptr));
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t prev = 0;    // end of the last span written
  size_t search = 0;  // where the next search starts
  std::optional<size_t> last_match_end;
  while (md != nullptr && search <= s.size()) {
    int rc = pcre2_match(code_, subject, s.size(), search, PCRE2_NO_UTF_CHECK, md.get(), nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // JIT stack or match limits: retry in the interpreter before giving up.
      rc = pcre2_match(code_, subject, s.size(), search, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md.get(), nullptr);
    }
    if (rc < 0) break;  // no further match (or a hard limit): the rest is one gap
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md.get());
    const size_t start = ovector[0], end = ovector[1];
    if (end == start && last_match_end == end) {
      // The onig crate never accepts an empty match right after a match:
      // step one character and search again.
      search += search < s.size() ? next_char(s, search).len : 1;
      continue;
    }
    search = end;
    last_match_end = end;
    if (prev != start) out->push_back({base + prev, base + start, false});
    out->push_back({base + start, base + end, true});
    prev = end;
  }
  if (prev != s.size()) out->push_back({base + prev, base + s.size(), false});
}

void Regex::find_spans(std::string_view s, std::vector<Span>* out) const {
  if (s.empty()) {
    out->push_back({0, 0, false});
    return;
  }
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size()) {
      const size_t len = utf8_char_len(s, j);
      if (len == 0) break;
      j += len;
    }
    if (j > i) find_spans_valid(s.substr(i, j - i), i, out);
    size_t k = j;
    while (k < s.size() && utf8_char_len(s, k) == 0) ++k;
    if (k > j) out->push_back({j, k, false});
    i = k;
  }
}

void find_char_spans(std::string_view s, const std::function<bool(uint32_t)>& pred, std::vector<Span>* out) {
  if (s.empty()) {
    out->push_back({0, 0, false});
    return;
  }
  size_t last = 0;
  for (size_t i = 0; i < s.size();) {
    const Utf8Char c = next_char(s, i);
    if (pred(c.cp)) {
      if (last < i) out->push_back({last, i, false});
      out->push_back({i, i + c.len, true});
      last = i + c.len;
    }
    i += c.len;
  }
  if (last < s.size()) out->push_back({last, s.size(), false});
}

void invert_spans(std::vector<Span>* spans) {
  for (Span& s : *spans) s.match = !s.match;
}

bool parse_split_behavior(const std::string& name, SplitBehavior* out) {
  static const std::pair<const char*, SplitBehavior> kNames[] = {
      {"Removed", SplitBehavior::kRemoved},
      {"Isolated", SplitBehavior::kIsolated},
      {"MergedWithPrevious", SplitBehavior::kMergedWithPrevious},
      {"MergedWithNext", SplitBehavior::kMergedWithNext},
      {"Contiguous", SplitBehavior::kContiguous},
  };
  for (const auto& [n, b] : kNames) {
    if (name == n) {
      *out = b;
      return true;
    }
  }
  return false;
}

void apply_behavior(const std::vector<Span>& spans, SplitBehavior behavior, std::vector<Range>* out) {
  std::vector<Range> acc;
  acc.reserve(spans.size());
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (const Span& s : spans) acc.push_back({s.begin, s.end});
      break;
    case SplitBehavior::kRemoved:
      for (const Span& s : spans) {
        if (!s.match) acc.push_back({s.begin, s.end});
      }
      break;
    case SplitBehavior::kContiguous:
      for (const Span& s : spans) {
        if (s.match == previous_match && !acc.empty()) {
          acc.back().end = s.end;
        } else {
          acc.push_back({s.begin, s.end});
        }
        previous_match = s.match;
      }
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Span& s : spans) {
        if (s.match && !previous_match && !acc.empty()) {
          acc.back().end = s.end;
        } else {
          acc.push_back({s.begin, s.end});
        }
        previous_match = s.match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->match && !previous_match && !acc.empty()) {
          acc.back().begin = it->begin;
        } else {
          acc.push_back({it->begin, it->end});
        }
        previous_match = it->match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
  }
  for (const Range& r : acc) {
    if (r.end > r.begin) out->push_back(r);
  }
}

}  // namespace peft::data::hf
