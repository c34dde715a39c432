// peft convert / generate / eval.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "data/chat_template.h"
#include "data/records.h"
#include "examples/cli/command.h"
#include "models/generate.h"
#include "models/llama2c.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/hsm/prune.h"
#include "peft/io/read_file.h"
#include "peft/peft_model.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

}  // namespace

absl::StatusOr<std::shared_ptr<models::CausalLm>> load_base(const std::string& dir) {
  models::LoadReport report;
  absl::StatusOr<std::shared_ptr<models::CausalLm>> lm = models::load_model(dir, {}, &report);
  if (lm.ok() && !report.unexpected_tensors.empty()) {
    std::fprintf(stderr, "warning: %zu tensor(s) in %s are not used by the model, e.g. %s\n",
                 report.unexpected_tensors.size(), dir.c_str(), report.unexpected_tensors[0].c_str());
  }
  return lm;
}

// --adapter=DIR[,DIR...]: every adapter loaded and active together (e.g. PAT:
// an HSM adapter and a LoRA adapter trained jointly).
absl::Status load_adapters(PeftModel& pm, const std::string& list) {
  std::vector<std::pair<std::string, double>> active;
  size_t pos = 0;
  int index = 0;
  while (pos <= list.size()) {
    size_t end = list.find(',', pos);
    if (end == std::string::npos) end = list.size();
    const std::string dir = list.substr(pos, end - pos);
    pos = end + 1;
    if (dir.empty()) continue;
    const std::string name = index++ == 0 ? "default" : absl::StrCat("adapter", index - 1);
    PEFT_RETURN_IF_ERROR(pm.load_adapter(dir, name));
    active.emplace_back(name, 1.0);
  }
  if (active.empty()) return absl::InvalidArgumentError("--adapter names no directory");
  // HSM at inference and export uses the hard 0/1 gate (PAT's rule); the
  // soft gate only exists during training.
  for (const auto& a : active) {
    absl::StatusOr<HsmAdapterImpl*> hsm = find_hsm_adapter(pm, a.first);
    if (hsm.ok()) (*hsm)->set_hard_gate_(true);
  }
  return pm.set_active(active);
}

namespace {

// The model of --model, with the adapter of --adapter (unmerged) when given.
// The PeftModel must outlive uses of the model: it owns the stream hook.
absl::StatusOr<std::unique_ptr<PeftModel>> load_for_inference(const ParsedFlags& f) {
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, load_base(f.get("model")));
  auto pm = std::make_unique<PeftModel>(lm);
  if (f.has("adapter")) PEFT_RETURN_IF_ERROR(load_adapters(*pm, f.get("adapter")));
  pm->model().module().eval();
  return pm;
}

// The prompt's ids: BOS first when the tokenizer's convention has one (LLaMA),
// as llama2.c's run and transformers' LlamaTokenizer do.
std::vector<int64_t> encode_prompt(const data::Tokenizer& tok, const std::string& text, bool add_bos) {
  std::vector<int64_t> ids;
  if (add_bos && tok.bos_id() >= 0) ids.push_back(tok.bos_id());
  for (int32_t id : tok.encode(text)) ids.push_back(id);
  return ids;
}

absl::StatusOr<std::vector<int64_t>> parse_id_list(const std::string& s) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t end = s.find(',', pos);
    if (end == std::string::npos) end = s.size();
    const std::string item = s.substr(pos, end - pos);
    char* stop = nullptr;
    const long long v = std::strtoll(item.c_str(), &stop, 10);
    if (item.empty() || *stop != '\0') {
      return absl::InvalidArgumentError(absl::StrCat("--prompt_ids: '", item, "' is not an integer id"));
    }
    ids.push_back(v);
    pos = end + 1;
  }
  return ids;
}

absl::Status check_vocab(const data::Tokenizer& tok, const models::CausalLm& lm) {
  if (tok.vocab_size() > lm.config().vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", tok.vocab_size(),
                                                   " ids but the model's vocabulary has ", lm.config().vocab_size(),
                                                   ": wrong tokenizer for this model?"));
  }
  return absl::OkStatus();
}

