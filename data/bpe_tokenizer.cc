#include "data/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include <pcre2.h>

#include "absl/strings/str_cat.h"
#include "data/json_util.h"
#include "data/pair_merge.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

using json = nlohmann::json;

constexpr const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr const char* kEndOfText = "<|endoftext|>";
constexpr size_t kMaxCacheEntries = 1 << 16;
// Ids may leave holes, but not arbitrarily large ones: a corrupt id must not
// make us allocate gigabytes.
constexpr int64_t kMaxIdSlack = 1 << 16;

// ---- UTF-8 ----------------------------------------------------------------

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the well-formed UTF-8 character at s[i] (RFC 3629: no overlongs,
// surrogates or values above U+10FFFF), or 0 when it is not well-formed.
size_t utf8_char_len(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](size_t k, unsigned lo, unsigned hi) { return k < s.size() && at(k) >= lo && at(k) <= hi; };
  const unsigned c = at(i);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1, 0x80, 0xBF) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xBF) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return cont(i + 1, lo, hi) && cont(i + 2, 0x80, 0xBF) && cont(i + 3, 0x80, 0xBF) ? 4 : 0;
  }
  return 0;
}

// Codepoint of a well-formed character of length `len` at s[i].
uint32_t utf8_codepoint(std::string_view s, size_t i, size_t len) {
  auto at = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (len) {
    case 1: return at(0);
    case 2: return ((at(0) & 0x1F) << 6) | (at(1) & 0x3F);
    case 3: return ((at(0) & 0x0F) << 12) | ((at(1) & 0x3F) << 6) | (at(2) & 0x3F);
    default: return ((at(0) & 0x07) << 18) | ((at(1) & 0x3F) << 12) | ((at(2) & 0x3F) << 6) | (at(3) & 0x3F);
  }
}

// ---- GPT-2's byte alphabet (encoder.py bytes_to_unicode) -------------------

struct ByteAlphabet {
  std::array<std::string, 256> byte_to_utf8;
  std::array<int16_t, 512> codepoint_to_byte;  // -1 where the codepoint is no byte's symbol
};

const ByteAlphabet& byte_alphabet() {
  static const ByteAlphabet* alphabet = [] {
    auto* a = new ByteAlphabet;
    a->codepoint_to_byte.fill(-1);
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); };
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const uint32_t cp = printable(b) ? b : 256 + n++;
      append_utf8(cp, &a->byte_to_utf8[b]);
      a->codepoint_to_byte[cp] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

std::string to_byte_symbols(std::string_view bytes) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (unsigned char b : bytes) out += a.byte_to_utf8[b];
  return out;
}

// HF ByteLevel decoder: all characters map back to bytes, else the piece's own
// UTF-8 bytes (e.g. an added token containing a plain space).
std::string from_byte_symbols(std::string_view piece) {
  const ByteAlphabet& a = byte_alphabet();
  std::string out;
  for (size_t i = 0; i < piece.size();) {
    const size_t len = utf8_char_len(piece, i);
    if (len == 0) return std::string(piece);
    const uint32_t cp = utf8_codepoint(piece, i, len);
    if (cp >= a.codepoint_to_byte.size() || a.codepoint_to_byte[cp] < 0) return std::string(piece);
    out.push_back(static_cast<char>(a.codepoint_to_byte[cp]));
    i += len;
  }
  return out;
}

// ---- PCRE2 ------------------------------------------------------------------

