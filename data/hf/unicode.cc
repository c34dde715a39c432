#include "data/hf/unicode.h"

#include <vector>

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/ustring.h>
#include <unicode/utypes.h>

namespace peft::data::hf {

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

Utf8Char next_char(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(s[i + k])); };
  switch (utf8_char_len(s, i)) {
    case 1: return {at(0), 1};
    case 2: return {((at(0) & 0x1F) << 6) | (at(1) & 0x3F), 2};
    case 3: return {((at(0) & 0x0F) << 12) | ((at(1) & 0x3F) << 6) | (at(2) & 0x3F), 3};
    case 4: return {((at(0) & 0x07) << 18) | ((at(1) & 0x3F) << 12) | ((at(2) & 0x3F) << 6) | (at(3) & 0x3F), 4};
    default: return {kInvalidChar, 1};
  }
}

Utf8Char prev_char(std::string_view s, size_t end) {
  // A well-formed character is at most 4 bytes; try the longest start first
  // so that a continuation byte is never taken for a character of its own.
  for (size_t len = end < 4 ? end : 4; len >= 2; --len) {
    if (utf8_char_len(s, end - len) == len) return next_char(s, end - len);
  }
  return next_char(s.substr(0, end), end - 1);
}

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

bool is_ascii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

bool is_whitespace(uint32_t cp) {
  if (cp == kInvalidChar) return false;
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE);
}

bool is_word_char(uint32_t cp) {
  if (cp == kInvalidChar) return false;
  if (cp < 0x80) {
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || (cp >= '0' && cp <= '9') || cp == '_';
  }
  const UChar32 c = static_cast<UChar32>(cp);
  if (u_hasBinaryProperty(c, UCHAR_ALPHABETIC) || u_hasBinaryProperty(c, UCHAR_JOIN_CONTROL)) return true;
  const int8_t type = u_charType(c);
  return type == U_NON_SPACING_MARK || type == U_ENCLOSING_MARK || type == U_COMBINING_SPACING_MARK ||
         type == U_DECIMAL_DIGIT_NUMBER || type == U_CONNECTOR_PUNCTUATION;
}

bool is_numeric(uint32_t cp) {
  if (cp == kInvalidChar) return false;
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  const int8_t type = u_charType(static_cast<UChar32>(cp));
  return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

bool is_punctuation(uint32_t cp) {
  if (cp == kInvalidChar) return false;
  if (cp < 0x80)
    return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
           (cp >= 0x7B && cp <= 0x7E);
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION: return true;
    default: return false;
  }
}

void append_lowercase(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    return;
  }
  // The only unconditional multi-character lowercase mapping of
  // SpecialCasing.txt; everything else is the simple mapping.
  if (cp == 0x130) {
    out->append("i\xCC\x87");
    return;
  }
  append_utf8(static_cast<uint32_t>(u_tolower(static_cast<UChar32>(cp))), out);
}

namespace {

const UNormalizer2* normalizer_for(NormalForm form) {
  UErrorCode status = U_ZERO_ERROR;
  const UNormalizer2* n = nullptr;
  switch (form) {
    case NormalForm::kNfc: n = unorm2_getNFCInstance(&status); break;
    case NormalForm::kNfd: n = unorm2_getNFDInstance(&status); break;
    case NormalForm::kNfkc: n = unorm2_getNFKCInstance(&status); break;
    case NormalForm::kNfkd: n = unorm2_getNFKDInstance(&status); break;
  }
  return U_SUCCESS(status) ? n : nullptr;
}

// Normal form of well-formed UTF-8 `s`; `s` itself if ICU fails (it only
// fails on memory exhaustion).
std::string normalize_valid(std::string_view s, const UNormalizer2* n) {
  if (s.empty() || is_ascii(s)) return std::string(s);  // ASCII is invariant under all four forms
  UErrorCode status = U_ZERO_ERROR;
  int32_t len16 = 0;
  u_strFromUTF8(nullptr, 0, &len16, s.data(), static_cast<int32_t>(s.size()), &status);
  status = U_ZERO_ERROR;
  std::vector<UChar> src(static_cast<size_t>(len16) + 1);
  u_strFromUTF8(src.data(), len16 + 1, nullptr, s.data(), static_cast<int32_t>(s.size()), &status);
  if (U_FAILURE(status)) return std::string(s);
  // Decompositions grow text by a bounded factor (at most 18x per character
  // in Unicode); retry once with the size ICU asks for.
  std::vector<UChar> dst(static_cast<size_t>(len16) * 4 + 16);
  int32_t out16 = unorm2_normalize(n, src.data(), len16, dst.data(), static_cast<int32_t>(dst.size()), &status);
  if (status == U_BUFFER_OVERFLOW_ERROR) {
    status = U_ZERO_ERROR;
    dst.resize(static_cast<size_t>(out16) + 1);
    out16 = unorm2_normalize(n, src.data(), len16, dst.data(), static_cast<int32_t>(dst.size()), &status);
  }
  if (U_FAILURE(status)) return std::string(s);
  int32_t len8 = 0;
  status = U_ZERO_ERROR;
  u_strToUTF8(nullptr, 0, &len8, dst.data(), out16, &status);
  std::string out(static_cast<size_t>(len8), '\0');
  status = U_ZERO_ERROR;
  u_strToUTF8(out.data(), len8, nullptr, dst.data(), out16, &status);
  if (U_FAILURE(status) && status != U_STRING_NOT_TERMINATED_WARNING) return std::string(s);
  return out;
}

}  // namespace

std::string normalize(std::string_view s, NormalForm form) {
  if (is_ascii(s)) return std::string(s);
  const UNormalizer2* n = normalizer_for(form);
  if (n == nullptr) return std::string(s);
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    while (j < s.size()) {
      const size_t len = utf8_char_len(s, j);
      if (len == 0) break;
      j += len;
    }
    out += normalize_valid(s.substr(i, j - i), n);
    while (j < s.size() && utf8_char_len(s, j) == 0) out.push_back(s[j++]);
    i = j;
  }
  return out;
}

}  // namespace peft::data::hf