absl::Status run_convert(const ParsedFlags& f) {
  if (f.get("from") != "llama2c") {
    return absl::InvalidArgumentError(absl::StrCat("--from=", f.get("from"), " is not supported (supported: llama2c)"));
  }
  PEFT_ASSIGN_OR_RETURN(c10::ScalarType dtype, models::dtype_from_name(f.get("dtype")));
  PEFT_ASSIGN_OR_RETURN(bool overwrite, f.get_bool("overwrite"));
  models::SaveOptions so;
  so.dtype = dtype;
  so.overwrite = overwrite;
  if (f.has("tokenizer")) {
    // Check it really is a tokenizer, then store it under the name loaders
    // look for inside a model directory.
    PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, data::load_tokenizer(f.get("tokenizer")));
    std::string name = fs::path(f.get("tokenizer")).filename().string();
    if (tok->kind() == "sentencepiece") name = "tokenizer.model";
    if (tok->kind() == "llama2c") name = "tokenizer.bin";
    if ((tok->kind() == "gpt2_bpe" || tok->kind() == "tokenizer_json") && fs::is_directory(f.get("tokenizer"))) {
      return absl::InvalidArgumentError("--tokenizer for a BPE tokenizer must be a tokenizer.json file");
    }
    so.extra_files.push_back({f.get("tokenizer"), name});
  }
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::import_llama2c(f.get("input")));
  auto t0 = std::chrono::steady_clock::now();
  PEFT_RETURN_IF_ERROR(models::save_model(*lm, f.get("output"), so));
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int64_t params = 0;
  for (const auto& p : lm->hf_parameters()) params += p.tensor.numel();
  std::fprintf(stdout, "%s\n",
               dump({{"output", f.get("output")},
                     {"model_type", lm->config().model_type()},
                     {"parameters", params},
                     {"dtype", f.get("dtype")},
                     {"seconds", secs}})
                   .c_str());
  return absl::OkStatus();
}

