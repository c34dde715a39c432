#include "data/hf/pre_tokenizers.h"

#include <array>
#include <functional>
#include <utility>

#include "data/hf/pattern.h"
#include "data/hf/unicode.h"
#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

struct ByteAlphabet {
  std::array<std::string, 256> symbol;
  std::array<int16_t, 512> byte;  // code point -> byte, -1 where none
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet* alphabet = [] {
    auto* a = new ByteAlphabet;
    a->byte.fill(-1);
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; };
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? b : 256 + n++;
      append_utf8(cp, &a->symbol[b]);
      a->byte[cp] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

// Replaces each text piece by the sub-pieces `split(text, &ranges)` gives.
// The first sub-piece keeps `at_start` when it begins at byte 0.
template <typename SplitFn>
void split_pieces(std::vector<Piece>* pieces, SplitFn&& split) {
  std::vector<Piece> out;
  out.reserve(pieces->size() * 2);
  std::vector<Range> ranges;
  for (Piece& p : *pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    ranges.clear();
    split(p.text, &ranges);
    for (const Range& r : ranges) {
      Piece q;
      q.text = p.text.substr(r.begin, r.end - r.begin);
      q.at_start = p.at_start && r.begin == 0;
      out.push_back(std::move(q));
    }
  }
  pieces->swap(out);
}

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    for (const auto& step : steps_) step->pre_tokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::shared_ptr<const Regex> re, SplitBehavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    std::vector<Span> spans;
    split_pieces(pieces, [&](const std::string& text, std::vector<Range>* out) {
      spans.clear();
      re_->find_spans(text, &spans);
      if (invert_) invert_spans(&spans);
      apply_behavior(spans, behavior_, out);
    });
  }

 private:
  std::shared_ptr<const Regex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

// Splits on characters `pred` accepts.
class CharSplitPreTokenizer final : public PreTokenizer {
 public:
  CharSplitPreTokenizer(bool (*pred)(uint32_t), SplitBehavior behavior) : pred_(pred), behavior_(behavior) {}
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    std::vector<Span> spans;
    split_pieces(pieces, [&](const std::string& text, std::vector<Range>* out) {
      spans.clear();
      find_char_spans(text, pred_, &spans);
      apply_behavior(spans, behavior_, out);
    });
  }

 private:
  bool (*pred_)(uint32_t);
  SplitBehavior behavior_;
};

// Whitespace: the pieces are the matches of \w+|[^\w\s]+ (Rust regex
// classes), everything else is dropped. A scanner, not PCRE2, because PCRE2's
// \w lacks the marks and connector punctuation that Rust's \w has.
class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    split_pieces(pieces, [](const std::string& text, std::vector<Range>* out) {
      enum Kind { kSpace, kWord, kOther };
      auto kind = [](uint32_t cp) { return is_word_char(cp) ? kWord : is_whitespace(cp) ? kSpace : kOther; };
      size_t i = 0;
      while (i < text.size()) {
        Utf8Char c = next_char(text, i);
        const Kind k = kind(c.cp);
        size_t j = i + c.len;
        while (j < text.size()) {
          c = next_char(text, j);
          if (kind(c.cp) != k) break;
          j += c.len;
        }
        if (k != kSpace) out->push_back({i, j});
        i = j;
      }
    });
  }
};

class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    if (add_prefix_space_) {
      for (Piece& p : *pieces) {
        if (p.id < 0 && !p.text.empty() && p.text[0] != ' ') p.text.insert(p.text.begin(), ' ');
      }
    }
    if (re_ != nullptr) {
      std::vector<Span> spans;
      split_pieces(pieces, [&](const std::string& text, std::vector<Range>* out) {
        spans.clear();
        re_->find_spans(text, &spans);
        apply_behavior(spans, SplitBehavior::kIsolated, out);
      });
    }
    const ByteAlphabet& a = byte_alphabet();
    std::string mapped;
    for (Piece& p : *pieces) {
      if (p.id >= 0) continue;
      mapped.clear();
      for (unsigned char b : p.text) mapped += a.symbol[b];
      p.text.swap(mapped);
    }
  }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const Regex> re_;  // null: no split (use_regex false)
};

enum class PrependScheme { kAlways, kFirst, kNever };

class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(uint32_t replacement, PrependScheme scheme, bool split)
      : replacement_cp_(replacement), scheme_(scheme), split_(split) {
    append_utf8(replacement, &replacement_);
  }
  void pre_tokenize(std::vector<Piece>* pieces) const override {
    for (Piece& p : *pieces) {
      if (p.id >= 0) continue;
      std::string out;
      out.reserve(p.text.size() + 8);
      for (char c : p.text) {
        if (c == ' ') {
          out += replacement_;
        } else {
          out.push_back(c);
        }
      }
      const bool starts = out.compare(0, replacement_.size(), replacement_) == 0;
      // HF prepends only to non-empty text (NormalizedString::prepend).
      if (!out.empty() && !starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        out.insert(0, replacement_);
      }
      p.text.swap(out);
    }
    if (!split_) return;
    std::vector<Span> spans;
    const uint32_t rep = replacement_cp_;
    split_pieces(pieces, [&](const std::string& text, std::vector<Range>* out) {
      spans.clear();
      find_char_spans(
          text, [rep](uint32_t cp) { return cp == rep; }, &spans);
      apply_behavior(spans, SplitBehavior::kMergedWithNext, out);
    });
  }

 private:
  uint32_t replacement_cp_;
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