struct CodeFree {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataFree {
  void operator()(pcre2_match_data* md) const { pcre2_match_data_free(md); }
};
using MatchData = std::unique_ptr<pcre2_match_data, MatchDataFree>;

absl::StatusOr<std::shared_ptr<const pcre2_code>> compile_regex(const std::string& pattern, bool literal,
                                                                const std::string& where) {
  int error = 0;
  PCRE2_SIZE error_offset = 0;
  // PCRE2_UCP: \s, \p{L} etc. follow Unicode properties. PCRE2_LITERAL cannot
  // be combined with UCP (and needs no character classes).
  const uint32_t options = literal ? (PCRE2_UTF | PCRE2_LITERAL) : (PCRE2_UTF | PCRE2_UCP);
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                   &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat(where, ": cannot compile pre-tokenizer regex \"", pattern,
                                                   "\" at offset ", error_offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // optional speed-up; the interpreter is the fallback
  return std::shared_ptr<const pcre2_code>(code, CodeFree());
}

// HF Split(behavior="Isolated") on well-formed UTF-8: every match is a piece,
// and so is every non-empty stretch between matches.
void split_valid(const pcre2_code* re, pcre2_match_data* md, std::string_view s, std::vector<std::string>* out) {
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t gap_start = 0, pos = 0;
  while (pos < s.size()) {
    int rc = pcre2_match(re, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // JIT stack or match limits: retry in the interpreter before giving up.
      rc = pcre2_match(re, subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) break;  // no further match (or a hard limit): the rest is one gap
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
    const size_t start = ovector[0], end = ovector[1];
    if (end <= start) {  // empty match: step over one character
      if (start >= s.size()) break;
      const size_t len = utf8_char_len(s, start);
      pos = start + (len ? len : 1);
      continue;
    }
    if (start > gap_start) out->emplace_back(s.substr(gap_start, start - gap_start));
    out->emplace_back(s.substr(start, end - start));
    gap_start = pos = end;
  }
  if (gap_start < s.size()) out->emplace_back(s.substr(gap_start));
}

// Same for arbitrary bytes: each maximal run of ill-formed UTF-8 is a piece of
// its own and never reaches PCRE2.
void split_bytes(const pcre2_code* re, pcre2_match_data* md, std::string_view s, std::vector<std::string>* out) {
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size()) {
      const size_t len = utf8_char_len(s, j);
      if (len == 0) break;
      j += len;
    }
    if (j > i) split_valid(re, md, s.substr(i, j - i), out);
    size_t k = j;
    while (k < s.size() && utf8_char_len(s, k) == 0) ++k;
    if (k > j) out->emplace_back(s.substr(j, k - j));
    i = k;
  }
}

// Splits on every `sep` (empty fields kept, like Python's str.split(sep)).
std::vector<std::string_view> split_on(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (size_t i = s.find(sep); i != std::string_view::npos; i = s.find(sep, start)) {
    parts.push_back(s.substr(start, i - start));
    start = i + 1;
  }
  parts.push_back(s.substr(start));
  return parts;
}

// ---- JSON helpers -------------------------------------------------------------

const json* find_member(const json& j, const char* key) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(key);
  return it == j.end() ? nullptr : &*it;
}

std::string json_type(const json* j) {
  if (j == nullptr) return "missing";
  const json* type = find_member(*j, "type");
  if (type != nullptr && type->is_string()) return type->get<std::string>();
  return j->is_null() ? "null" : std::string(j->type_name());
}

// A special-token field of tokenizer_config.json: "tok", {"content": "tok"}, or null.
std::optional<std::string> token_content(const json* j) {
  if (j == nullptr) return std::nullopt;
  if (j->is_string()) return j->get<std::string>();
  if (const json* c = find_member(*j, "content"); c != nullptr && c->is_string()) return c->get<std::string>();
  return std::nullopt;
}

}  // namespace

// One pre-tokenizer step: optionally prefix a space, then split with a regex.
struct PreTokenizerStep {
  std::shared_ptr<const pcre2_code> regex;  // null: no split
  bool add_prefix_space = false;
};

struct BpeTokenizer::State {
  std::string source;               // for error messages
  std::vector<std::string> pieces;  // id -> vocabulary spelling ("" for unused ids)
  std::unordered_map<std::string, int32_t> piece_ids;
  struct Merge {
    int32_t rank;
    int32_t merged_id;
  };
  std::unordered_map<uint64_t, Merge> merges;  // (left id << 32 | right id) -> merge
  std::array<int32_t, 256> byte_ids{};         // id of each byte's one-symbol token
  std::vector<std::string> decoded;            // id -> bytes written by decode
  std::vector<char> special;                   // id -> skipped by decode
  std::vector<PreTokenizerStep> steps;
  bool ignore_merges = false;
  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false;

  mutable std::mutex cache_mu;
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache;  // pre-token bytes -> ids

  int32_t id_of(std::string_view piece) const {
    auto it = piece_ids.find(std::string(piece));
    return it == piece_ids.end() ? -1 : it->second;
  }

