//
// LlamaForCausalLM in LibTorch: RMSNorm, rotate-half RoPE (theta, llama3 and
// linear scaling), grouped-query attention, SwiGLU MLP, explicit head_dim,
// tied or untied lm_head. Module and parameter names equal transformers'
// (`model.layers.0.self_attn.q_proj.weight`), so Hugging Face checkpoints map
// one to one. Every projection is a peft::AdaptableLinear.
//
// The same module runs MistralForCausalLM (sliding-window attention) and
// Qwen2ForCausalLM (q/k/v biases, optional per-layer window): transformers'
// parameter names are identical; LlamaConfig::family and
// LlamaConfig::attention_window carry the differences.
#ifndef PEFT_MODELS_LLAMA_H_
#define PEFT_MODELS_LLAMA_H_

#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>

#include "models/blocks.h"
#include "models/causal_lm.h"
#include "models/config.h"
#include "peft/adaptable_linear.h"

namespace peft::models {

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  /// The attention of decoder block `layer` (which decides its sliding
  /// window, LlamaConfig::attention_window).
  explicit LlamaAttentionImpl(const LlamaConfig& c, int64_t layer = 0);
  /// x [B, T, C] -> [B, T, C]; `cache` may be null.
  at::Tensor forward(const at::Tensor& x, const RopeTables& rope, KvCache* cache, int64_t layer);
  AdaptableLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  const int64_t num_heads, num_kv_heads, head_dim;
  const int64_t window;  // 0 = full causal attention
};
TORCH_MODULE(LlamaAttention);

class LlamaMlpImpl : public torch::nn::Module {
 public:
  explicit LlamaMlpImpl(const LlamaConfig& c);
  at::Tensor forward(const at::Tensor& x);  // down(silu(gate(x)) * up(x))
  AdaptableLinear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  explicit LlamaDecoderLayerImpl(const LlamaConfig& c, int64_t layer = 0);
  at::Tensor forward(const at::Tensor& x, const RopeTables& rope, KvCache* cache, int64_t layer,
                     const StreamHook& hook);
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

/// transformers' LlamaModel (the `model.` prefix).
class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const LlamaConfig& c);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl final : public torch::nn::Module, public CausalLm {
 public:
  /// Parameters are allocated but not initialised (load or init them).
  explicit LlamaForCausalLMImpl(const ModelConfig& config);

  const ModelConfig& config() const override { return config_; }
  torch::nn::Module& module() override { return *this; }
  at::Tensor forward_hidden(const at::Tensor& input_ids, KvCache* cache) override;
  at::Tensor logits_from_hidden(const at::Tensor& hidden) override;
  at::Tensor plain_head_weight() override;
  KvCache make_cache(int64_t batch, int64_t capacity) const override;
  std::vector<HfParameter> hf_parameters() override;
  void set_stream_hook(StreamHook hook) override { hook_ = std::move(hook); }
  void set_activation_checkpointing(bool on) override { checkpointing_ = on; }
  bool activation_checkpointing() const override { return checkpointing_; }
  std::vector<AdaptableSlot> adaptable_slots() override;
  std::vector<TargetPreset> target_presets() const override;

  LlamaModel model{nullptr};
  AdaptableLinear lm_head{nullptr};

 private:
  const ModelConfig config_;
  RopeTables rope_;
  StreamHook hook_;
  bool checkpointing_ = false;
  std::set<std::string> base_names_;  // parameter names at construction
};

}  // namespace peft::models

#endif  // PEFT_MODELS_LLAMA_H_
