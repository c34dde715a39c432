// File: data/hf/unicode.h (internal to //data)
//
// UTF-8 stepping and the character classes of the Hugging Face tokenizers
// library (Rust `char` methods and `regex` classes), answered by ICU so that
// they follow the Unicode tables rather than ASCII.
//
// Text here is bytes: ill-formed UTF-8 is stepped over one byte at a time as
// kInvalidChar, which no class contains, so no input is ever rejected.
#ifndef PEFT_DATA_HF_UNICODE_H_
#define PEFT_DATA_HF_UNICODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace peft::data::hf {

/// The code point reported for one byte of ill-formed UTF-8.
inline constexpr uint32_t kInvalidChar = 0xFFFFFFFFu;

/// Length of the well-formed UTF-8 character at s[i] (RFC 3629: no overlongs,
/// surrogates or values above U+10FFFF); 0 when it is not well-formed.
size_t utf8_char_len(std::string_view s, size_t i);

/// One step through `s` from byte `i` (< s.size()).
struct Utf8Char {
  uint32_t cp;  // kInvalidChar for a byte of ill-formed UTF-8
  size_t len;   // bytes consumed, >= 1
};
Utf8Char next_char(std::string_view s, size_t i);

/// The character that ends at byte `end` (> 0), stepping back over one
/// well-formed character or one byte.
Utf8Char prev_char(std::string_view s, size_t end);

/// Appends the UTF-8 encoding of `cp` (<= U+10FFFF).
void append_utf8(uint32_t cp, std::string* out);

/// Whether every byte of `s` is ASCII.
bool is_ascii(std::string_view s);

/// Rust char::is_whitespace (the White_Space property).
bool is_whitespace(uint32_t cp);
/// Rust regex `\w`: Alphabetic, marks, decimal digits, connector punctuation
/// and Join_Control.
bool is_word_char(uint32_t cp);
/// Rust char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(uint32_t cp);
/// The Punctuation pre-tokenizer's test: ASCII punctuation or a P* category.
bool is_punctuation(uint32_t cp);

/// Appends Rust's char::to_lowercase(cp) (the full, context-free mapping).
void append_lowercase(uint32_t cp, std::string* out);

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

/// `s` in normal form `form`; stretches of ill-formed UTF-8 are kept as they
/// are and normalisation does not reach across them.
std::string normalize(std::string_view s, NormalForm form);

}  // namespace peft::data::hf

#endif  // PEFT_DATA_HF_UNICODE_H_