absl::Status run_generate(const ParsedFlags& f) {
  PEFT_RETURN_IF_ERROR(apply_threads(f));
  const std::string format = f.get("format");
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError(absl::StrCat("--format must be text or json, got '", format, "'"));
  }
  models::GenerateOptions o;
  PEFT_ASSIGN_OR_RETURN(o.max_new_tokens, f.get_int("max_new_tokens"));
  PEFT_ASSIGN_OR_RETURN(o.temperature, f.get_double("temperature"));
  PEFT_ASSIGN_OR_RETURN(o.top_k, f.get_int("top_k"));
  PEFT_ASSIGN_OR_RETURN(o.top_p, f.get_double("top_p"));
  PEFT_ASSIGN_OR_RETURN(int64_t seed, f.get_int("seed"));
  o.seed = static_cast<uint64_t>(seed);
  if (o.max_new_tokens < 0) return absl::InvalidArgumentError("--max_new_tokens must be >= 0");
  if (o.temperature < 0) return absl::InvalidArgumentError("--temperature must be >= 0");
  PEFT_ASSIGN_OR_RETURN(bool no_bos, f.get_bool("no_bos"));
  PEFT_ASSIGN_OR_RETURN(bool chat, f.get_bool("chat"));

  const bool by_ids = f.has("prompt_ids");
  if (by_ids == f.has("prompt")) return absl::InvalidArgumentError("give exactly one of --prompt and --prompt_ids");
  if (chat && by_ids) return absl::InvalidArgumentError("--chat needs --prompt (a user message), not --prompt_ids");
  if (!chat && f.has("system")) return absl::InvalidArgumentError("--system needs --chat");
  // With --prompt_ids the tokenizer is optional (used only to print text).
  std::unique_ptr<data::Tokenizer> tok;
  absl::StatusOr<std::unique_ptr<data::Tokenizer>> t = tokenizer_for(f, f.get("model"));
  if (t.ok()) {
    tok = std::move(*t);
  } else if (!by_ids || f.has("tokenizer")) {
    return t.status();
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<PeftModel> pm, load_for_inference(f));
  models::CausalLm* lm = &pm->model();
  if (tok) PEFT_RETURN_IF_ERROR(check_vocab(*tok, *lm));
  std::vector<int64_t> prompt;
  if (by_ids) {
    PEFT_ASSIGN_OR_RETURN(prompt, parse_id_list(f.get("prompt_ids")));
  } else if (chat) {
    // The conversation as training renders it, ending with the header of the
    // assistant's turn; generation stops at the turn's closing token.
    PEFT_ASSIGN_OR_RETURN(data::ChatTemplate t,
                          with_context(data::resolve_chat_template(f.get("chat_template"), *tok), "--chat"));
    std::vector<data::ChatMessage> messages;
    if (f.has("system")) messages.push_back({"system", f.get("system")});
    messages.push_back({"user", f.get("prompt")});
    data::ChatRenderOptions ro;
    ro.add_generation_prompt = true;
    PEFT_ASSIGN_OR_RETURN(data::RenderedChat r, with_context(data::render_chat(t, messages, *tok, ro), "--chat"));
    prompt.assign(r.ids.begin(), r.ids.end());
    if (const int32_t end = data::chat_turn_end_id(t, *tok); end >= 0) o.stop_ids.push_back(end);
  } else {
    prompt = encode_prompt(*tok, f.get("prompt"), tok->add_bos_by_default() && !no_bos);
  }
  if (prompt.empty()) return absl::InvalidArgumentError("the prompt has no tokens and the tokenizer has no BOS");
  if (static_cast<int64_t>(prompt.size()) >= lm->config().max_positions()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt is ", prompt.size(),
                                                   " tokens, longer than the model's context of ",
                                                   lm->config().max_positions(), " positions"));
  }

  // Text mode streams the continuation; decoding the whole continuation each
  // step keeps multi-byte characters split across tokens intact.
  std::vector<int32_t> so_far;
  std::string printed;
  if (format == "text" && tok && !chat) {  // with --chat only the reply is printed
    std::fputs(by_ids ? tok->decode(to_i32(prompt)).c_str() : f.get("prompt").c_str(), stdout);
    std::fflush(stdout);
  }
  auto on_token = [&](int64_t id) {
    if (format != "text") return;
    if (!tok) {
      std::fprintf(stdout, "%lld ", static_cast<long long>(id));
      std::fflush(stdout);
      return;
    }
    so_far.push_back(static_cast<int32_t>(id));
    std::string text = tok->decode(so_far);
    if (text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0) {
      std::fputs(text.c_str() + printed.size(), stdout);
      std::fflush(stdout);
      printed = text;
    }
  };
  PEFT_ASSIGN_OR_RETURN(models::GenerateResult r, models::generate(*lm, prompt, o, on_token));
  if (format == "text") {
    std::fputs("\n", stdout);
    std::fflush(stdout);  // the text ends before the speed line on stderr
  } else {
    json out = {{"prompt_ids", prompt},
                {"generated_ids", r.generated_ids},
                {"text", tok ? tok->decode(to_i32(r.generated_ids)) : std::string()}};
    std::fprintf(stdout, "%s\n", dump(out).c_str());
  }
  const double n = static_cast<double>(r.generated_ids.size());
  std::fprintf(stderr, "prompt %zu tokens in %.3f s (%.1f tok/s); generated %.0f tokens, %.1f tok/s\n", prompt.size(),
               r.prefill_seconds, prompt.size() / std::max(r.prefill_seconds, 1e-9), n,
               n > 1 ? (n - 1) / std::max(r.decode_seconds, 1e-9) : 0.0);
  return absl::OkStatus();
}

