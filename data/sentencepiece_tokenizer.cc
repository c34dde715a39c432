#include "data/sentencepiece_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "third_party/sentencepiece_shim/spm_loader.h"

namespace peft::data {
namespace {

constexpr uint32_t kSpaceSymbol = 0x2581;  // "▁": what the normalizer makes of " "
constexpr uint32_t kInvalid = 0xFFFFFFFF;

// ModelProto piece types the shim reports (spm_shim.h).
constexpr int kNormalPiece = 1, kUnusedPiece = 5;
// TrainerSpec.model_type.
constexpr int kBpeModel = 2, kCharModel = 4;

bool is_continuation(unsigned char c) { return (c & 0xC0) == 0x80; }

// The code point of the valid UTF-8 sequence starting at s[i] and its length
// in *len; kInvalid when none starts there (sentencepiece reads such a byte
// as U+FFFD on its own).
uint32_t decode_at(std::string_view s, size_t i, size_t* len) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  size_t n = 0;
  uint32_t cp = 0;
  if (c < 0x80) {
    *len = 1;
    return c;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2, cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, cp = c & 0x07;
  } else {
    return kInvalid;
  }
  if (i + n > s.size()) return kInvalid;
  for (size_t k = 1; k < n; ++k) {
    const unsigned char d = static_cast<unsigned char>(s[i + k]);
    if (!is_continuation(d)) return kInvalid;
    cp = cp << 6 | (d & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return kInvalid;
  *len = n;
  return cp;
}

// The code point of the valid UTF-8 sequence ending right before s[end];
// kInvalid when there is none.
uint32_t decode_before(std::string_view s, size_t end) {
  for (size_t n = 1; n <= 4 && n <= end; ++n) {
    if (is_continuation(static_cast<unsigned char>(s[end - n]))) continue;
    size_t len = 0;
    const uint32_t cp = decode_at(s, end - n, &len);
    return cp != kInvalid && len == n ? cp : kInvalid;
  }
  return kInvalid;
}

// After whitespace escaping.
uint32_t escaped(uint32_t cp) { return cp == ' ' ? kSpaceSymbol : cp; }

uint64_t pair_key(uint32_t a, uint32_t b) { return static_cast<uint64_t>(a) << 32 | b; }

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<spm_shim::SpmModel> model,
                                               const SentencePieceOptions& options)
    : model_(std::move(model)), options_(options) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::create(
    const std::string& model_path, const SentencePieceOptions& options) {
  if (options.chunk_bytes < 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("SentencePieceOptions.chunk_bytes = ", options.chunk_bytes, " must be at least 16"));
  }
  std::error_code ec;
  if (!std::filesystem::exists(model_path, ec)) {
    return absl::NotFoundError(absl::StrCat(model_path, ": no such file"));
  }
  if (!std::filesystem::is_regular_file(model_path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": not a regular file"));
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<spm_shim::SpmModel> model, spm_shim::SpmModel::load(model_path));
  std::unique_ptr<SentencePieceTokenizer> tok(new SentencePieceTokenizer(std::move(model), options));
  PEFT_RETURN_IF_ERROR(tok->prepare_chunking(model_path));
  return tok;
}

absl::Status SentencePieceTokenizer::prepare_chunking(const std::string& model_path) {
  absl::StatusOr<PeftSpmModelInfo> info = model_->info();
  if (!info.ok()) return absl::InvalidArgumentError(absl::StrCat(model_path, ": ", info.status().message()));
  if (info->model_type != kBpeModel && info->model_type != kCharModel) {
    unchunked_reason_ = info->model_type == 1 ? "a unigram model" : absl::StrCat("model type ", info->model_type);
  } else if (!info->identity_normalizer) {
    unchunked_reason_ = "a normalizer other than identity";
  } else if (!info->escape_whitespaces) {
    unchunked_reason_ = "whitespace not escaped";
  } else if (info->treat_whitespace_as_suffix) {
    unchunked_reason_ = "whitespace as suffix";
  }
  if (!unchunked_reason_.empty()) return absl::OkStatus();
  remove_extra_whitespaces_ = info->remove_extra_whitespaces != 0;
  byte_fallback_ = info->byte_fallback != 0;
  // Every pair of code points adjacent inside a piece that a merge can make
  // (normal, user-defined and unused pieces; unused ones are made, then
  // split again), and the code points that are pieces on their own.
  const int32_t n = model_->piece_size();
  for (int32_t id = 0; id < n; ++id) {
    const int type = model_->piece_type(id);
    if (type != kNormalPiece && type != kUnusedPiece) continue;
    const std::string_view piece = model_->id_to_piece(id);
    uint32_t prev = kInvalid;
    int count = 0;
    for (size_t i = 0; i < piece.size();) {
      size_t len = 1;
      const uint32_t cp = decode_at(piece, i, &len);
      if (prev != kInvalid && cp != kInvalid) pairs_.push_back(pair_key(prev, cp));
      prev = cp;
      ++count;
      i += len;
    }
    if (count == 1 && prev != kInvalid && type == kNormalPiece) singles_.push_back(prev);
  }
  std::sort(pairs_.begin(), pairs_.end());
  pairs_.erase(std::unique(pairs_.begin(), pairs_.end()), pairs_.end());
  pairs_.shrink_to_fit();
  std::sort(singles_.begin(), singles_.end());
  singles_.erase(std::unique(singles_.begin(), singles_.end()), singles_.end());
  return absl::OkStatus();
}

