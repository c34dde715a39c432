#include "models/config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::models {
namespace {

using json = nlohmann::json;

// Reads an integer field; `required` fields must be present and non-null.
absl::Status get_int(const json& j, const char* key, bool required, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing required field '", key, "'"));
    return absl::OkStatus();
  }
  if (it->is_number_float() && !(std::fabs(it->get<double>()) < 9.0e18)) {  // before any cast to int64
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' is out of range: ", it->dump()));
  }
  if (!it->is_number_integer() && !(it->is_number_float() && it->get<double>() == std::trunc(it->get<double>()))) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be an integer, got ", it->dump()));
  }
  if (it->is_number_unsigned() && it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' is out of range: ", it->dump()));
  }
  *out = it->is_number_integer() ? it->get<int64_t>() : static_cast<int64_t>(it->get<double>());
  return absl::OkStatus();
}

absl::Status get_double(const json& j, const char* key, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a number, got ", it->dump()));
  }
  *out = it->get<double>();
  return absl::OkStatus();
}

absl::Status get_bool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be true or false, got ", it->dump()));
  }
  *out = it->get<bool>();
  return absl::OkStatus();
}

absl::Status get_string(const json& j, const char* key, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: field '", key, "' must be a string, got ", it->dump()));
  }
  *out = it->get<std::string>();
  return absl::OkStatus();
}

// rope_scaling (4.x), rope_parameters (v5; may also carry rope_theta).
absl::Status parse_rope(const json& j, LlamaConfig* c) {
  PEFT_RETURN_IF_ERROR(get_double(j, "rope_theta", &c->rope_theta));
  const json* rope = nullptr;
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    auto it = j.find(key);
    if (it != j.end() && !it->is_null()) {
      if (!it->is_object()) {
        return absl::InvalidArgumentError(absl::StrCat("config.json: field '", key, "' must be an object"));
      }
      rope = &*it;
      break;
    }
  }
  if (rope == nullptr) return absl::OkStatus();
  PEFT_RETURN_IF_ERROR(get_double(*rope, "rope_theta", &c->rope_theta));
  RopeScaling& s = c->rope_scaling;
  std::string type;
  PEFT_RETURN_IF_ERROR(get_string(*rope, "type", &type));
  PEFT_RETURN_IF_ERROR(get_string(*rope, "rope_type", &type));
  if (type.empty()) type = "default";
  if (type != "default" && type != "llama3" && type != "linear") {
    return absl::UnimplementedError(absl::StrCat("config.json: rope_scaling type '", type,
                                                 "' is not supported (supported: default, linear, llama3)"));
  }
  s.rope_type = type;
  PEFT_RETURN_IF_ERROR(get_double(*rope, "factor", &s.factor));
  PEFT_RETURN_IF_ERROR(get_double(*rope, "low_freq_factor", &s.low_freq_factor));
  PEFT_RETURN_IF_ERROR(get_double(*rope, "high_freq_factor", &s.high_freq_factor));
  PEFT_RETURN_IF_ERROR(get_int(*rope, "original_max_position_embeddings", false, &s.original_max_position_embeddings));
  return absl::OkStatus();
}

// `sliding_window` of mistral and qwen2: absent = transformers' default
// (4096 for both), null = no window, else a positive integer.
absl::Status parse_sliding_window(const json& j, LlamaConfig* c) {
  auto it = j.find("sliding_window");
  if (it == j.end()) {
    c->sliding_window = 4096;
    return absl::OkStatus();
  }
  if (it->is_null()) {
    c->sliding_window = 0;
    return absl::OkStatus();
  }
  PEFT_RETURN_IF_ERROR(get_int(j, "sliding_window", false, &c->sliding_window));
  if (c->sliding_window <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: 'sliding_window' must be a positive integer or null, got ", c->sliding_window));
  }
  return absl::OkStatus();
}

absl::Status parse_qwen2_window(const json& j, LlamaConfig* c) {
  PEFT_RETURN_IF_ERROR(parse_sliding_window(j, c));
  c->use_sliding_window = false;
  PEFT_RETURN_IF_ERROR(get_bool(j, "use_sliding_window", &c->use_sliding_window));
  c->max_window_layers = 28;  // Qwen2Config's default
  PEFT_RETURN_IF_ERROR(get_int(j, "max_window_layers", false, &c->max_window_layers));
  auto it = j.find("layer_types");
  if (it != j.end() && !it->is_null()) {
    if (!it->is_array()) return absl::InvalidArgumentError("config.json: field 'layer_types' must be a list");
    for (const json& t : *it) {
      if (!t.is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat("config.json: field 'layer_types' must hold strings, got ", t.dump()));
      }
      c->layer_types.push_back(t.get<std::string>());
    }
  }
  return absl::OkStatus();
}