// Stands in for a tokenizer when a model directory has none: enough for
// pre-tokenized {"ids"} records; a text record makes the read fail.
class IdsOnlyTokenizer : public data::Tokenizer {
 public:
  explicit IdsOnlyTokenizer(int32_t vocab) : vocab_(vocab) {}
  std::vector<int32_t> encode(std::string_view) const override {
    saw_text_ = true;
    return {};
  }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  int32_t vocab_size() const override { return vocab_; }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return -1; }
  int32_t pad_id() const override { return -1; }
  bool add_bos_by_default() const override { return false; }
  std::string id_to_piece(int32_t) const override { return ""; }
  std::string kind() const override { return "ids_only"; }
  bool saw_text() const { return saw_text_; }

 private:
  int32_t vocab_;
  mutable std::atomic<bool> saw_text_{false};
};

// The documents `peft eval` scores, read by the training data loader's rules
// (data/records.h): JSON lines with "text" or "ids", instruction records
// (only the response is scored), chat records (only the assistant turns are),
// or plain text split into documents at blank lines. Each document is scored whole, in windows of the model's context;
// no EOS is appended (the loss is that of the text as written).
absl::StatusOr<std::vector<data::Document>> read_eval_data(const std::string& path, const data::Tokenizer* tok,
                                                           int32_t vocab, bool add_bos) {
  PEFT_ASSIGN_OR_RETURN(const std::string content, with_context(io::read_file(path), "--data"));
  data::DataOptions o;
  o.seq_len = data::DataOptions::kMaxSeqLen;
  o.pack = false;
  o.add_bos = add_bos;
  o.add_eos = false;
  o.validation_fraction = 0;
  o.threads = 0;
  data::DataStats stats;
  if (tok != nullptr) return data::read_documents(content, path, *tok, o, &stats);
  IdsOnlyTokenizer ids_only(vocab);
  absl::StatusOr<std::vector<data::Document>> docs = data::read_documents(content, path, ids_only, o, &stats);
  if (ids_only.saw_text()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": text records need a tokenizer (none in the model directory; pass --tokenizer)"));
  }
  return docs;
}

absl::Status run_eval(const ParsedFlags& f) {
  PEFT_RETURN_IF_ERROR(apply_threads(f));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<PeftModel> pm, load_for_inference(f));
  models::CausalLm* lm = &pm->model();
  std::unique_ptr<data::Tokenizer> tok;
  absl::StatusOr<std::unique_ptr<data::Tokenizer>> t = tokenizer_for(f, f.get("model"));
  if (t.ok()) {
    tok = std::move(*t);
    PEFT_RETURN_IF_ERROR(check_vocab(*tok, *lm));
  } else if (f.has("tokenizer")) {
    return t.status();
  }
  PEFT_ASSIGN_OR_RETURN(bool no_bos, f.get_bool("no_bos"));
  PEFT_ASSIGN_OR_RETURN(std::vector<data::Document> docs,
                        read_eval_data(f.get("data"), tok.get(), static_cast<int32_t>(lm->config().vocab_size()),
                                       tok && tok->add_bos_by_default() && !no_bos));
  auto t0 = std::chrono::steady_clock::now();
  double sum = 0;
  int64_t tokens = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    const std::vector<int32_t>& ids = docs[i].tokens;
    absl::StatusOr<models::EvalResult> r = models::evaluate_sequence(*lm, std::vector<int64_t>(ids.begin(), ids.end()));
    if (!r.ok()) return absl::Status(r.status().code(), absl::StrCat("sequence ", i + 1, ": ", r.status().message()));
    // r->nll[p] is the loss of predicting ids[p + 1]; only targets count.
    for (size_t p = 0; p < r->nll.size(); ++p) {
      if (docs[i].targets[p + 1] == 0) continue;
      sum += r->nll[p];
      ++tokens;
    }
  }
  if (tokens == 0) return absl::InvalidArgumentError("no sequence has two or more tokens to score");
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double loss = sum / static_cast<double>(tokens);
  std::fprintf(stdout, "%s\n",
               dump({{"loss", loss},
                     {"perplexity", std::exp(loss)},
                     {"tokens", tokens},
                     {"sequences", docs.size()},
                     {"seconds", secs}})
                   .c_str());
  return absl::OkStatus();
}

