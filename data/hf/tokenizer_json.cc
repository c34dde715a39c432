#include "data/hf/tokenizer_json.h"

#include <algorithm>
#include <utility>

#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

// Whether a pre_tokenizer JSON has a ByteLevel step anywhere.
bool has_byte_level(const json& j) {
  if (component_type(j) == "ByteLevel") return true;
  if (const json* list = member(j, "pretokenizers"); list != nullptr && list->is_array()) {
    for (const json& item : *list) {
      if (has_byte_level(item)) return true;
    }
  }
  return false;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TokenizerJson>> TokenizerJson::from_json(const json& root, const std::string& where) {
  if (!root.is_object()) return absl::InvalidArgumentError(where + ": not a JSON object");
  const json* model = member(root, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError(where + ": not a tokenizer.json (no \"model\" object)");
  }
  std::unique_ptr<TokenizerJson> t(new TokenizerJson());
  PEFT_ASSIGN_OR_RETURN(t->model_, BpeModel::from_json(*model, where));
  if (const json* n = member(root, "normalizer"); n != nullptr && !n->is_null()) {
    PEFT_ASSIGN_OR_RETURN(t->normalizer_, parse_normalizer(*n, where));
  }
  if (const json* p = member(root, "pre_tokenizer"); p != nullptr && !p->is_null()) {
    PEFT_ASSIGN_OR_RETURN(t->pre_tokenizer_, parse_pre_tokenizer(*p, where));
    t->byte_level_ = has_byte_level(*p);
  }
  const json* added = member(root, "added_tokens");
  PEFT_ASSIGN_OR_RETURN(t->added_,
                        AddedVocabulary::from_json(added ? *added : json(nullptr), t->normalizer_.get(), where));
  t->vocab_size_ = t->model_->size();
  for (const AddedToken& a : t->added_->tokens()) t->vocab_size_ = std::max(t->vocab_size_, a.id + 1);
  if (const json* pp = member(root, "post_processor"); pp != nullptr) {
    const TokenizerJson* self = t.get();
    PEFT_ASSIGN_OR_RETURN(t->post_processor_, parse_post_processor(*pp, where, [self](const std::string& name) {
                            return self->token_to_id(name);
                          }));
  }
  if (const json* d = member(root, "decoder"); d != nullptr && !d->is_null()) {
    PEFT_ASSIGN_OR_RETURN(t->decoder_, parse_decoder(*d, where));
  }
  return t;
}

absl::StatusOr<std::unique_ptr<TokenizerJson>> TokenizerJson::gpt2(const json& vocab, const std::string& vocab_path,
                                                                   std::string_view merges,
                                                                   const std::string& merges_path) {
  std::unique_ptr<TokenizerJson> t(new TokenizerJson());
  PEFT_ASSIGN_OR_RETURN(t->model_, BpeModel::from_vocab_and_merges(vocab, vocab_path, merges, merges_path));
  t->pre_tokenizer_ = gpt2_byte_level_pre_tokenizer();
  t->byte_level_ = true;
  t->added_ = std::make_unique<AddedVocabulary>();
  t->decoder_ = byte_level_decoder();
  t->vocab_size_ = t->model_->size();
  return t;
}

void TokenizerJson::encode(std::string_view text, bool split_special_tokens, std::vector<int32_t>* out) const {
  std::vector<Piece> pieces = added_->extract_and_normalize(text, normalizer_.get(), split_special_tokens);
  if (pre_tokenizer_ != nullptr) pre_tokenizer_->pre_tokenize(&pieces);
  for (const Piece& p : pieces) {
    if (p.id >= 0) {
      out->push_back(p.id);
    } else {
      model_->tokenize(p.text, out);
    }
  }
}

std::string TokenizerJson::decode(const std::vector<int32_t>& ids, const std::function<bool(int32_t)>& skip) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size_ || skip(id)) continue;
    std::string t = id_to_token(id);
    if (!t.empty()) tokens.push_back(std::move(t));
  }
  if (decoder_ != nullptr) return decoder_->decode(std::move(tokens));
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out.push_back(' ');
    out += tokens[i];
  }
  return out;
}

std::string TokenizerJson::id_to_token(int32_t id) const {
  if (const AddedToken* a = added_->find(id); a != nullptr) return a->content;
  return model_->id_to_token(id);
}

int32_t TokenizerJson::token_to_id(std::string_view token) const {
  if (const AddedToken* a = added_->find(token); a != nullptr) return a->id;
  return model_->token_to_id(token);
}

}  // namespace peft::data::hf
