#include "data/hf/decoders.h"

#include <utility>

#include "data/hf/pattern.h"
#include "data/hf/pre_tokenizers.h"
#include "data/hf/unicode.h"
#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (const auto& step : steps_) step->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::string out;
    std::string bytes;
    for (const std::string& t : *tokens) {
      bytes.clear();
      bool all = true;
      for (size_t i = 0; i < t.size() && all;) {
        const Utf8Char c = next_char(t, i);
        const int b = c.cp == kInvalidChar ? -1 : byte_of_symbol(c.cp);
        if (b < 0) {
          all = false;
        } else {
          bytes.push_back(static_cast<char>(b));
        }
        i += c.len;
      }
      // A token with any character outside the byte alphabet (an added token
      // such as "<|user|> ") is written as it is spelled.
      out += all ? bytes : t;
    }
    tokens->assign(1, std::move(out));
  }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(std::string replacement, bool strip_first)
      : replacement_(std::move(replacement)), strip_first_(strip_first) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      std::string out;
      for (size_t k = 0; k < t.size();) {
        if (t.compare(k, replacement_.size(), replacement_) == 0) {
          if (!(i == 0 && strip_first_)) out.push_back(' ');
          k += replacement_.size();
        } else {
          out.push_back(t[k++]);
        }
      }
      t.swap(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class ByteFallbackDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::vector<std::string> out;
    out.reserve(tokens->size());
    std::string bytes;
    bool in_bytes = false;
    for (std::string& t : *tokens) {
      int b = byte_value(t);
      if (b >= 0) {
        bytes.push_back(static_cast<char>(b));
        in_bytes = true;
        continue;
      }
      if (in_bytes) out.push_back(std::move(bytes));
      bytes.clear();
      in_bytes = false;
      out.push_back(std::move(t));
    }
    if (in_bytes) out.push_back(std::move(bytes));
    tokens->swap(out);
  }

 private:
  // The byte of a "<0xAB>" token (hex digits in either case), else -1.
  static int byte_value(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
  }
};

class FuseDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::string out;
    for (const std::string& t : *tokens) out += t;
    tokens->assign(1, std::move(out));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    for (std::string& t : *tokens) {
      size_t begin = 0;
      for (size_t n = 0; n < start_ && begin < t.size(); ++n) {
        const Utf8Char c = next_char(t, begin);
        if (c.cp != content_) break;
        begin += c.len;
      }
      size_t end = t.size();
      for (size_t n = 0; n < stop_ && end > begin; ++n) {
        const Utf8Char c = prev_char(t, end);
        if (c.cp != content_) break;
        end -= c.len;
      }
      if (begin > 0 || end < t.size()) t = t.substr(begin, end - begin);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::shared_ptr<const Regex> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void decode_chain(std::vector<std::string>* tokens) const override {
    std::vector<Span> spans;
    for (std::string& t : *tokens) {
      spans.clear();
      pattern_->find_spans(t, &spans);
      std::string out;
      for (const Span& s : spans) {
        if (s.match) {
          out += content_;
        } else {
          out.append(t, s.begin, s.end - s.begin);
        }
      }
      t.swap(out);
    }
  }

 private:
  std::shared_ptr<const Regex> pattern_;
  std::string content_;
};

}  // namespace

std::string Decoder::decode(std::vector<std::string> tokens) const {
  decode_chain(&tokens);
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

std::unique_ptr<Decoder> byte_level_decoder() { return std::make_unique<ByteLevelDecoder>(); }

absl::StatusOr<std::unique_ptr<Decoder>> parse_decoder(const json& j, const std::string& where) {
  const std::string type = component_type(j);
  Fields f(j, where, "decoder " + type);
  if (type == "Sequence") {
    PEFT_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Decoder>> steps,
                          parse_steps<Decoder>(f, "decoders", where, parse_decoder));
    return std::unique_ptr<Decoder>(new SequenceDecoder(std::move(steps)));
  }
  if (type == "ByteLevel") return byte_level_decoder();
  if (type == "Metaspace") {
    PEFT_ASSIGN_OR_RETURN(uint32_t rep, one_char(f, "replacement"));
    std::string replacement;
    append_utf8(rep, &replacement);
    bool strip_first = true;
    if (const json* s = f.get("prepend_scheme"); s != nullptr && !s->is_null()) {
      if (!s->is_string() ||
          (s->get<std::string>() != "always" && s->get<std::string>() != "first" && s->get<std::string>() != "never")) {
        return f.error("unknown prepend_scheme " + s->dump() + " (expected always, first or never)");
      }
      strip_first = s->get<std::string>() != "never";
    }
    PEFT_ASSIGN_OR_RETURN(bool prefix, f.boolean("add_prefix_space", true));
    if (!prefix) strip_first = false;
    return std::unique_ptr<Decoder>(new MetaspaceDecoder(std::move(replacement), strip_first));
  }
  if (type == "ByteFallback") return std::unique_ptr<Decoder>(new ByteFallbackDecoder());
  if (type == "Fuse") return std::unique_ptr<Decoder>(new FuseDecoder());
  if (type == "Strip") {
    PEFT_ASSIGN_OR_RETURN(uint32_t content, one_char(f, "content"));
    PEFT_ASSIGN_OR_RETURN(int64_t start, f.count("start", 0));
    PEFT_ASSIGN_OR_RETURN(int64_t stop, f.count("stop", 0));
    return std::unique_ptr<Decoder>(new StripDecoder(content, static_cast<size_t>(start), static_cast<size_t>(stop)));
  }
  if (type == "Replace") {
    const json* pattern = f.get("pattern");
    const json* regex = pattern ? member(*pattern, "Regex") : nullptr;
    const json* literal = pattern ? member(*pattern, "String") : nullptr;
    const json* text = regex != nullptr ? regex : literal;
    if (text == nullptr || !text->is_string()) {
      return f.error("\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    }
    if (text == literal && text->get<std::string>().empty()) return f.error("an empty String pattern matches nothing");
    PEFT_ASSIGN_OR_RETURN(std::string content, f.string("content"));
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<const Regex> re,
                          Regex::compile(text->get<std::string>(), text == literal, where + ": decoder Replace"));
    return std::unique_ptr<Decoder>(new ReplaceDecoder(std::move(re), std::move(content)));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(where, ": unsupported decoder \"", type,
                   "\" (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, Sequence)"));
}

}  // namespace peft::data::hf
