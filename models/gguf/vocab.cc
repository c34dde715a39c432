#include "models/gguf/vocab.h"

#include <filesystem>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "data/bpe_tokenizer.h"
#include "data/llama2c_tokenizer.h"
#include "data/sentencepiece_tokenizer.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::models::gguf {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Llama 3's pre-tokenizer split (tokenizer.json, Split with behavior
// Isolated, before a ByteLevel step without its own regex); llama.cpp calls
// this pre-tokenizer "llama-bpe".
constexpr const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Qwen2's (and Qwen2.5's) split: Llama 3's with single digits (\p{N}
// instead of \p{N}{1,3}); llama.cpp calls this pre-tokenizer "qwen2".
constexpr const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string pad_token(int64_t id) { return absl::StrCat("[PAD", id, "]"); }

bool is_byte_piece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return false;
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return hex(piece[3]) && hex(piece[4]);
}

Vocab from_sentencepiece(const data::SentencePieceTokenizer& t) {
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  const int32_t n = t.vocab_size();
  for (int32_t id = 0; id < n; ++id) {
    v.tokens.push_back(t.id_to_piece(id));
    v.scores.push_back(t.score(id));
    const int type = t.piece_type(id);
    v.types.push_back(type >= kTokenNormal && type <= kTokenByte ? type : kTokenNormal);
  }
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.unk = t.unk_id();
  v.pad = t.pad_id();
  v.add_bos = t.add_bos_by_default();
  // add_dummy_prefix is not exposed by the processor; it shows in how a
  // lone word encodes: with it, the first piece starts with "▁".
  const std::vector<int32_t> ids = t.encode("a");
  v.add_space_prefix = !ids.empty() && t.id_to_piece(ids[0]).rfind(kSpaceMarker, 0) == 0;
  return v;
}

// As llama.cpp's convert-llama2c-to-ggml reads a tokenizer.bin: the fixed
// ids get sentencepiece's names, spaces become "▁".
Vocab from_llama2c(const data::Llama2cTokenizer& t) {
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  const int32_t n = t.vocab_size();
  for (int32_t id = 0; id < n; ++id) {
    std::string piece = t.id_to_piece(id);
    int32_t type = kTokenNormal;
    if (id == 0) {
      piece = "<unk>";
      type = kTokenUnknown;
    } else if (id == t.bos_id()) {
      piece = "<s>";
      type = kTokenControl;
    } else if (id == t.eos_id()) {
      piece = "</s>";
      type = kTokenControl;
    } else if (is_byte_piece(piece)) {
      type = kTokenByte;
    }
    v.tokens.push_back(absl::StrReplaceAll(piece, {{" ", kSpaceMarker}}));
    v.scores.push_back(t.score(id));
    v.types.push_back(type);
  }
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.unk = 0;
  v.add_bos = t.add_bos_by_default();
  v.add_space_prefix = true;  // run.c's encode prepends the dummy " "
  return v;
}

// The tokenizer.json a BPE tokenizer was read from, if it was one.
absl::StatusOr<std::optional<json>> tokenizer_json(const std::string& source) {
  std::error_code ec;
  fs::path file = source;
  if (fs::is_directory(file, ec)) {
    file /= "tokenizer.json";
    if (!fs::is_regular_file(file, ec)) return std::optional<json>();
  }
  PEFT_ASSIGN_OR_RETURN(const std::string text, io::read_file(file.string()));
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object() || !root.contains("model") || !root["model"].is_object()) {
    return std::optional<json>();  // vocab.json / encoder.json: GPT-2's own files
  }
  return std::optional<json>(std::move(root));
}

