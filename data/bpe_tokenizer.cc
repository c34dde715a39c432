#include "data/bpe_tokenizer.h"

#include <filesystem>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "data/hf/tokenizer_json.h"
#include "data/json_util.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

using json = nlohmann::json;

constexpr const char* kEndOfText = "<|endoftext|>";

// A special-token field of tokenizer_config.json: "tok", {"content": "tok"}, or null.
std::optional<std::string> token_content(const json* j) {
  if (j == nullptr) return std::nullopt;
  if (j->is_string()) return j->get<std::string>();
  if (const json* c = hf::member(*j, "content"); c != nullptr && c->is_string()) return c->get<std::string>();
  return std::nullopt;
}

}  // namespace

struct BpeTokenizer::State {
  std::unique_ptr<hf::TokenizerJson> pipeline;
  std::string kind;
  bool split_special_tokens = false;
  int32_t bos = -1, eos = -1, pad = -1;
  bool add_bos = false;
  std::string chat_template;
  std::vector<char> special;  // id -> skipped by decode

  // A byte-level vocabulary must spell every byte; one that does not cannot
  // encode some text, which is a broken file rather than a choice.
  absl::Status check_byte_symbols(const std::string& where) const {
    for (int b = 0; b < 256; ++b) {
      const std::string& symbol = hf::byte_to_symbol(static_cast<unsigned char>(b));
      if (pipeline->model().token_to_id(symbol) < 0) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": not a byte-level BPE vocabulary: the symbol \"",
                                                       symbol, "\" of byte ", b, " is missing"));
      }
    }
    return absl::OkStatus();
  }

  // Special ids and the decode skip table; `dir` may hold a tokenizer_config.json.
  absl::Status finish(const std::filesystem::path& dir) {
    const int32_t end_of_text = pipeline->token_to_id(kEndOfText);
    const hf::PostProcessor& pp = pipeline->post_processor();
    bos = !pp.prefix.empty() ? pp.prefix.front() : end_of_text;
    eos = !pp.suffix.empty() ? pp.suffix.back() : end_of_text;
    add_bos = !pp.prefix.empty();

    std::error_code ec;
    const std::filesystem::path config_path = dir / "tokenizer_config.json";
    if (std::filesystem::is_regular_file(config_path, ec)) {
      PEFT_ASSIGN_OR_RETURN(json config, internal::read_json(config_path.string()));
      auto apply = [&](const char* key, int32_t* target) {
        if (auto token = token_content(hf::member(config, key))) {
          if (int32_t id = pipeline->token_to_id(*token); id >= 0) *target = id;
        }
      };
      apply("bos_token", &bos);
      apply("eos_token", &eos);
      apply("pad_token", &pad);
      if (const json* a = hf::member(config, "add_bos_token"); a != nullptr && a->is_boolean()) {
        add_bos = a->get<bool>();
      }
      if (const json* t = hf::member(config, "chat_template"); t != nullptr) {
        if (t->is_string()) {
          chat_template = t->get<std::string>();
        } else if (t->is_array()) {
          // transformers' named templates: [{"name": "default", "template": ...}, ...].
          for (const json& entry : *t) {
            const json* name = hf::member(entry, "name");
            const json* text = hf::member(entry, "template");
            if (name != nullptr && name->is_string() && name->get<std::string>() == "default" && text != nullptr &&
                text->is_string()) {
              chat_template = text->get<std::string>();
            }
          }
        }
      }
    }
    // transformers saves the template as chat_template.jinja beside the
    // config, and reads that file first.
    const std::filesystem::path jinja = dir / "chat_template.jinja";
    if (std::filesystem::is_regular_file(jinja, ec)) {
      PEFT_ASSIGN_OR_RETURN(chat_template, io::read_file(jinja.string()));
    }
    const int32_t n = pipeline->vocab_size();
    for (int32_t* id : {&bos, &eos, &pad}) {
      if (*id >= n) *id = -1;
    }
    if (bos < 0) add_bos = false;

    special.assign(n, 0);
    for (int32_t i = 0; i < n; ++i) special[i] = pipeline->id_to_token(i).empty();
    for (const hf::AddedToken& t : pipeline->added_vocabulary().tokens()) {
      if (t.special) special[t.id] = 1;
    }
    for (int32_t id : {bos, eos, pad}) {
      if (id >= 0) special[id] = 1;
    }
    return absl::OkStatus();
  }
};

