#include "data/hf/normalizers.h"

#include <utility>
#include <vector>

#include "data/hf/pattern.h"
#include "data/hf/unicode.h"
#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(std::string* text) const override {
    for (const auto& step : steps_) step->normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prefix_);
  }

 private:
  std::string prefix_;
};

class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::shared_ptr<const Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(std::string* text) const override {
    std::vector<Span> spans;
    pattern_->find_spans(*text, &spans);
    bool any = false;
    for (const Span& s : spans) any |= s.match;
    if (!any) return;
    std::string out;
    out.reserve(text->size());
    for (const Span& s : spans) {
      if (s.match) {
        out += content_;
      } else {
        out.append(*text, s.begin, s.end - s.begin);
      }
    }
    *text = std::move(out);
  }

 private:
  std::shared_ptr<const Regex> pattern_;
  std::string content_;
};

class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  void normalize(std::string* text) const override {
    if (!is_ascii(*text)) *text = hf::normalize(*text, form_);
  }

 private:
  NormalForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  void normalize(std::string* text) const override {
    std::string out;
    out.reserve(text->size());
    const std::string_view s = *text;
    for (size_t i = 0; i < s.size();) {
      const Utf8Char c = next_char(s, i);
      if (c.cp == kInvalidChar) {
        out.push_back(s[i]);
      } else {
        append_lowercase(c.cp, &out);
      }
      i += c.len;
    }
    *text = std::move(out);
  }
};

class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(std::string* text) const override {
    const std::string_view s = *text;
    size_t begin = 0, end = s.size();
    if (left_) {
      while (begin < end) {
        const Utf8Char c = next_char(s, begin);
        if (!is_whitespace(c.cp)) break;
        begin += c.len;
      }
    }
    if (right_) {
      while (end > begin) {
        const Utf8Char c = prev_char(s, end);
        if (!is_whitespace(c.cp)) break;
        end -= c.len;
      }
    }
    if (begin > 0 || end < s.size()) *text = text->substr(begin, end - begin);
  }

 private:
  bool left_, right_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> parse_normalizer(const json& j, const std::string& where) {
  const std::string type = component_type(j);
  Fields f(j, where, "normalizer " + type);
  if (type == "Sequence") {
    PEFT_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Normalizer>> steps,
                          parse_steps<Normalizer>(f, "normalizers", where, parse_normalizer));
    return std::unique_ptr<Normalizer>(new SequenceNormalizer(std::move(steps)));
  }
  if (type == "Prepend") {
    PEFT_ASSIGN_OR_RETURN(std::string prefix, f.string("prepend"));
    return std::unique_ptr<Normalizer>(new PrependNormalizer(std::move(prefix)));
  }
  if (type == "Replace") {
    const json* pattern = f.get("pattern");
    const json* regex = pattern ? member(*pattern, "Regex") : nullptr;
    const json* literal = pattern ? member(*pattern, "String") : nullptr;
    const json* text = regex != nullptr ? regex : literal;
    if (text == nullptr || !text->is_string()) {
      return f.error("\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    }
    PEFT_ASSIGN_OR_RETURN(std::string content, f.string("content"));
    if (text == literal && text->get<std::string>().empty()) {
      return f.error("an empty String pattern matches nothing");
    }
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<const Regex> re,
                          Regex::compile(text->get<std::string>(), text == literal, where + ": normalizer Replace"));
    return std::unique_ptr<Normalizer>(new ReplaceNormalizer(std::move(re), std::move(content)));
  }
  if (type == "NFC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfc));
  if (type == "NFD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfd));
  if (type == "NFKC") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfkc));
  if (type == "NFKD") return std::unique_ptr<Normalizer>(new UnicodeNormalizer(NormalForm::kNfkd));
  if (type == "Lowercase") return std::unique_ptr<Normalizer>(new LowercaseNormalizer());
  if (type == "Strip") {
    PEFT_ASSIGN_OR_RETURN(bool left, f.boolean("strip_left", true));
    PEFT_ASSIGN_OR_RETURN(bool right, f.boolean("strip_right", true));
    return std::unique_ptr<Normalizer>(new StripNormalizer(left, right));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported normalizer \"", type,
                   "\" (supported: Sequence, Prepend, Replace, NFC, NFD, NFKC, NFKD, Lowercase, Strip)"));
}

}  // namespace peft::data::hf