bool SentencePieceTokenizer::safe_cut(uint32_t a, uint32_t b) const {
  a = escaped(a), b = escaped(b);
  if (std::binary_search(pairs_.begin(), pairs_.end(), pair_key(a, b))) return false;  // a merge could cross it
  // Without byte fallback, sentencepiece joins neighbouring unknown pieces
  // into one: one side must be a known character.
  if (byte_fallback_) return true;
  return std::binary_search(singles_.begin(), singles_.end(), a) ||
         std::binary_search(singles_.begin(), singles_.end(), b);
}

SentencePieceTokenizer::Cut SentencePieceTokenizer::next_cut(std::string_view text, size_t start) const {
  const size_t window_end = start + options_.chunk_bytes;
  if (window_end >= text.size()) return {text.size(), true};
  const size_t lowest = start + options_.chunk_bytes / 2;
  // A cut at p is between the code points ending at p and starting at p;
  // never right after a space (with extra-whitespace removal the run must
  // start the next piece) or a literal "▁" (that removal strips a trailing
  // one). First pass: right before a space.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t p = window_end; p > lowest; --p) {
      if (pass == 0 && text[p] != ' ') continue;
      if (is_continuation(static_cast<unsigned char>(text[p]))) continue;
      size_t len = 0;
      const uint32_t b = decode_at(text, p, &len);
      const uint32_t a = decode_before(text, p);
      if (a == kInvalid || b == kInvalid || a == ' ' || a == kSpaceSymbol) continue;
      if (safe_cut(a, b)) return {p, true};
    }
  }
  // No exact cut in the window's last half: the last character boundary.
  size_t p = window_end;
  while (p > start + 1 && is_continuation(static_cast<unsigned char>(text[p]))) --p;
  return {p, false};
}

std::vector<SentencePieceTokenizer::Cut> SentencePieceTokenizer::cuts(std::string_view text) const {
  std::vector<Cut> out;
  if (!unchunked_reason_.empty()) return out;
  for (Cut c = next_cut(text, 0); c.at < text.size(); c = next_cut(text, c.at)) out.push_back(c);
  return out;
}

size_t SentencePieceTokenizer::max_text_bytes() const {
  return unchunked_reason_.empty() ? std::numeric_limits<size_t>::max() : options_.max_unchunked_bytes;
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  // Encode fails only for an unloaded model, which create() rules out.
  if (!unchunked_reason_.empty() || text.size() <= options_.chunk_bytes) {
    absl::StatusOr<std::vector<int32_t>> ids = model_->encode(text);
    return ids.ok() ? *std::move(ids) : std::vector<int32_t>();
  }
  std::vector<int32_t> out;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = next_cut(text, start).at;
    const std::string_view piece = text.substr(start, end - start);
    absl::StatusOr<std::vector<int32_t>> ids;
    if (start == 0) {
      ids = model_->encode(piece);  // the model's own dummy prefix
    } else {
      // The whole text's normalized form goes on without a new "▁", except
      // that with extra-whitespace removal a leading run of spaces becomes
      // exactly the one "▁" the dummy prefix adds (and nothing at the end).
      ids = model_->encode(piece, /*add_dummy_prefix=*/remove_extra_whitespaces_ && piece.front() == ' ');
    }
    if (!ids.ok()) return {};
    out.insert(out.end(), ids->begin(), ids->end());
    start = end;
  }
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  const int32_t n = model_->piece_size();
  std::vector<int32_t> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < n && !model_->is_control(id)) kept.push_back(id);
  }
  absl::StatusOr<std::string> text = model_->decode(kept);
  return text.ok() ? *std::move(text) : std::string();
}

int32_t SentencePieceTokenizer::vocab_size() const { return model_->piece_size(); }
int32_t SentencePieceTokenizer::bos_id() const { return model_->bos_id(); }
int32_t SentencePieceTokenizer::eos_id() const { return model_->eos_id(); }
int32_t SentencePieceTokenizer::pad_id() const { return model_->pad_id(); }

std::string SentencePieceTokenizer::id_to_piece(int32_t id) const { return std::string(model_->id_to_piece(id)); }

float SentencePieceTokenizer::score(int32_t id) const { return model_->score(id); }
int SentencePieceTokenizer::piece_type(int32_t id) const { return model_->piece_type(id); }
int32_t SentencePieceTokenizer::unk_id() const { return model_->unk_id(); }

}  // namespace peft::data