absl::Status parse_llama(const json& j, ModelConfig* cfg) {
  LlamaConfig& c = cfg->llama;
  PEFT_RETURN_IF_ERROR(get_int(j, "vocab_size", true, &c.vocab_size));
  PEFT_RETURN_IF_ERROR(get_int(j, "hidden_size", true, &c.hidden_size));
  PEFT_RETURN_IF_ERROR(get_int(j, "intermediate_size", true, &c.intermediate_size));
  PEFT_RETURN_IF_ERROR(get_int(j, "num_hidden_layers", true, &c.num_hidden_layers));
  PEFT_RETURN_IF_ERROR(get_int(j, "num_attention_heads", true, &c.num_attention_heads));
  c.num_key_value_heads = c.num_attention_heads;
  PEFT_RETURN_IF_ERROR(get_int(j, "num_key_value_heads", false, &c.num_key_value_heads));
  c.head_dim = c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0;
  PEFT_RETURN_IF_ERROR(get_int(j, "head_dim", false, &c.head_dim));
  PEFT_RETURN_IF_ERROR(get_int(j, "max_position_embeddings", false, &c.max_position_embeddings));
  PEFT_RETURN_IF_ERROR(get_double(j, "rms_norm_eps", &c.rms_norm_eps));
  PEFT_RETURN_IF_ERROR(get_double(j, "initializer_range", &c.initializer_range));
  PEFT_RETURN_IF_ERROR(parse_rope(j, &c));
  // Mistral and Qwen2 hard-code their biases (transformers ignores
  // attention_bias / mlp_bias for them): none for Mistral, q/k/v for Qwen2.
  switch (c.family) {
    case LlamaFamily::kLlama:
      PEFT_RETURN_IF_ERROR(get_bool(j, "attention_bias", &c.attention_bias));
      PEFT_RETURN_IF_ERROR(get_bool(j, "mlp_bias", &c.mlp_bias));
      break;
    case LlamaFamily::kMistral: PEFT_RETURN_IF_ERROR(parse_sliding_window(j, &c)); break;
    case LlamaFamily::kQwen2:
      c.qkv_bias = true;
      PEFT_RETURN_IF_ERROR(parse_qwen2_window(j, &c));
      break;
  }
  PEFT_RETURN_IF_ERROR(get_bool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  PEFT_RETURN_IF_ERROR(get_string(j, "hidden_act", &c.hidden_act));
  if (c.hidden_act != "silu") {
    return absl::UnimplementedError(absl::StrCat("config.json: hidden_act '", c.hidden_act, "' is not supported for ",
                                                 cfg->model_type(), " (only silu)"));
  }
  return absl::OkStatus();
}

absl::Status parse_gpt2(const json& j, ModelConfig* cfg) {
  Gpt2Config& c = cfg->gpt2;
  // transformers' attribute_map aliases (hidden_size -> n_embd, ...).
  auto alias = [&](const char* hf, const char* alt, bool required, int64_t* out) -> absl::Status {
    if (j.contains(hf)) return get_int(j, hf, required, out);
    if (j.contains(alt)) return get_int(j, alt, required, out);
    if (required) return absl::InvalidArgumentError(absl::StrCat("config.json: missing required field '", hf, "'"));
    return absl::OkStatus();
  };
  PEFT_RETURN_IF_ERROR(get_int(j, "vocab_size", true, &c.vocab_size));
  PEFT_RETURN_IF_ERROR(alias("n_embd", "hidden_size", true, &c.n_embd));
  PEFT_RETURN_IF_ERROR(alias("n_layer", "num_hidden_layers", true, &c.n_layer));
  PEFT_RETURN_IF_ERROR(alias("n_head", "num_attention_heads", true, &c.n_head));
  PEFT_RETURN_IF_ERROR(alias("n_positions", "max_position_embeddings", false, &c.n_positions));
  c.n_inner = 4 * c.n_embd;
  PEFT_RETURN_IF_ERROR(get_int(j, "n_inner", false, &c.n_inner));
  PEFT_RETURN_IF_ERROR(get_double(j, "layer_norm_epsilon", &c.layer_norm_epsilon));
  PEFT_RETURN_IF_ERROR(get_string(j, "activation_function", &c.activation_function));
  if (c.activation_function != "gelu_new" && c.activation_function != "gelu" &&
      c.activation_function != "gelu_pytorch_tanh") {
    return absl::UnimplementedError(absl::StrCat("config.json: activation_function '", c.activation_function,
                                                 "' is not supported for gpt2 (gelu_new, gelu, gelu_pytorch_tanh)"));
  }
  PEFT_RETURN_IF_ERROR(get_bool(j, "scale_attn_weights", &c.scale_attn_weights));
  PEFT_RETURN_IF_ERROR(get_bool(j, "scale_attn_by_inverse_layer_idx", &c.scale_attn_by_inverse_layer_idx));
  bool reorder = false;
  PEFT_RETURN_IF_ERROR(get_bool(j, "reorder_and_upcast_attn", &reorder));  // numerics only; same math
  PEFT_RETURN_IF_ERROR(get_bool(j, "tie_word_embeddings", &c.tie_word_embeddings));
  return absl::OkStatus();
}

absl::Status parse_token_ids(const json& j, ModelConfig* cfg) {
  if (auto it = j.find("bos_token_id"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer())
      return absl::InvalidArgumentError("config.json: field 'bos_token_id' must be an integer");
    cfg->bos_token_id = it->get<int64_t>();
  }
  if (auto it = j.find("eos_token_id"); it != j.end() && !it->is_null()) {
    if (it->is_number_integer()) {
      cfg->eos_token_ids = {it->get<int64_t>()};
    } else if (it->is_array()) {
      for (const json& e : *it) {
        if (!e.is_number_integer())
          return absl::InvalidArgumentError("config.json: field 'eos_token_id' must hold integers");
        cfg->eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      return absl::InvalidArgumentError("config.json: field 'eos_token_id' must be an integer or a list");
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::vocab_size() const { return arch == Architecture::kLlama ? llama.vocab_size : gpt2.vocab_size; }
int64_t ModelConfig::max_positions() const {
  return arch == Architecture::kLlama ? llama.max_position_embeddings : gpt2.n_positions;
}
int64_t ModelConfig::num_layers() const {
  return arch == Architecture::kLlama ? llama.num_hidden_layers : gpt2.n_layer;
}
int64_t ModelConfig::hidden_size() const { return arch == Architecture::kLlama ? llama.hidden_size : gpt2.n_embd; }
bool ModelConfig::tie_word_embeddings() const {
  return arch == Architecture::kLlama ? llama.tie_word_embeddings : gpt2.tie_word_embeddings;
}
std::string ModelConfig::model_type() const {
  if (arch == Architecture::kGpt2) return "gpt2";
  switch (llama.family) {
    case LlamaFamily::kMistral: return "mistral";
    case LlamaFamily::kQwen2: return "qwen2";
    case LlamaFamily::kLlama: break;
  }
  return "llama";
}

int64_t LlamaConfig::attention_window(int64_t layer) const {
  switch (family) {
    case LlamaFamily::kLlama: return 0;
    case LlamaFamily::kMistral: return sliding_window;
    case LlamaFamily::kQwen2: break;
  }
  if (!use_sliding_window || sliding_window <= 0) return 0;
  const bool sliding = layer_types.empty() ? layer >= max_window_layers
                                           : layer < static_cast<int64_t>(layer_types.size()) &&
                                                 layer_types[static_cast<size_t>(layer)] == "sliding_attention";
  return sliding ? sliding_window : 0;
}

absl::Status validate_model_config(const ModelConfig& cfg) {
  auto positive = [](const char* name, int64_t v) -> absl::Status {
    if (v <= 0) return absl::InvalidArgumentError(absl::StrCat("config.json: '", name, "' must be positive, got ", v));
    return absl::OkStatus();
  };
  // Far above any real model (the largest vocabularies are ~256k, hidden
  // sizes ~16k, contexts ~10M): a bigger value is a corrupt file.
  auto at_most = [](const char* name, int64_t v, int64_t limit) -> absl::Status {
    if (v > limit) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: '", name, "' = ", v, " is larger than ", limit,
                                                     ", the largest this reader accepts (a corrupt file?)"));
    }
    return absl::OkStatus();
  };
  if (cfg.arch == Architecture::kLlama) {
    const LlamaConfig& c = cfg.llama;
    PEFT_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
    PEFT_RETURN_IF_ERROR(at_most("vocab_size", c.vocab_size, int64_t{1} << 24));
    PEFT_RETURN_IF_ERROR(at_most("hidden_size", c.hidden_size, int64_t{1} << 17));
    PEFT_RETURN_IF_ERROR(at_most("intermediate_size", c.intermediate_size, int64_t{1} << 19));
    PEFT_RETURN_IF_ERROR(at_most("num_hidden_layers", c.num_hidden_layers, 1024));
    PEFT_RETURN_IF_ERROR(at_most("num_attention_heads", c.num_attention_heads, 4096));
    PEFT_RETURN_IF_ERROR(at_most("head_dim", c.head_dim, 4096));
    PEFT_RETURN_IF_ERROR(at_most("max_position_embeddings", c.max_position_embeddings, int64_t{1} << 24));
    if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: 'rope_theta' must be positive, got ", c.rope_theta));
    }
    if (!(c.rms_norm_eps >= 0) || !std::isfinite(c.rms_norm_eps)) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: 'rms_norm_eps' must be >= 0, got ", c.rms_norm_eps));
    }
    PEFT_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
    PEFT_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
    PEFT_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_hidden_layers));
    PEFT_RETURN_IF_ERROR(positive("num_attention_heads", c.num_attention_heads));
    PEFT_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_key_value_heads));
    PEFT_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
    PEFT_RETURN_IF_ERROR(positive("max_position_embeddings", c.max_position_embeddings));
    if (c.num_attention_heads % c.num_key_value_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: num_attention_heads (", c.num_attention_heads,
                                                     ") must be a multiple of num_key_value_heads (",
                                                     c.num_key_value_heads, ")"));
    }
    if (c.head_dim % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: head_dim must be even for RoPE, got ", c.head_dim));
    }
    if (c.rope_scaling.rope_type != "default" && c.rope_scaling.factor <= 0) {
      return absl::InvalidArgumentError("config.json: rope_scaling.factor must be positive");
    }
    if (c.sliding_window < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: 'sliding_window' must be positive or null, got ", c.sliding_window));
    }
    PEFT_RETURN_IF_ERROR(at_most("sliding_window", c.sliding_window, int64_t{1} << 24));
    if (c.max_window_layers < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: 'max_window_layers' must be >= 0, got ", c.max_window_layers));
    }
    if (!c.layer_types.empty()) {
      if (static_cast<int64_t>(c.layer_types.size()) != c.num_hidden_layers) {
        return absl::InvalidArgumentError(absl::StrCat("config.json: 'layer_types' has ", c.layer_types.size(),
                                                       " entries but num_hidden_layers is ", c.num_hidden_layers));
      }
      for (size_t i = 0; i < c.layer_types.size(); ++i) {
        const std::string& t = c.layer_types[i];
        if (t != "full_attention" && t != "sliding_attention") {
          return absl::UnimplementedError(absl::StrCat("config.json: layer_types[", i, "] = '", t,
                                                       "' is not supported (full_attention, sliding_attention)"));
        }
        if (t == "sliding_attention" && (!c.use_sliding_window || c.sliding_window <= 0)) {
          // transformers' Qwen2Config drops the window size when
          // use_sliding_window is false: such a layer has no window to use.
          return absl::InvalidArgumentError(
              absl::StrCat("config.json: layer_types[", i, "] is 'sliding_attention' but ",
                           c.sliding_window <= 0 ? "sliding_window is null" : "use_sliding_window is false",
                           ", so that layer has no window size; fix layer_types or the window fields"));
        }
      }
    }
  } else {
    const Gpt2Config& c = cfg.gpt2;
    PEFT_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
    PEFT_RETURN_IF_ERROR(at_most("vocab_size", c.vocab_size, int64_t{1} << 24));
    PEFT_RETURN_IF_ERROR(at_most("n_embd", c.n_embd, int64_t{1} << 17));
    PEFT_RETURN_IF_ERROR(at_most("n_inner", c.n_inner, int64_t{1} << 19));
    PEFT_RETURN_IF_ERROR(at_most("n_layer", c.n_layer, 1024));
    PEFT_RETURN_IF_ERROR(at_most("n_head", c.n_head, 4096));
    PEFT_RETURN_IF_ERROR(at_most("n_positions", c.n_positions, int64_t{1} << 24));
    PEFT_RETURN_IF_ERROR(positive("n_embd", c.n_embd));
    PEFT_RETURN_IF_ERROR(positive("n_layer", c.n_layer));
    PEFT_RETURN_IF_ERROR(positive("n_head", c.n_head));
    PEFT_RETURN_IF_ERROR(positive("n_inner", c.n_inner));
    PEFT_RETURN_IF_ERROR(positive("n_positions", c.n_positions));
    if (c.n_embd % c.n_head != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: n_embd (", c.n_embd, ") must be divisible by n_head (", c.n_head, ")"));
    }
  }
  for (int64_t e : cfg.eos_token_ids) {
    if (e < 0 || e >= cfg.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("config.json: eos_token_id ", e, " outside the vocabulary"));
    }
  }
  return absl::OkStatus();
}