absl::StatusOr<SplitBehavior> behavior_field(const Fields& f, const char* key, const char* fallback) {
  const json* v = f.get(key);
  std::string name = fallback;
  if (v != nullptr && !v->is_null()) {
    if (!v->is_string()) return f.error(std::string("\"") + key + "\" must be a string");
    name = v->get<std::string>();
  }
  SplitBehavior b;
  if (!parse_split_behavior(name, &b)) {
    return f.error("unknown behavior \"" + name +
                   "\" (expected Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous)");
  }
  return b;
}

}  // namespace

const std::string& byte_to_symbol(unsigned char b) { return byte_alphabet().symbol[b]; }

int byte_of_symbol(uint32_t cp) { return cp < 512 ? byte_alphabet().byte[cp] : -1; }

std::unique_ptr<PreTokenizer> gpt2_byte_level_pre_tokenizer() {
  absl::StatusOr<std::shared_ptr<const Regex>> re = Regex::compile(kGpt2Pattern, false, "GPT-2 pattern");
  return std::make_unique<ByteLevelPreTokenizer>(false, re.ok() ? *re : nullptr);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> parse_pre_tokenizer(const json& j, const std::string& where) {
  const std::string type = component_type(j);
  Fields f(j, where, "pre_tokenizer " + type);
  if (type == "Sequence") {
    PEFT_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<PreTokenizer>> steps,
                          parse_steps<PreTokenizer>(f, "pretokenizers", where, parse_pre_tokenizer));
    return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(steps)));
  }
  if (type == "Split") {
    const json* pattern = f.get("pattern");
    const json* regex = pattern ? member(*pattern, "Regex") : nullptr;
    const json* literal = pattern ? member(*pattern, "String") : nullptr;
    const json* text = regex != nullptr ? regex : literal;
    if (text == nullptr || !text->is_string()) {
      return f.error("\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    }
    PEFT_ASSIGN_OR_RETURN(SplitBehavior behavior, behavior_field(f, "behavior", ""));
    PEFT_ASSIGN_OR_RETURN(bool invert, f.boolean("invert", false));
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<const Regex> re,
                          Regex::compile(text->get<std::string>(), text == literal, where + ": pre_tokenizer Split"));
    return std::unique_ptr<PreTokenizer>(new SplitPreTokenizer(std::move(re), behavior, invert));
  }
  if (type == "ByteLevel") {
    // HF requires the field (its Rust default, true, would surprise a GPT-2
    // file that merely left it out), so a file without it is refused.
    if (f.get("add_prefix_space") == nullptr) return f.error("\"add_prefix_space\" is missing");
    PEFT_ASSIGN_OR_RETURN(bool prefix, f.boolean("add_prefix_space", false));
    PEFT_ASSIGN_OR_RETURN(bool use_regex, f.boolean("use_regex", true));
    std::shared_ptr<const Regex> re;
    if (use_regex) {
      PEFT_ASSIGN_OR_RETURN(re, Regex::compile(kGpt2Pattern, false, where));
    }
    return std::unique_ptr<PreTokenizer>(new ByteLevelPreTokenizer(prefix, std::move(re)));
  }
  if (type == "Metaspace") {
    PEFT_ASSIGN_OR_RETURN(uint32_t replacement, one_char(f, "replacement"));
    PrependScheme scheme = PrependScheme::kAlways;
    if (const json* s = f.get("prepend_scheme"); s != nullptr && !s->is_null()) {
      const std::string name = s->is_string() ? s->get<std::string>() : s->dump();
      if (name == "always") {
        scheme = PrependScheme::kAlways;
      } else if (name == "first") {
        scheme = PrependScheme::kFirst;
      } else if (name == "never") {
        scheme = PrependScheme::kNever;
      } else {
        return f.error("unknown prepend_scheme " + name + " (expected always, first or never)");
      }
    }
    PEFT_ASSIGN_OR_RETURN(bool prefix, f.boolean("add_prefix_space", true));
    if (!prefix) {
      // Older files spell "never" as add_prefix_space: false; HF rejects the
      // contradictory combination, and so do we.
      if (scheme != PrependScheme::kNever && f.get("prepend_scheme") != nullptr &&
          !f.get("prepend_scheme")->is_null()) {
        return f.error("add_prefix_space false contradicts prepend_scheme");
      }
      scheme = PrependScheme::kNever;
    }
    PEFT_ASSIGN_OR_RETURN(bool split, f.boolean("split", true));
    return std::unique_ptr<PreTokenizer>(new MetaspacePreTokenizer(replacement, scheme, split));
  }
  if (type == "Digits") {
    PEFT_ASSIGN_OR_RETURN(bool individual, f.boolean("individual_digits", false));
    return std::unique_ptr<PreTokenizer>(
        new CharSplitPreTokenizer(&is_numeric, individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous));
  }
  if (type == "Punctuation") {
    PEFT_ASSIGN_OR_RETURN(SplitBehavior behavior, behavior_field(f, "behavior", "Isolated"));
    return std::unique_ptr<PreTokenizer>(new CharSplitPreTokenizer(&is_punctuation, behavior));
  }
  if (type == "Whitespace") return std::unique_ptr<PreTokenizer>(new WhitespacePreTokenizer());
  if (type == "WhitespaceSplit") {
    return std::unique_ptr<PreTokenizer>(new CharSplitPreTokenizer(&is_whitespace, SplitBehavior::kRemoved));
  }
  return absl::InvalidArgumentError(absl::StrCat(where, ": unsupported pre_tokenizer \"", type,
                                                 "\" (supported: Sequence, Split, ByteLevel, Metaspace, Digits, "
                                                 "Punctuation, Whitespace, WhitespaceSplit)"));
}

}  // namespace peft::data::hf
