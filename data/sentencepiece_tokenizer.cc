#include "data/sentencepiece_tokenizer.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "third_party/sentencepiece_shim/spm_loader.h"

namespace peft::data {

SentencePieceTokenizer::SentencePieceTokenizer(std::unique_ptr<spm_shim::SpmModel> model) : model_(std::move(model)) {}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::create(const std::string& model_path) {
  std::error_code ec;
  if (!std::filesystem::exists(model_path, ec)) {
    return absl::NotFoundError(absl::StrCat(model_path, ": no such file"));
  }
  if (!std::filesystem::is_regular_file(model_path, ec)) {
    return absl::InvalidArgumentError(absl::StrCat(model_path, ": not a regular file"));
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<spm_shim::SpmModel> model, spm_shim::SpmModel::load(model_path));
  return std::unique_ptr<SentencePieceTokenizer>(new SentencePieceTokenizer(std::move(model)));
}

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  // Encode fails only for an unloaded model, which create() rules out.
  absl::StatusOr<std::vector<int32_t>> ids = model_->encode(text);
  return ids.ok() ? *std::move(ids) : std::vector<int32_t>();
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