  absl::Status set_vocab(const json& vocab, const std::string& where) {
    if (!vocab.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": the vocabulary is not a JSON object of token -> id"));
    }
    if (vocab.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": the vocabulary is empty"));
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      if (!it.value().is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": vocabulary entry \"", it.key(), "\" has a non-integer id"));
      }
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= static_cast<int64_t>(vocab.size()) + kMaxIdSlack) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": vocabulary entry \"", it.key(), "\" has id ", id, " out of range"));
      }
      if (static_cast<size_t>(id) >= pieces.size()) pieces.resize(id + 1);
      if (!pieces[id].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": id ", id, " is used by both \"", pieces[id], "\" and \"", it.key(), "\""));
      }
      if (it.key().empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty vocabulary entry"));
      pieces[id] = it.key();
      piece_ids[it.key()] = static_cast<int32_t>(id);
    }
    return absl::OkStatus();
  }

  absl::Status add_merge(std::string_view left, std::string_view right, int32_t rank, const std::string& where) {
    const int32_t l = id_of(left), r = id_of(right), m = id_of(std::string(left) + std::string(right));
    if (l < 0 || r < 0 || m < 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": merge #", rank, " \"", std::string(left), " ",
                                                     std::string(right),
                                                     "\" uses a token missing from the vocabulary"));
    }
    // Later duplicates win, as in encoder.py's dict and HF's HashMap.
    merges[(static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r)] = Merge{rank, m};
    return absl::OkStatus();
  }

  absl::Status parse_merges_text(std::string_view text, const std::string& where) {
    int32_t rank = 0;
    bool first = true;
    for (std::string_view line : split_on(text, '\n')) {
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (first && line.substr(0, 8) == "#version") {
        first = false;
        continue;
      }
      first = false;
      if (line.empty()) continue;
      std::vector<std::string_view> parts = split_on(line, ' ');
      if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": merge line ", rank + 1, " is not \"a b\": \"",
                                                       std::string(line.substr(0, 80)), "\""));
      }
      PEFT_RETURN_IF_ERROR(add_merge(parts[0], parts[1], rank, where));
      ++rank;
    }
    return absl::OkStatus();
  }

  // Registers an added token (tokenizer.json `added_tokens`).
  absl::Status add_token(const json& entry, const std::string& where) {
    const json* id = find_member(entry, "id");
    const json* content = find_member(entry, "content");
    if (id == nullptr || !id->is_number_integer() || content == nullptr || !content->is_string() ||
        id->get<int64_t>() < 0 || id->get<int64_t>() >= static_cast<int64_t>(pieces.size()) + kMaxIdSlack) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": malformed added_tokens entry ", entry.dump()));
    }
    const int32_t i = static_cast<int32_t>(id->get<int64_t>());
    const std::string text = content->get<std::string>();
    if (static_cast<size_t>(i) >= pieces.size()) pieces.resize(i + 1);
    if (!pieces[i].empty() && pieces[i] != text) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": added token \"", text, "\" reuses id ", i, " of \"", pieces[i], "\""));
    }
    pieces[i] = text;
    piece_ids.emplace(text, i);
    if (const json* s = find_member(entry, "special"); s != nullptr && s->is_boolean() && s->get<bool>()) {
      special_ids.push_back(i);
    }
    return absl::OkStatus();
  }

  absl::Status add_pre_tokenizer(const json& pt, const std::string& where, bool* byte_level) {
    const std::string type = json_type(&pt);
    if (type == "Sequence") {
      const json* list = find_member(pt, "pretokenizers");
      if (list == nullptr || !list->is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": pre_tokenizer Sequence without pretokenizers"));
      }
      for (const json& item : *list) {
        PEFT_RETURN_IF_ERROR(add_pre_tokenizer(item, where, byte_level));
      }
      return absl::OkStatus();
    }
    if (type == "ByteLevel") {
      *byte_level = true;
      PreTokenizerStep step;
      const json* prefix = find_member(pt, "add_prefix_space");
      step.add_prefix_space = prefix != nullptr && prefix->is_boolean() && prefix->get<bool>();
      const json* use_regex = find_member(pt, "use_regex");
      if (use_regex == nullptr || !use_regex->is_boolean() || use_regex->get<bool>()) {
        PEFT_ASSIGN_OR_RETURN(step.regex, compile_regex(kGpt2Pattern, /*literal=*/false, where));
      }
      steps.push_back(std::move(step));
      return absl::OkStatus();
    }
    if (type == "Split") {
      const json* pattern = find_member(pt, "pattern");
      const json* behavior = find_member(pt, "behavior");
      const json* invert = find_member(pt, "invert");
      const json* regex = pattern ? find_member(*pattern, "Regex") : nullptr;
      const json* literal = pattern ? find_member(*pattern, "String") : nullptr;
      const bool isolated = behavior != nullptr && behavior->is_string() && behavior->get<std::string>() == "Isolated";
      const bool inverted = invert != nullptr && invert->is_boolean() && invert->get<bool>();
      const json* text = regex != nullptr ? regex : literal;
      if (text == nullptr || !text->is_string() || !isolated || inverted) {
        return absl::InvalidArgumentError(
            absl::StrCat(where,
                         ": unsupported Split pre-tokenizer (only a Regex or String pattern with behavior \"Isolated\" "
                         "and invert=false): ",
                         pt.dump().substr(0, 200)));
      }
      PEFT_ASSIGN_OR_RETURN(std::shared_ptr<const pcre2_code> re,
                            compile_regex(text->get<std::string>(), /*literal=*/text == literal, where));
      steps.push_back(PreTokenizerStep{std::move(re), false});
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": unsupported pre_tokenizer \"", type,
        "\" (supported: ByteLevel, Split with a regex, Sequence of them; this loader handles byte-level BPE only)"));
  }

  // The TemplateProcessing post-processor's leading special token, if any.
  std::optional<int32_t> template_bos(const json* pp) const {
    if (pp == nullptr) return std::nullopt;
    const std::string type = json_type(pp);
    if (type == "Sequence") {
      if (const json* list = find_member(*pp, "processors"); list != nullptr && list->is_array()) {
        for (const json& item : *list) {
          if (auto id = template_bos(&item)) return id;
        }
      }
      return std::nullopt;
    }
    if (type != "TemplateProcessing") return std::nullopt;
    const json* single = find_member(*pp, "single");
    if (single == nullptr || !single->is_array() || single->empty()) return std::nullopt;
    const json* token = find_member((*single)[0], "SpecialToken");
    const json* name = token ? find_member(*token, "id") : nullptr;
    if (name == nullptr || !name->is_string()) return std::nullopt;
    const std::string key = name->get<std::string>();
    if (const json* table = find_member(*pp, "special_tokens"); table != nullptr) {
      const json* entry = find_member(*table, key.c_str());
      const json* ids = entry ? find_member(*entry, "ids") : nullptr;
      if (ids != nullptr && ids->is_array() && ids->size() == 1 && (*ids)[0].is_number_integer()) {
        return static_cast<int32_t>((*ids)[0].get<int64_t>());
      }
    }
    const int32_t id = id_of(key);
    return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
  }

  // Special ids and decode tables; `dir` may hold a tokenizer_config.json.
  absl::Status finish(const std::string& where, const std::filesystem::path& dir, std::optional<int32_t> tmpl_bos) {
    const ByteAlphabet& alphabet = byte_alphabet();
    for (int b = 0; b < 256; ++b) {
      byte_ids[b] = id_of(alphabet.byte_to_utf8[b]);
      if (byte_ids[b] < 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": not a byte-level BPE vocabulary: the symbol \"",
                                                       alphabet.byte_to_utf8[b], "\" of byte ", b, " is missing"));
      }
    }
    const int32_t end_of_text = id_of(kEndOfText);
    bos = tmpl_bos.value_or(end_of_text);
    eos = end_of_text;
    add_bos = tmpl_bos.has_value();

    std::error_code ec;
    const std::filesystem::path config_path = dir / "tokenizer_config.json";
    if (std::filesystem::is_regular_file(config_path, ec)) {
      PEFT_ASSIGN_OR_RETURN(json config, internal::read_json(config_path.string()));
      auto apply = [&](const char* key, int32_t* target) {
        if (auto token = token_content(find_member(config, key))) {
          if (int32_t id = id_of(*token); id >= 0) *target = id;
        }
      };
      apply("bos_token", &bos);
      apply("eos_token", &eos);
      apply("pad_token", &pad);
      if (const json* a = find_member(config, "add_bos_token"); a != nullptr && a->is_boolean()) {
        add_bos = a->get<bool>();
      }
    }
    for (int32_t* id : {&bos, &eos, &pad}) {
      if (*id >= static_cast<int32_t>(pieces.size())) *id = -1;
    }
    if (bos < 0) add_bos = false;

    special.assign(pieces.size(), 0);
    for (size_t i = 0; i < pieces.size(); ++i) special[i] = pieces[i].empty();
    for (int32_t id : special_ids) special[id] = 1;
    for (int32_t id : {bos, eos, pad}) {
      if (id >= 0) special[id] = 1;
    }
    decoded.resize(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (!special[i]) decoded[i] = from_byte_symbols(pieces[i]);
    }
    return absl::OkStatus();
  }

  std::vector<int32_t> bpe(std::string_view word) const {
    if (ignore_merges) {
      if (int32_t id = id_of(to_byte_symbols(word)); id >= 0) return {id};
    }
    std::vector<int32_t> ids;
    ids.reserve(word.size());
    for (unsigned char b : word) ids.push_back(byte_ids[b]);
    internal::merge_pairs<int32_t>(&ids, [this](int32_t l, int32_t r, int32_t* rank, int32_t* merged) {
      auto it = merges.find((static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r));
      if (it == merges.end()) return false;
      *rank = it->second.rank;
      *merged = it->second.merged_id;
      return true;
    });
    return ids;
  }

  std::vector<int32_t> special_ids;  // added tokens marked special
};