double estimated_parameters(const ModelConfig& cfg) {
  if (cfg.arch == Architecture::kLlama) {
    const LlamaConfig& c = cfg.llama;
    const double h = static_cast<double>(c.hidden_size), v = static_cast<double>(c.vocab_size);
    const double q = static_cast<double>(c.num_attention_heads) * static_cast<double>(c.head_dim);
    const double kv = static_cast<double>(c.num_key_value_heads) * static_cast<double>(c.head_dim);
    const double f = static_cast<double>(c.intermediate_size);
    double block = h * q * 2 + h * kv * 2 + 3 * h * f + 2 * h;
    if (c.has_qkv_bias()) block += q + 2 * kv;  // q_proj, k_proj, v_proj biases
    if (c.has_o_bias()) block += h;
    if (c.mlp_bias) block += 2 * f + h;
    return v * h * (c.tie_word_embeddings ? 1 : 2) + static_cast<double>(c.num_hidden_layers) * block + h;
  }
  const Gpt2Config& c = cfg.gpt2;
  const double e = static_cast<double>(c.n_embd), inner = static_cast<double>(c.n_inner);
  const double block = 4 * e * e + 4 * e + 2 * e * inner + inner + e + 4 * e;
  return (static_cast<double>(c.vocab_size) + static_cast<double>(c.n_positions)) * e +
         static_cast<double>(c.n_layer) * block + 2 * e;
}