BpeTokenizer::BpeTokenizer(std::unique_ptr<State> state) : state_(std::move(state)) {}

BpeTokenizer::~BpeTokenizer() = default;

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create(const std::string& vocab_path,
                                                                   const std::string& merges_path) {
  auto state = std::make_unique<State>();
  PEFT_ASSIGN_OR_RETURN(json vocab, internal::read_json(vocab_path));
  PEFT_ASSIGN_OR_RETURN(std::string merges, io::read_file(merges_path));
  PEFT_ASSIGN_OR_RETURN(state->pipeline, hf::TokenizerJson::gpt2(vocab, vocab_path, merges, merges_path));
  PEFT_RETURN_IF_ERROR(state->check_byte_symbols(vocab_path));
  state->kind = "gpt2_bpe";
  PEFT_RETURN_IF_ERROR(state->finish(std::filesystem::path(vocab_path).parent_path()));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create(const std::string& path,
                                                                   const TokenizerOptions& options) {
  PEFT_ASSIGN_OR_RETURN(json root, internal::read_json(path));
  return create_from_json(root, path, options);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::create_from_json(const json& root, const std::string& path,
                                                                             const TokenizerOptions& options) {
  auto state = std::make_unique<State>();
  PEFT_ASSIGN_OR_RETURN(state->pipeline, hf::TokenizerJson::from_json(root, path));
  if (state->pipeline->byte_level()) PEFT_RETURN_IF_ERROR(state->check_byte_symbols(path));
  state->kind = "tokenizer_json";
  state->split_special_tokens = options.split_special_tokens;
  PEFT_RETURN_IF_ERROR(state->finish(std::filesystem::path(path).parent_path()));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  state_->pipeline->encode(text, state_->split_special_tokens, &ids);
  return ids;
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  state_->pipeline->encode(text, state_->split_special_tokens || options.split_special_tokens, &ids);
  if (options.add_special_tokens) ids = state_->pipeline->post_processor().apply(ids);
  return ids;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  const std::vector<char>& special = state_->special;
  return state_->pipeline->decode(ids, [&special](int32_t id) { return special[id] != 0; });
}

int32_t BpeTokenizer::vocab_size() const { return state_->pipeline->vocab_size(); }
int32_t BpeTokenizer::bos_id() const { return state_->bos; }
int32_t BpeTokenizer::eos_id() const { return state_->eos; }
int32_t BpeTokenizer::pad_id() const { return state_->pad; }
bool BpeTokenizer::add_bos_by_default() const { return state_->add_bos; }
std::string BpeTokenizer::kind() const { return state_->kind; }
std::string BpeTokenizer::chat_template() const { return state_->chat_template; }

std::string BpeTokenizer::id_to_piece(int32_t id) const { return state_->pipeline->id_to_token(id); }

int32_t BpeTokenizer::added_token_id(std::string_view text) const {
  const hf::AddedToken* t = state_->pipeline->added_vocabulary().find(text);
  return t == nullptr ? -1 : t->id;
}

int32_t BpeTokenizer::piece_to_id(std::string_view piece) const { return state_->pipeline->token_to_id(piece); }

std::vector<std::string> BpeTokenizer::merges() const {
  std::vector<std::string> out;
  for (const auto& [left, right] : state_->pipeline->model().merges()) out.push_back(left + " " + right);
  return out;
}

bool BpeTokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && state_->special[id]; }

}  // namespace peft::data