// The shape flags of `peft init`, which describe a model without --config.
constexpr const char* kInitShapeFlags[] = {
    "arch",      "vocab_size",   "hidden_size",   "intermediate_size",  "num_layers",
    "num_heads", "num_kv_heads", "max_positions", "tie_word_embeddings"};

// `peft init` without --config: the model the shape flags describe.
absl::StatusOr<models::ModelConfig> init_config_from_flags(const ParsedFlags& f) {
  models::ModelConfig cfg;
  const std::string arch = f.get("arch");
  auto geti = [&](const char* name, int64_t* out) -> absl::Status {
    PEFT_ASSIGN_OR_RETURN(*out, f.get_int(name));
    return absl::OkStatus();
  };
  int64_t vocab, hidden, inter, layers, heads, kv_heads, positions;
  PEFT_RETURN_IF_ERROR(geti("vocab_size", &vocab));
  PEFT_RETURN_IF_ERROR(geti("hidden_size", &hidden));
  PEFT_RETURN_IF_ERROR(geti("intermediate_size", &inter));
  PEFT_RETURN_IF_ERROR(geti("num_layers", &layers));
  PEFT_RETURN_IF_ERROR(geti("num_heads", &heads));
  PEFT_RETURN_IF_ERROR(geti("num_kv_heads", &kv_heads));
  PEFT_RETURN_IF_ERROR(geti("max_positions", &positions));
  PEFT_ASSIGN_OR_RETURN(bool tied, f.get_bool("tie_word_embeddings"));
  if (arch == "llama") {
    cfg.arch = models::Architecture::kLlama;
    models::LlamaConfig& c = cfg.llama;
    c.vocab_size = vocab;
    c.hidden_size = hidden;
    c.intermediate_size = inter > 0 ? inter : 0;
    if (inter <= 0) {  // LLaMA's rule: 2/3 of 4*hidden, rounded up to a multiple of 32
      c.intermediate_size = ((8 * hidden / 3 + 31) / 32) * 32;
    }
    c.num_hidden_layers = layers;
    c.num_attention_heads = heads;
    c.num_key_value_heads = kv_heads > 0 ? kv_heads : heads;
    c.head_dim = heads > 0 ? hidden / heads : 0;
    c.max_position_embeddings = positions;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = tied;
    cfg.bos_token_id = 1;
    cfg.eos_token_ids = {2};
  } else if (arch == "gpt2") {
    cfg.arch = models::Architecture::kGpt2;
    models::Gpt2Config& c = cfg.gpt2;
    c.vocab_size = vocab;
    c.n_embd = hidden;
    c.n_inner = inter > 0 ? inter : 4 * hidden;
    c.n_layer = layers;
    c.n_head = heads;
    c.n_positions = positions;
    c.tie_word_embeddings = true;
    cfg.bos_token_id = vocab - 1;
    cfg.eos_token_ids = {vocab - 1};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--arch must be llama or gpt2, got '", arch, "' (use --config=FILE for mistral and qwen2)"));
  }
  return cfg;
}

