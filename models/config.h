//
// Typed model configurations read from and written to Hugging Face
// `config.json` files (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM
// and GPT2LMHeadModel; the first three share the LLaMA module). Parsing accepts
// the spellings real checkpoints use (transformers 4.x `rope_theta` +
// `rope_scaling` with `rope_type` or `type`, v5 `rope_parameters`, `torch_dtype`
// or `dtype`), ignores unknown fields, and reports a missing required field by
// name. Writing produces the key set transformers writes, so a directory saved
// by peft-cpp loads in `transformers`.
//
//   PEFT_ASSIGN_OR_RETURN(ModelConfig cfg, read_model_config("/models/tiny"));
//   if (cfg.arch == Architecture::kLlama) { ... cfg.llama.hidden_size ... }
#ifndef PEFT_MODELS_CONFIG_H_
#define PEFT_MODELS_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace peft::models {

/// The module family: kLlama covers model_type llama, mistral and qwen2 (same
/// parameter names; LlamaConfig::family says which), kGpt2 is GPT-2.
enum class Architecture { kLlama, kGpt2 };

/// Which Hugging Face model_type a LLaMA-family config is. What each adds:
///   kMistral: sliding-window attention on every layer (`sliding_window`;
///             absent = 4096, null = none, as transformers' MistralConfig);
///             no projection biases.
///   kQwen2:   biases on q_proj/k_proj/v_proj (not o_proj, not the MLP);
///             sliding window only with `use_sliding_window: true`, on the
///             layers at index >= `max_window_layers` (or as `layer_types`
///             says), as transformers' Qwen2Config.
enum class LlamaFamily { kLlama, kMistral, kQwen2 };

/// RoPE frequency scaling (`rope_scaling` / `rope_parameters`). Only "default"
/// and "llama3" change the frequencies here; "linear" divides positions.
struct RopeScaling {
  std::string rope_type = "default";  // "default", "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

/// HF LlamaConfig fields that change the computation.
struct LlamaConfig {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 4096;
  int64_t intermediate_size = 11008;
  int64_t num_hidden_layers = 32;
  int64_t num_attention_heads = 32;
  int64_t num_key_value_heads = 32;  // = num_attention_heads when absent
  int64_t head_dim = 128;            // = hidden_size / heads when absent
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";

  /// Not used by the computation here; kept so that a config round-trips
  /// (and `peft init --config` draws weights with it as transformers does).
  double initializer_range = 0.02;

  LlamaFamily family = LlamaFamily::kLlama;
  /// Biases on q/k/v only (qwen2); attention_bias puts them on all four.
  bool qkv_bias = false;
  /// `sliding_window` as config.json has it; 0 = null (no window).
  int64_t sliding_window = 0;
  /// qwen2 only: the window is used at all, and from which layer on.
  bool use_sliding_window = false;
  int64_t max_window_layers = 0;
  /// qwen2 only: `layer_types` as read ("full_attention" /
  /// "sliding_attention" per layer); empty when the file has none.
  std::vector<std::string> layer_types;

  /// Keys a query may attend to in layer `layer`: query position i sees keys
  /// j with i - window < j <= i (transformers' sliding_window_overlay). 0 =
  /// no window (full causal attention).
  int64_t attention_window(int64_t layer) const;
  /// Whether q/k/v and o_proj carry a bias.
  bool has_qkv_bias() const { return attention_bias || qkv_bias; }
  bool has_o_bias() const { return attention_bias; }
};

/// HF GPT2Config fields that change the computation.
struct Gpt2Config {
  int64_t vocab_size = 50257;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_inner = 3072;  // = 4 * n_embd when null
  int64_t n_positions = 1024;
  double layer_norm_epsilon = 1e-5;
  std::string activation_function = "gelu_new";
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  bool tie_word_embeddings = true;
};

/// One model's configuration; `arch` says which member is meaningful.
struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  LlamaConfig llama;
  Gpt2Config gpt2;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;   // config may list several
  std::string torch_dtype = "float32";  // storage dtype of the checkpoint

  int64_t vocab_size() const;
  int64_t max_positions() const;
  int64_t num_layers() const;
  int64_t hidden_size() const;
  bool tie_word_embeddings() const;
  /// "llama", "mistral", "qwen2" or "gpt2" (config.json's model_type).
  std::string model_type() const;
};

/// Parses the text of a config.json. Errors name the offending field.
absl::StatusOr<ModelConfig> parse_model_config(std::string_view json_text);

/// Reads `<dir>/config.json` (or the file itself when `path` is a file).
absl::StatusOr<ModelConfig> read_model_config(const std::string& path);

/// Serialises as transformers does (sorted keys, 2-space indent).
std::string model_config_to_json(const ModelConfig& config);

/// Checks internal consistency (positive sizes, heads divide, GQA groups,
/// sliding-window fields).
absl::Status validate_model_config(const ModelConfig& config);

/// Parameters the config implies (embeddings, blocks, norms, head), as a
/// double so that an absurd config cannot overflow.
double estimated_parameters(const ModelConfig& config);

/// Bytes a model of this config takes in float32: its parameters and the
/// RoPE cos/sin table (max_position_embeddings x head_dim).
double estimated_model_bytes(const ModelConfig& config);

/// MemAvailable of /proc/meminfo in bytes, or -1 where it cannot be read.
int64_t available_memory_bytes();

}  // namespace peft::models

#endif  // PEFT_MODELS_CONFIG_H_
