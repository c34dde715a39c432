//
// load_tokenizer(): directory layout lookup and content sniffing (see
// data/tokenizer.h for the contract).
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "data/bpe_tokenizer.h"
#include "data/json_util.h"
#include "data/llama2c_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "data/tokenizer.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

namespace fs = std::filesystem;

constexpr size_t kSniffBytes = 64;
// A llama2.c tokenizer.bin of a 256k vocabulary is ~5 MB; anything far larger
// (a checkpoint passed by mistake) is not read whole just to be rejected.
constexpr uintmax_t kMaxLlama2cBytes = uintmax_t{64} << 20;

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// A serialized sentencepiece ModelProto starts with field 1 (`repeated
// SentencePiece pieces`, length-delimited: tag 0x0A), a non-zero varint length,
// and the first SentencePiece, whose field 1 (`piece`) has tag 0x0A too. A
// llama2.c file cannot look like this: its second byte is the high part of a
// small max_token_length, i.e. 0.
bool looks_like_sentencepiece(std::string_view head) {
  if (head.size() < 3 || head[0] != 0x0A) return false;
  uint64_t length = 0;
  size_t i = 1;
  for (int shift = 0; i < head.size() && shift < 35; shift += 7) {
    const unsigned char byte = static_cast<unsigned char>(head[i++]);
    length |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return length > 0 && i < head.size() && head[i] == 0x0A;
  }
  return false;
}

bool looks_like_json(std::string_view head) {
  for (char c : head) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
    return c == '{';
  }
  return false;
}

// safetensors: a little-endian uint64 header length, then the JSON header.
bool looks_like_safetensors(std::string_view head) {
  if (head.size() < 10) return false;
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(head[i]);
  return header_len >= 2 && header_len < (uint64_t{1} << 32) && head[8] == '{';
}

template <typename T>
absl::StatusOr<std::unique_ptr<Tokenizer>> upcast(absl::StatusOr<std::unique_ptr<T>> t) {
  if (!t.ok()) return t.status();
  return std::unique_ptr<Tokenizer>(*std::move(t));
}

// A JSON file: tokenizer.json, or a vocab.json / encoder.json with its merges beside it.
absl::StatusOr<std::unique_ptr<Tokenizer>> load_json(const std::string& path, const TokenizerOptions& options) {
  PEFT_ASSIGN_OR_RETURN(nlohmann::json root, internal::read_json(path));
  if (!root.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": JSON but not an object"));
  // Not just contains("model"): GPT-2's vocabulary has a token "model" too.
  if (auto model = root.find("model"); model != root.end() && model->is_object()) {
    return upcast(BpeTokenizer::create_from_json(root, path, options));
  }
  bool vocab_like = !root.empty();
  for (auto it = root.begin(); vocab_like && it != root.end(); ++it) vocab_like = it.value().is_number_integer();
  if (!vocab_like) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": JSON but neither a tokenizer.json (no \"model\") nor a BPE vocabulary (token -> integer id)"));
  }
  const fs::path dir = fs::path(path).parent_path();
  // Prefer the merges file that goes with the vocab's name (encoder.json -> vocab.bpe).
  const bool openai_names = fs::path(path).filename() == "encoder.json";
  const char* const names[2] = {openai_names ? "vocab.bpe" : "merges.txt", openai_names ? "merges.txt" : "vocab.bpe"};
  for (const char* name : names) {
    if (is_file(dir / name)) return upcast(BpeTokenizer::create(path, (dir / name).string()));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": a BPE vocabulary, but there is no merges.txt or vocab.bpe beside it"));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> load_file(const std::string& path, const TokenizerOptions& options) {
  PEFT_ASSIGN_OR_RETURN(std::string head, io::read_file_prefix(path, kSniffBytes));
  if (head.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty file, not a tokenizer"));
  if (looks_like_json(head)) return load_json(path, options);
  if (looks_like_sentencepiece(head)) return upcast(SentencePieceTokenizer::create(path));

  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  if (looks_like_safetensors(head)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": a safetensors checkpoint, not a tokenizer (pass the tokenizer file or its directory)"));
  }
  std::string why;
  if (!ec && size <= kMaxLlama2cBytes) {
    absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> llama2c = Llama2cTokenizer::create(path);
    if (llama2c.ok() || llama2c.status().code() != absl::StatusCode::kInvalidArgument)
      return upcast(std::move(llama2c));
    std::string reason(llama2c.status().message());
    if (reason.compare(0, path.size() + 2, path + ": ") == 0) reason.erase(0, path.size() + 2);
    why = absl::StrCat("; as a llama2.c tokenizer.bin: ", reason);
  } else {
    why = absl::StrCat("; ", size, " bytes is too large for a llama2.c tokenizer.bin");
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   ": not a recognized tokenizer file (expected a sentencepiece model, a tokenizer.json, "
                   "a vocab.json/encoder.json or a llama2.c tokenizer.bin)",
                   why));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> load_directory(const fs::path& dir, const TokenizerOptions& options) {
  // tokenizer.json first: Hugging Face checkpoints often ship tokenizer.model
  // too, and transformers' AutoTokenizer reads tokenizer.json when both exist.
  if (fs::path p = dir / "tokenizer.json"; is_file(p)) {
    return upcast(BpeTokenizer::create(p.string(), options));
  }
  if (fs::path p = dir / "tokenizer.model"; is_file(p)) return upcast(SentencePieceTokenizer::create(p.string()));
  for (auto [vocab, merges] : {std::pair{"vocab.json", "merges.txt"}, std::pair{"encoder.json", "vocab.bpe"}}) {
    if (is_file(dir / vocab) && is_file(dir / merges)) {
      return upcast(BpeTokenizer::create((dir / vocab).string(), (dir / merges).string()));
    }
  }
  if (fs::path p = dir / "tokenizer.bin"; is_file(p)) return upcast(Llama2cTokenizer::create(p.string()));
  return absl::InvalidArgumentError(
      absl::StrCat(dir.string(),
                   ": no tokenizer in this directory (looked for tokenizer.json, tokenizer.model, "
                   "vocab.json + merges.txt, encoder.json + vocab.bpe, tokenizer.bin)"));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer(const std::string& path, const TokenizerOptions& options) {
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (!fs::exists(status)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  if (fs::is_directory(status)) return load_directory(path, options);
  return load_file(path, options);
}

}  // namespace peft::data