absl::Status run_init(const ParsedFlags& f) {
  models::ModelConfig cfg;
  double init_std = 0.02;
  const std::string dtype_name = f.has("config") && !f.has("dtype") ? "" : f.get("dtype");
  if (f.has("config")) {
    // Every key of the file is kept (model_type, window, biases, rope
    // scaling, tying); shape flags would contradict it.
    for (const char* name : kInitShapeFlags) {
      if (f.has(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " cannot be combined with --config (the config file sets the model's shape)"));
      }
    }
    PEFT_ASSIGN_OR_RETURN(cfg, with_context(models::read_model_config(f.get("config")), "--config"));
    if (cfg.arch == models::Architecture::kLlama) {
      init_std = cfg.llama.initializer_range;  // transformers' _init_weights std
      if (!(init_std > 0) || !std::isfinite(init_std)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--config: initializer_range must be positive to draw the weights, got ", init_std));
      }
    }
  } else {
    PEFT_ASSIGN_OR_RETURN(cfg, init_config_from_flags(f));
  }
  int64_t seed;
  PEFT_ASSIGN_OR_RETURN(seed, f.get_int("seed"));
  // With --config and no --dtype the file's torch_dtype is kept.
  PEFT_ASSIGN_OR_RETURN(c10::ScalarType dtype,
                        with_context(models::dtype_from_name(dtype_name.empty() ? cfg.torch_dtype : dtype_name),
                                     dtype_name.empty() ? "config.json torch_dtype" : "--dtype"));
  PEFT_ASSIGN_OR_RETURN(bool overwrite, f.get_bool("overwrite"));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::create_model(cfg));
  models::init_weights_(*lm, static_cast<uint64_t>(seed), init_std);
  models::SaveOptions so;
  so.dtype = dtype;
  so.overwrite = overwrite;
  PEFT_ASSIGN_OR_RETURN(int64_t shard_mb, f.get_int("max_shard_mb"));
  if (shard_mb <= 0) return absl::InvalidArgumentError("--max_shard_mb must be positive");
  so.max_shard_bytes = static_cast<uint64_t>(shard_mb) << 20;
  PEFT_RETURN_IF_ERROR(models::save_model(*lm, f.get("output"), so));
  int64_t params = 0;
  for (const auto& p : lm->hf_parameters()) params += p.tensor.numel();
  std::fprintf(stdout, "%s\n",
               dump({{"output", f.get("output")},
                     {"model_type", lm->config().model_type()},
                     {"parameters", params},
                     {"dtype", models::dtype_name(dtype)}})
                   .c_str());
  return absl::OkStatus();
}

}  // namespace

// --prune: the HSM structural prune with hard 0/1 gates; other active
// adapters (LoRA) are folded in.
absl::StatusOr<std::shared_ptr<models::CausalLm>> prune_adapters(PeftModel& pm) {
  for (const std::string& name : pm.adapter_names()) {
    absl::StatusOr<HsmAdapterImpl*> hsm = find_hsm_adapter(pm, name);
    if (!hsm.ok()) continue;
    (*hsm)->set_hard_gate_(true);
    return prune_hsm(pm, name);
  }
  return absl::InvalidArgumentError("--prune needs an HSM adapter among --adapter");
}

namespace {

absl::Status run_merge(const ParsedFlags& f) {
  PEFT_RETURN_IF_ERROR(apply_threads(f));
  PEFT_ASSIGN_OR_RETURN(bool overwrite, f.get_bool("overwrite"));
  PEFT_ASSIGN_OR_RETURN(bool prune, f.get_bool("prune"));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, load_base(f.get("model")));
  models::SaveOptions so;
  so.overwrite = overwrite;
  so.extra_files = models::tokenizer_files(f.get("model"));
  std::string dtype = f.get("dtype");
  if (dtype.empty()) dtype = lm->config().torch_dtype;
  PEFT_ASSIGN_OR_RETURN(so.dtype, models::dtype_from_name(dtype));
  PeftModel pm(lm);
  auto t0 = std::chrono::steady_clock::now();
  PEFT_RETURN_IF_ERROR(load_adapters(pm, f.get("adapter")));
  std::shared_ptr<models::CausalLm> out = lm;
  if (prune) {
    PEFT_ASSIGN_OR_RETURN(out, prune_adapters(pm));
  } else {
    PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
  }
  const double merge_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  PEFT_RETURN_IF_ERROR(models::save_model(*out, f.get("output"), so));
  int64_t params = 0;
  for (const auto& p : out->hf_parameters()) params += p.tensor.numel();
  std::fprintf(stdout, "%s\n",
               dump({{"output", f.get("output")},
                     {"parameters", params},
                     {"hidden_size", out->config().hidden_size()},
                     {"dtype", dtype},
                     {"merge_seconds", merge_s}})
                   .c_str());
  return absl::OkStatus();
}