double estimated_model_bytes(const ModelConfig& cfg) {
  double bytes = 4 * estimated_parameters(cfg);
  if (cfg.arch == Architecture::kLlama) {
    // cos and sin [positions, head_dim] in float32, built from float64.
    bytes += 3 * 8 * static_cast<double>(cfg.llama.max_position_embeddings) * static_cast<double>(cfg.llama.head_dim);
  }
  return bytes;
}

int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return -1;
}

absl::StatusOr<ModelConfig> parse_model_config(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: top level must be a JSON object");
  std::string model_type;
  PEFT_RETURN_IF_ERROR(get_string(j, "model_type", &model_type));
  if (model_type.empty()) {
    if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) {
      std::string a = (*it)[0].get<std::string>();
      if (a.rfind("Llama", 0) == 0) model_type = "llama";
      if (a.rfind("Mistral", 0) == 0) model_type = "mistral";
      if (a.rfind("Qwen2For", 0) == 0) model_type = "qwen2";
      if (a.rfind("GPT2", 0) == 0) model_type = "gpt2";
    }
  }
  ModelConfig cfg;
  if (model_type == "llama" || model_type == "mistral" || model_type == "qwen2") {
    cfg.arch = Architecture::kLlama;
    cfg.llama.family = model_type == "llama"     ? LlamaFamily::kLlama
                       : model_type == "mistral" ? LlamaFamily::kMistral
                                                 : LlamaFamily::kQwen2;
    PEFT_RETURN_IF_ERROR(parse_llama(j, &cfg));
  } else if (model_type == "gpt2") {
    cfg.arch = Architecture::kGpt2;
    PEFT_RETURN_IF_ERROR(parse_gpt2(j, &cfg));
  } else if (model_type.empty()) {
    return absl::InvalidArgumentError("config.json: missing required field 'model_type'");
  } else {
    return absl::UnimplementedError(absl::StrCat("config.json: model_type '", model_type,
                                                 "' is not supported (supported: llama, mistral, qwen2, gpt2)"));
  }
  PEFT_RETURN_IF_ERROR(parse_token_ids(j, &cfg));
  PEFT_RETURN_IF_ERROR(get_string(j, "torch_dtype", &cfg.torch_dtype));
  PEFT_RETURN_IF_ERROR(get_string(j, "dtype", &cfg.torch_dtype));  // transformers >= 4.56
  PEFT_RETURN_IF_ERROR(validate_model_config(cfg));
  return cfg;
}