BpeTokenizer::BpeTokenizer(std::unique_ptr<State> state) : state_(std::move(state)) {}

BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create(const std::string& vocab_path,
                                                                   const std::string& merges_path) {
  auto state = std::make_unique<State>();
  PEFT_ASSIGN_OR_RETURN(json vocab, internal::read_json(vocab_path));
  PEFT_RETURN_IF_ERROR(state->set_vocab(vocab, vocab_path));
  PEFT_ASSIGN_OR_RETURN(std::string merges, io::read_file(merges_path));
  PEFT_RETURN_IF_ERROR(state->parse_merges_text(merges, merges_path));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<const pcre2_code> re,
                        compile_regex(kGpt2Pattern, /*literal=*/false, vocab_path));
  state->steps.push_back(PreTokenizerStep{std::move(re), false});
  if (int32_t eot = state->id_of(kEndOfText); eot >= 0) state->special_ids.push_back(eot);
  const std::filesystem::path dir = std::filesystem::path(vocab_path).parent_path();
  PEFT_RETURN_IF_ERROR(state->finish(vocab_path, dir, std::nullopt));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create(const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(json root, internal::read_json(path));
  auto bad = [&path](const std::string& why) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", why)); };
  const json* model = find_member(root, "model");
  if (model == nullptr || !model->is_object()) return bad("not a tokenizer.json (no \"model\" object)");
  const std::string model_type = json_type(model);
  if (model_type != "BPE" && model_type != "object") {  // "object": older files without "type"
    return bad(absl::StrCat("model type \"", model_type, "\" is not BPE"));
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = find_member(*model, key);
    if (v != nullptr && !v->is_null() && !(v->is_string() && v->get<std::string>().empty())) {
      return bad(absl::StrCat("unsupported BPE option ", key, " = ", v->dump()));
    }
  }
  if (const json* normalizer = find_member(root, "normalizer"); normalizer != nullptr && !normalizer->is_null()) {
    return bad(
        absl::StrCat("unsupported normalizer \"", json_type(normalizer), "\" (byte-level BPE tokenizers have none)"));
  }

  auto state = std::make_unique<State>();
  const json* vocab = find_member(*model, "vocab");
  if (vocab == nullptr) return bad("BPE model without \"vocab\"");
  PEFT_RETURN_IF_ERROR(state->set_vocab(*vocab, path));
  const json* merges = find_member(*model, "merges");
  if (merges == nullptr || !merges->is_array()) return bad("BPE model without a \"merges\" array");
  int32_t rank = 0;
  for (const json& m : *merges) {
    std::string left, right;
    if (m.is_string()) {
      const std::string& text = m.get_ref<const std::string&>();
      std::vector<std::string_view> parts = split_on(text, ' ');
      if (parts.size() != 2) return bad(absl::StrCat("merge #", rank, " ", m.dump(), " is not \"a b\""));
      left = std::string(parts[0]);
      right = std::string(parts[1]);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return bad(absl::StrCat("merge #", rank, " ", m.dump().substr(0, 80), " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    PEFT_RETURN_IF_ERROR(state->add_merge(left, right, rank, path));
    ++rank;
  }
  if (const json* im = find_member(*model, "ignore_merges"); im != nullptr && im->is_boolean()) {
    state->ignore_merges = im->get<bool>();
  }
  if (const json* added = find_member(root, "added_tokens"); added != nullptr && added->is_array()) {
    for (const json& entry : *added) {
      PEFT_RETURN_IF_ERROR(state->add_token(entry, path));
    }
  }
  const json* pre = find_member(root, "pre_tokenizer");
  bool byte_level = false;
  if (pre == nullptr || pre->is_null()) {
    return bad("no pre_tokenizer: only byte-level BPE (ByteLevel pre-tokenizer) is supported");
  }
  PEFT_RETURN_IF_ERROR(state->add_pre_tokenizer(*pre, path, &byte_level));
  if (!byte_level) return bad("the pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");

  const std::optional<int32_t> tmpl_bos = state->template_bos(find_member(root, "post_processor"));
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  PEFT_RETURN_IF_ERROR(state->finish(path, dir, tmpl_bos));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  const State& st = *state_;
  std::vector<std::string> pieces{std::string(text)};
  std::vector<std::string> next;
  for (const PreTokenizerStep& step : st.steps) {
    if (step.add_prefix_space) {
      for (std::string& p : pieces) {
        if (!p.empty() && p[0] != ' ') p.insert(p.begin(), ' ');
      }
    }
    if (step.regex == nullptr) continue;
    MatchData md(pcre2_match_data_create_from_pattern(step.regex.get(), nullptr));
    if (md == nullptr) continue;  // out of memory: leave this step's pieces unsplit
    next.clear();
    for (const std::string& p : pieces) split_bytes(step.regex.get(), md.get(), p, &next);
    pieces.swap(next);
  }

  std::vector<int32_t> ids;
  for (const std::string& piece : pieces) {
    if (piece.empty()) continue;
    {
      std::lock_guard<std::mutex> lock(st.cache_mu);
      if (auto it = st.cache.find(piece); it != st.cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    std::vector<int32_t> word = st.bpe(piece);
    ids.insert(ids.end(), word.begin(), word.end());
    std::lock_guard<std::mutex> lock(st.cache_mu);
    if (st.cache.size() >= kMaxCacheEntries) st.cache.clear();
    st.cache.emplace(piece, std::move(word));
  }
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size() || state_->special[id]) continue;
    out += state_->decoded[id];
  }
  return out;
}

int32_t BpeTokenizer::vocab_size() const { return static_cast<int32_t>(state_->pieces.size()); }
int32_t BpeTokenizer::bos_id() const { return state_->bos; }
int32_t BpeTokenizer::eos_id() const { return state_->eos; }
int32_t BpeTokenizer::pad_id() const { return state_->pad; }
bool BpeTokenizer::add_bos_by_default() const { return state_->add_bos; }

std::string BpeTokenizer::id_to_piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? state_->pieces[id] : std::string();
}

int32_t BpeTokenizer::piece_to_id(std::string_view piece) const { return state_->id_of(piece); }

std::vector<std::string> BpeTokenizer::merges() const {
  // The table is keyed by pair; rebuild the list by rank.
  std::vector<std::pair<int32_t, uint64_t>> by_rank;
  by_rank.reserve(state_->merges.size());
  for (const auto& [pair, merge] : state_->merges) by_rank.emplace_back(merge.rank, pair);
  std::sort(by_rank.begin(), by_rank.end());
  std::vector<std::string> out;
  out.reserve(by_rank.size());
  for (const auto& [rank, pair] : by_rank) {
    out.push_back(state_->pieces[pair >> 32] + " " + state_->pieces[pair & 0xFFFFFFFFu]);
  }
  return out;
}

bool BpeTokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && state_->special[id]; }

}  // namespace peft::data