// peft to-lora: a PiSSA/OLoRA adapter, whose init rewrote the base weights,
// as an ordinary LoRA that loads on the unmodified base (in peft-cpp or
// Hugging Face PEFT). Loading the adapter on the original base runs the init
// again, which gives back the initial factors the conversion needs.
absl::Status run_to_lora(const ParsedFlags& f) {
  PEFT_RETURN_IF_ERROR(apply_threads(f));
  PEFT_ASSIGN_OR_RETURN(bool overwrite, f.get_bool("overwrite"));
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, load_base(f.get("model")));
  PeftModel pm(lm);
  PEFT_RETURN_IF_ERROR(pm.load_adapter(f.get("adapter"), "default"));
  // Keep the base model name the adapter was saved with.
  std::string base_name;
  if (absl::StatusOr<std::string> text = io::read_file(f.get("adapter") + "/adapter_config.json"); text.ok()) {
    const json j = json::parse(*text, nullptr, false);
    if (!j.is_discarded() && j.is_object() && j.contains("base_model_name_or_path") &&
        j["base_model_name_or_path"].is_string()) {
      base_name = j["base_model_name_or_path"].get<std::string>();
    }
  }
  PEFT_RETURN_IF_ERROR(pm.save_adapter(f.get("output"), "default", overwrite, base_name, /*convert_to_lora=*/true));
  const proto::AdapterConfig& was = *pm.config("default");
  std::fprintf(stdout, "%s\n",
               dump({{"output", f.get("output")},
                     {"init", proto::LoraOptions::Init_Name(was.lora().init())},
                     {"r", 2 * was.lora().r()}})
                   .c_str());
  return absl::OkStatus();
}

}  // namespace

FlagSpec threads_flag() { return int_flag("threads", "LibTorch intra-op threads (0 = all cores)", 0); }