absl::StatusOr<ModelConfig> read_model_config(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::is_directory(path, ec) ? fs::path(path) / "config.json" : fs::path(path);
  PEFT_ASSIGN_OR_RETURN(const std::string text, io::read_file(p.string()));
  absl::StatusOr<ModelConfig> cfg = parse_model_config(text);
  if (!cfg.ok()) return absl::Status(cfg.status().code(), absl::StrCat(p.string(), ": ", cfg.status().message()));
  return cfg;
}

std::string model_config_to_json(const ModelConfig& cfg) {
  json j;  // nlohmann's default object is a sorted map: keys come out sorted.
  if (!cfg.eos_token_ids.empty()) {
    j["eos_token_id"] = cfg.eos_token_ids.size() == 1 ? json(cfg.eos_token_ids[0]) : json(cfg.eos_token_ids);
  }
  if (cfg.bos_token_id >= 0) j["bos_token_id"] = cfg.bos_token_id;
  j["torch_dtype"] = cfg.torch_dtype;
  j["use_cache"] = true;
  if (cfg.arch == Architecture::kLlama) {
    const LlamaConfig& c = cfg.llama;
    // The keys transformers 4.x writes for each model_type (LlamaConfig,
    // MistralConfig, Qwen2Config); the three differ in the bias and window
    // fields only.
    const LlamaFamily family = c.family;
    j["model_type"] = cfg.model_type();
    j["attention_dropout"] = 0.0;
    j["head_dim"] = c.head_dim;
    j["hidden_act"] = c.hidden_act;
    j["hidden_size"] = c.hidden_size;
    j["initializer_range"] = c.initializer_range;
    j["intermediate_size"] = c.intermediate_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["num_attention_heads"] = c.num_attention_heads;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_key_value_heads"] = c.num_key_value_heads;
    j["rms_norm_eps"] = c.rms_norm_eps;
    if (c.rope_scaling.rope_type == "default") {
      // MistralConfig (4.x) has no rope_scaling; the others write null.
      if (family != LlamaFamily::kMistral) j["rope_scaling"] = nullptr;
    } else {
      json r;
      r["rope_type"] = c.rope_scaling.rope_type;
      r["factor"] = c.rope_scaling.factor;
      if (c.rope_scaling.rope_type == "llama3") {
        r["low_freq_factor"] = c.rope_scaling.low_freq_factor;
        r["high_freq_factor"] = c.rope_scaling.high_freq_factor;
        r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
      }
      j["rope_scaling"] = r;
    }
    j["rope_theta"] = c.rope_theta;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["vocab_size"] = c.vocab_size;
    const json window = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
    switch (family) {
      case LlamaFamily::kLlama:
        j["architectures"] = {"LlamaForCausalLM"};
        j["attention_bias"] = c.attention_bias;
        j["mlp_bias"] = c.mlp_bias;
        j["pretraining_tp"] = 1;
        break;
      case LlamaFamily::kMistral:
        j["architectures"] = {"MistralForCausalLM"};
        j["sliding_window"] = window;
        break;
      case LlamaFamily::kQwen2:
        j["architectures"] = {"Qwen2ForCausalLM"};
        // Qwen2Config has no head_dim (the attention takes it when present).
        if (c.head_dim * c.num_attention_heads == c.hidden_size) j.erase("head_dim");
        j["sliding_window"] = window;
        j["use_sliding_window"] = c.use_sliding_window;
        j["max_window_layers"] = c.max_window_layers;
        if (!c.layer_types.empty()) j["layer_types"] = c.layer_types;
        break;
    }
  } else {
    const Gpt2Config& c = cfg.gpt2;
    j["architectures"] = {"GPT2LMHeadModel"};
    j["model_type"] = "gpt2";
    j["activation_function"] = c.activation_function;
    j["attn_pdrop"] = 0.1;
    j["embd_pdrop"] = 0.1;
    j["resid_pdrop"] = 0.1;
    j["initializer_range"] = 0.02;
    j["layer_norm_epsilon"] = c.layer_norm_epsilon;
    j["n_embd"] = c.n_embd;
    j["n_head"] = c.n_head;
    j["n_inner"] = c.n_inner == 4 * c.n_embd ? json(nullptr) : json(c.n_inner);
    j["n_layer"] = c.n_layer;
    j["n_positions"] = c.n_positions;
    j["reorder_and_upcast_attn"] = false;
    j["scale_attn_by_inverse_layer_idx"] = c.scale_attn_by_inverse_layer_idx;
    j["scale_attn_weights"] = c.scale_attn_weights;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    j["vocab_size"] = c.vocab_size;
  }
  return j.dump(2) + "\n";
}

}  // namespace peft::models