// llama.cpp's name for the pre-tokenizer of a byte-level BPE tokenizer.json.
absl::StatusOr<std::string> bpe_pre_name(const json& root, const std::string& source) {
  std::vector<const json*> steps;
  const json* pt = root.contains("pre_tokenizer") ? &root["pre_tokenizer"] : nullptr;
  if (pt != nullptr && pt->is_object() && pt->value("type", "") == "Sequence" && pt->contains("pretokenizers") &&
      (*pt)["pretokenizers"].is_array()) {
    for (const json& s : (*pt)["pretokenizers"]) steps.push_back(&s);
  } else if (pt != nullptr && pt->is_object()) {
    steps.push_back(pt);
  }
  auto type_of = [](const json* s) { return s->is_object() ? s->value("type", "") : std::string(); };
  auto uses_regex = [](const json* s) { return !s->contains("use_regex") || (*s)["use_regex"] != false; };
  if (steps.size() == 1 && type_of(steps[0]) == "ByteLevel" && uses_regex(steps[0])) return std::string("gpt-2");
  if (steps.size() == 2 && type_of(steps[0]) == "Split" && type_of(steps[1]) == "ByteLevel" && !uses_regex(steps[1])) {
    const json& pattern = (*steps[0]).value("pattern", json::object());
    if (pattern.is_object() && pattern.value("Regex", "") == kLlama3Split) return std::string("llama-bpe");
    if (pattern.is_object() && pattern.value("Regex", "") == kQwen2Split) return std::string("qwen2");
  }
  return absl::UnimplementedError(absl::StrCat(
      source, ": the tokenizer's pre_tokenizer ", pt ? pt->dump().substr(0, 160) : "null",
      " has no llama.cpp counterpart here (supported: GPT-2's ByteLevel, Llama 3's or Qwen2's Split + ByteLevel, or a "
      "byte_fallback BPE with a Sequence decoder as Llama 2 / Mistral have)"));
}

// What llama.cpp's converter keys on to read a tokenizer.json as a Llama /
// Mistral sentencepiece-style BPE (LlamaHfVocab): a BPE model with
// byte_fallback and a Sequence decoder (Replace "▁", ByteFallback, Fuse ...).
bool is_llama_hf_bpe(const json& root) {
  const json& model = root["model"];
  const json* decoder = root.contains("decoder") ? &root["decoder"] : nullptr;
  const json* fallback = model.contains("byte_fallback") ? &model["byte_fallback"] : nullptr;
  return model.value("type", "") == "BPE" && fallback != nullptr && fallback->is_boolean() && fallback->get<bool>() &&
         decoder != nullptr && decoder->is_object() && decoder->value("type", "") == "Sequence";
}

// As llama.cpp's _set_vocab_llama_hf writes it: model "llama", pre
// "default", the vocabulary spellings ("▁the"), every score -1000 (the
// converter has no scores for a BPE), types byte for "<0xNN>", control for
// the special ids (special added tokens, BOS/EOS/PAD, UNK), user defined for
// other added tokens past the base vocabulary, else normal; no merges.
Vocab from_llama_hf_bpe(const data::BpeTokenizer& t, const json& root) {
  Vocab v;
  v.model = "llama";
  v.pre = "default";
  const json& model = root["model"];
  const std::string unk_token = model.contains("unk_token") && model["unk_token"].is_string()
                                    ? model["unk_token"].get<std::string>()
                                    : std::string();
  v.unk = unk_token.empty() ? -1 : t.piece_to_id(unk_token);
  const int64_t base =
      model.contains("vocab") && model["vocab"].is_object() ? static_cast<int64_t>(model["vocab"].size()) : 0;
  const int32_t n = t.vocab_size();
  for (int32_t id = 0; id < n; ++id) {
    std::string piece = t.id_to_piece(id);
    int32_t type = kTokenNormal;
    if (piece.empty()) {
      piece = pad_token(id);
      type = kTokenUnused;
    } else if (is_byte_piece(piece)) {
      type = kTokenByte;
    } else if (t.is_special(id) || id == v.unk) {
      type = kTokenControl;
    } else if (id >= base) {
      type = kTokenUserDefined;
    }
    v.tokens.push_back(std::move(piece));
    v.scores.push_back(-1000.0f);
    v.types.push_back(type);
  }
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.pad = t.pad_id();
  v.add_bos = t.add_bos_by_default();
  return v;
}

absl::StatusOr<Vocab> from_bpe(const data::BpeTokenizer& t, const std::string& source) {
  Vocab v;
  v.model = "gpt2";
  v.pre = "gpt-2";  // vocab.json + merges.txt, encoder.json + vocab.bpe: GPT-2's regex
  PEFT_ASSIGN_OR_RETURN(std::optional<json> root, tokenizer_json(source));
  if (root && is_llama_hf_bpe(*root)) return from_llama_hf_bpe(t, *root);
  if (root) {
    PEFT_ASSIGN_OR_RETURN(v.pre, bpe_pre_name(*root, source));
  }
  const int32_t n = t.vocab_size();
  for (int32_t id = 0; id < n; ++id) {
    std::string piece = t.id_to_piece(id);
    if (piece.empty()) {
      v.tokens.push_back(pad_token(id));
      v.types.push_back(kTokenUnused);
    } else {
      v.tokens.push_back(std::move(piece));
      v.types.push_back(t.is_special(id) ? kTokenControl : kTokenNormal);
    }
  }
  v.merges = t.merges();
  v.bos = t.bos_id();
  v.eos = t.eos_id();
  v.pad = t.pad_id();
  v.add_bos = t.add_bos_by_default();
  return v;
}

}  // namespace

