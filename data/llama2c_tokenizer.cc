#include "data/llama2c_tokenizer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/pair_merge.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

constexpr int32_t kMaxTokenLengthLimit = 1 << 16;
constexpr size_t kMaxVocab = size_t{1} << 24;
constexpr float kMinMergeScore = -1e10f;  // run.c's initial best_score

// Reads a little-endian 4-byte value at data[*offset] (caller checked bounds).
template <typename T>
T read_le(std::string_view data, size_t offset) {
  static_assert(sizeof(T) == 4);
  uint32_t bits = 0;
  for (int i = 3; i >= 0; --i) bits = (bits << 8) | static_cast<unsigned char>(data[offset + i]);
  T value;
  std::memcpy(&value, &bits, 4);
  return value;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// The byte of a "<0xXX>" piece, or -1.
int byte_piece_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int hi = hex_value(piece[3]), lo = hex_value(piece[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

Llama2cTokenizer::Llama2cTokenizer(int32_t max_token_length, std::vector<std::string> pieces, std::vector<float> scores)
    : max_token_length_(max_token_length), pieces_(std::move(pieces)), scores_(std::move(scores)) {
  index_.reserve(pieces_.size());
  // run.c bsearches a sorted copy; with duplicate strings either id could win.
  // Keep the lowest id so the choice is deterministic.
  for (size_t i = 0; i < pieces_.size(); ++i) index_.emplace(pieces_[i], static_cast<int32_t>(i));
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::create(const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(std::string data, io::read_file(path));
  return create_from_bytes(data, path);
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::create_from_bytes(std::string_view data,
                                                                                      const std::string& name) {
  auto bad = [&name](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a valid llama2.c tokenizer.bin: ", why));
  };
  if (data.size() < 4) return bad(absl::StrCat("file of ", data.size(), " bytes is too short"));
  const int32_t max_len = read_le<int32_t>(data, 0);
  if (max_len <= 0 || max_len > kMaxTokenLengthLimit) {
    return bad(absl::StrCat("max_token_length ", max_len, " is not in [1, ", kMaxTokenLengthLimit, "]"));
  }
  std::vector<std::string> pieces;
  std::vector<float> scores;
  size_t offset = 4;
  while (offset < data.size()) {
    const size_t id = pieces.size();
    if (id >= kMaxVocab) return bad("more than 2^24 tokens");
    if (data.size() - offset < 8) {
      return bad(absl::StrCat("truncated in the header of token ", id, " at byte ", offset));
    }
    const float score = read_le<float>(data, offset);
    const int32_t len = read_le<int32_t>(data, offset + 4);
    offset += 8;
    if (!std::isfinite(score)) return bad(absl::StrCat("token ", id, " has a non-finite score"));
    if (len <= 0 || len > max_len) {
      return bad(absl::StrCat("token ", id, " has length ", len, ", not in [1, max_token_length=", max_len, "]"));
    }
    if (data.size() - offset < static_cast<size_t>(len)) {
      return bad(absl::StrCat("truncated in the bytes of token ", id, " at byte ", offset));
    }
    pieces.emplace_back(data.substr(offset, len));
    scores.push_back(score);
    offset += len;
  }
  if (pieces.size() < kByteOffset + 256) {
    return bad(absl::StrCat(pieces.size(), " tokens; expected at least 259 (<unk>, BOS, EOS, 256 byte pieces)"));
  }
  for (int b = 0; b < 256; ++b) {
    if (byte_piece_value(pieces[kByteOffset + b]) != b) {
      return bad(absl::StrFormat("token %d is \"%s\", expected the byte piece <0x%02X>", kByteOffset + b,
                                 absl::CEscape(pieces[kByteOffset + b]), b));
    }
  }
  return std::unique_ptr<Llama2cTokenizer>(new Llama2cTokenizer(max_len, std::move(pieces), std::move(scores)));
}

int32_t Llama2cTokenizer::lookup(std::string_view piece) const {
  auto it = index_.find(piece);
  return it == index_.end() ? -1 : it->second;
}

std::vector<int32_t> Llama2cTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  ids.reserve(text.size() + 1);
  auto push_bytes = [&](std::string_view bytes) {
    for (unsigned char c : bytes) ids.push_back(kByteOffset + c);
  };
  // Dummy prefix. run.c pushes str_lookup(" ") unchecked; fall back to the
  // byte piece for a vocab without " ".
  if (int32_t space = lookup(" "); space >= 0) {
    ids.push_back(space);
  } else {
    push_bytes(" ");
  }
  // run.c's codepoint walk: a chunk ends before any byte that is not a UTF-8
  // continuation byte, or once it holds 4 bytes. Invalid UTF-8 just makes odd
  // chunks, which fall back to bytes.
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const bool next_is_continuation = i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_is_continuation && i + 1 - start < 4) continue;
    std::string_view chunk = text.substr(start, i + 1 - start);
    if (int32_t id = lookup(chunk); id >= 0) {
      ids.push_back(id);
    } else {
      push_bytes(chunk);
    }
    start = i + 1;
  }
  std::string buffer;
  internal::merge_pairs<float>(&ids, [&](int32_t left, int32_t right, float* key, int32_t* merged) {
    buffer.assign(pieces_[left]);
    buffer.append(pieces_[right]);
    const int32_t id = lookup(buffer);
    if (id < 0 || !(scores_[id] > kMinMergeScore)) return false;
    *key = -scores_[id];  // highest score first
    *merged = id;
    return true;
  });
  return ids;
}

std::string Llama2cTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  int32_t prev = kBosId;  // a sequence start behaves like "after BOS"
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (id == kBosId || id == kEosId) {
      prev = id;
      continue;
    }
    std::string_view piece = pieces_[id];
    if (prev == kBosId && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    if (int byte = byte_piece_value(piece); byte >= 0) {
      out.push_back(static_cast<char>(byte));
    } else {
      out.append(piece);
    }
    prev = id;
  }
  return out;
}

std::string Llama2cTokenizer::id_to_piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? pieces_[id] : std::string();
}

float Llama2cTokenizer::score(int32_t id) const { return id >= 0 && id < vocab_size() ? scores_[id] : 0.0f; }

}  // namespace peft::data