absl::Status apply_threads(const ParsedFlags& f) {
  PEFT_ASSIGN_OR_RETURN(int64_t n, f.get_int("threads"));
  if (n < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  at::set_num_threads(static_cast<int>(n));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<data::Tokenizer>> tokenizer_for(const ParsedFlags& f, const std::string& model_dir) {
  if (f.has("tokenizer")) return data::load_tokenizer(f.get("tokenizer"));
  absl::StatusOr<std::unique_ptr<data::Tokenizer>> t = data::load_tokenizer(model_dir);
  if (!t.ok()) {
    return absl::Status(t.status().code(), absl::StrCat("no usable tokenizer in ", model_dir,
                                                        " (pass --tokenizer=FILE): ", t.status().message()));
  }
  return t;
}

std::vector<Command> model_commands() {
  std::vector<Command> c;
  c.push_back(
      {"convert",
       "Convert a llama2.c checkpoint into a Hugging Face model directory.",
       {text_flag("from", "source format (llama2c)").required(), text_flag("input", "the checkpoint file").required(),
        text_flag("output", "the model directory to write (must not exist or be empty)").required(),
        text_flag("tokenizer", "a tokenizer file to copy into the directory (tokenizer.model / tokenizer.bin)"),
        text_flag("dtype", "storage dtype: float32, bfloat16 or float16", "float32"),
        bool_flag("overwrite", "replace a non-empty output directory")},
       run_convert});
  c.push_back(
      {"init",
       "Write a randomly initialised model directory (for tests and benchmarks): from a Hugging Face config.json "
       "(llama, mistral, qwen2, gpt2) or from the shape flags (llama, gpt2).",
       {text_flag("config", "a config.json (or a directory holding one) to initialise; excludes the shape flags"),
        text_flag("arch", "llama or gpt2", "llama"), text_flag("output", "the model directory to write").required(),
        int_flag("vocab_size", "vocabulary size", 32000), int_flag("hidden_size", "hidden size", 512),
        int_flag("intermediate_size", "MLP width (0 = LLaMA's 8/3 rule or GPT-2's 4x)", 0),
        int_flag("num_layers", "number of blocks", 8), int_flag("num_heads", "attention heads", 8),
        int_flag("num_kv_heads", "key/value heads for LLaMA (0 = num_heads)", 0),
        int_flag("max_positions", "context length", 2048),
        bool_flag("tie_word_embeddings", "LLaMA: share lm_head with the embedding (GPT-2 always does)"),
        int_flag("seed", "initialisation seed", 0),
        text_flag("dtype", "storage dtype: float32, bfloat16 or float16 (with --config: the file's torch_dtype)",
                  "float32"),
        int_flag("max_shard_mb", "shard the safetensors above this size", 5120),
        bool_flag("overwrite", "replace a non-empty output directory")},
       run_init});
  c.push_back(
      {"merge",
       "Merge an adapter into its base model and write a Hugging Face model directory.",
       {text_flag("model", "the base model directory").required(),
        text_flag("adapter",
                  "adapter directory, or several separated by commas, all active (ours or Hugging Face PEFT LoRA/MiSS)")
            .required(),
        text_flag("output", "the merged model directory to write").required(),
        bool_flag("prune", "apply the HSM structural prune (a smaller hidden size)"),
        text_flag("dtype", "storage dtype (default: the base model's)"),
        bool_flag("overwrite", "replace a non-empty output directory"), threads_flag()},
       run_merge});
  c.push_back({"to-lora",
               "Save a PiSSA/OLoRA adapter as a plain LoRA (rank 2r) for the original, unmodified base model.",
               {text_flag("model", "the ORIGINAL base model directory the adapter was trained from").required(),
                text_flag("adapter", "the PiSSA or OLoRA adapter directory").required(),
                text_flag("output", "the LoRA adapter directory to write").required(),
                bool_flag("overwrite", "replace a non-empty output directory"), threads_flag()},
               run_to_lora});
  c.push_back(
      {"generate",
       "Generate text from a prompt (greedy by default) with a KV cache.",
       {text_flag("model", "Hugging Face model directory").required(),
        text_flag("adapter", "adapter directory (or several, comma-separated) run on top of the model, unmerged"),
        text_flag("tokenizer", "tokenizer file or directory (default: the model directory)"),
        text_flag("prompt", "the prompt text"),
        text_flag("prompt_ids", "comma-separated prompt token ids instead of --prompt (no tokenizer needed)"),
        int_flag("max_new_tokens", "tokens to generate at most", 128),
        double_flag("temperature", "0 = greedy; otherwise sampling temperature", 0),
        int_flag("top_k", "sample from the k most likely tokens (0 = all)", 0),
        double_flag("top_p", "nucleus sampling threshold (1 = off)", 1),
        int_flag("seed", "random seed for sampling", 0), text_flag("format", "text (streamed) or json", "text"),
        bool_flag("no_bos", "do not prepend BOS even if the tokenizer uses one"),
        bool_flag("chat", "send --prompt as a user message through the chat template and print the assistant's reply"),
        text_flag("chat_template", "with --chat: auto (the tokenizer's), llama3, chatml, mistral or plain", "auto"),
        text_flag("system", "with --chat: a system message"), threads_flag()},
       run_generate});
  c.push_back(
      {"eval",
       "Teacher-forced loss and perplexity of a model on a data file.",
       {text_flag("model", "Hugging Face model directory").required(),
        text_flag("adapter", "adapter directory (or several, comma-separated) run on top of the model, unmerged"),
        text_flag("tokenizer", "tokenizer file or directory (default: the model directory)"),
        text_flag("data",
                  "data as training reads it: JSON lines (\"text\", \"ids\", instruction or chat records) or plain "
                  "text")
            .required(),
        bool_flag("no_bos", "do not prepend BOS even if the tokenizer uses one"), threads_flag()},
       run_eval});
  return c;
}

}  // namespace peft::cli