absl::StatusOr<Vocab> vocab_from_tokenizer(const data::Tokenizer& tokenizer, const std::string& source) {
  if (const auto* sp = dynamic_cast<const data::SentencePieceTokenizer*>(&tokenizer)) return from_sentencepiece(*sp);
  if (const auto* l2c = dynamic_cast<const data::Llama2cTokenizer*>(&tokenizer)) return from_llama2c(*l2c);
  if (const auto* bpe = dynamic_cast<const data::BpeTokenizer*>(&tokenizer)) return from_bpe(*bpe, source);
  return absl::UnimplementedError(absl::StrCat(
      "a '", tokenizer.kind(), "' tokenizer has no GGUF vocabulary form (sentencepiece, gpt2_bpe, llama2c)"));
}

absl::Status fit_vocab_to_model(const ModelConfig& config, Vocab* v) {
  const int64_t model_vocab = config.vocab_size();
  const int64_t n = static_cast<int64_t>(v->tokens.size());
  if (n > model_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("the tokenizer has ", n, " tokens but the model's vocabulary has ",
                                                   model_vocab, ": wrong tokenizer for this model?"));
  }
  // llama.cpp takes n_vocab from the token list and checks token_embd
  // against it, so the list is padded as its converter pads it.
  for (int64_t id = n; id < model_vocab; ++id) {
    v->tokens.push_back(pad_token(id));
    if (v->model == "llama") v->scores.push_back(-1000.0f);
    v->types.push_back(kTokenUnused);
  }
  // Generation stops where `peft generate` stops: at config.json's eos ids.
  const std::vector<int64_t>& eos = config.eos_token_ids;
  if (!eos.empty()) {
    v->eos = eos[0];
    v->eot = eos.size() > 1 ? eos[1] : -1;
    v->eom = eos.size() > 2 ? eos[2] : -1;
  }
  if (v->bos < 0 && config.bos_token_id >= 0) v->bos = config.bos_token_id;
  for (auto [name, id] : {std::pair{"bos", v->bos}, std::pair{"eos", v->eos}, std::pair{"unk", v->unk},
                          std::pair{"pad", v->pad}, std::pair{"eot", v->eot}, std::pair{"eom", v->eom}}) {
    if (id >= model_vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", name, " token id ", id, " is outside the model's vocabulary of ", model_vocab));
    }
  }
  return absl::OkStatus();
}

void add_vocab_metadata(const Vocab& v, Metadata* md) {
  md->add_string("tokenizer.ggml.model", v.model);
  md->add_string("tokenizer.ggml.pre", v.pre);
  md->add_string_array("tokenizer.ggml.tokens", v.tokens);
  if (v.model == "llama") md->add_float32_array("tokenizer.ggml.scores", v.scores);
  md->add_int32_array("tokenizer.ggml.token_type", v.types);
  if (v.model == "gpt2") md->add_string_array("tokenizer.ggml.merges", v.merges);
  auto add_id = [&](const char* key, int64_t id) {
    if (id >= 0) md->add_uint32(key, static_cast<uint32_t>(id));
  };
  add_id("tokenizer.ggml.bos_token_id", v.bos);
  add_id("tokenizer.ggml.eos_token_id", v.eos);
  add_id("tokenizer.ggml.unknown_token_id", v.unk);
  add_id("tokenizer.ggml.padding_token_id", v.pad);
  add_id("tokenizer.ggml.eot_token_id", v.eot);
  add_id("tokenizer.ggml.eom_token_id", v.eom);
  md->add_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  md->add_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (v.add_space_prefix) md->add_bool("tokenizer.ggml.add_space_prefix", *v.add_space_prefix);
}

}  // namespace peft::models::gguf
