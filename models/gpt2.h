//
// GPT2LMHeadModel in LibTorch: learned positions, pre-LN blocks with biased
// LayerNorm, fused c_attn (Q|K|V split along the output), gelu_new MLP, head
// tied to wte. Module names equal transformers' (`transformer.h.0.attn.c_attn`).
// The checkpoint's Conv1D weights are [in, out]; hf_parameters() marks them
// transposed and the loader/saver transpose once, so every projection here is
// an [out, in] peft::AdaptableLinear like LLaMA's.
#ifndef PEFT_MODELS_GPT2_H_
#define PEFT_MODELS_GPT2_H_

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

class Gpt2AttentionImpl : public torch::nn::Module {
 public:
  Gpt2AttentionImpl(const Gpt2Config& c, int64_t layer_idx);
  at::Tensor forward(const at::Tensor& x, KvCache* cache, int64_t layer);  // [B, T, C] -> [B, T, C]
  AdaptableLinear c_attn{nullptr}, c_proj{nullptr};
  const int64_t num_heads, head_dim;
  const double scale;
};
TORCH_MODULE(Gpt2Attention);

class Gpt2MlpImpl : public torch::nn::Module {
 public:
  explicit Gpt2MlpImpl(const Gpt2Config& c);
  at::Tensor forward(const at::Tensor& x);
  AdaptableLinear c_fc{nullptr}, c_proj{nullptr};
  const bool tanh_gelu;
};
TORCH_MODULE(Gpt2Mlp);

class Gpt2BlockImpl : public torch::nn::Module {
 public:
  Gpt2BlockImpl(const Gpt2Config& c, int64_t layer_idx);
  at::Tensor forward(const at::Tensor& x, KvCache* cache, int64_t layer, const StreamHook& hook);
  LayerNorm ln_1{nullptr}, ln_2{nullptr};
  Gpt2Attention attn{nullptr};
  Gpt2Mlp mlp{nullptr};
};
TORCH_MODULE(Gpt2Block);

/// transformers' GPT2Model (the `transformer.` prefix).
class Gpt2ModelImpl : public torch::nn::Module {
 public:
  explicit Gpt2ModelImpl(const Gpt2Config& c);
  Embedding wte{nullptr}, wpe{nullptr};
  torch::nn::ModuleList h{nullptr};
  LayerNorm ln_f{nullptr};
};
TORCH_MODULE(Gpt2Model);

class Gpt2LMHeadModelImpl final : public torch::nn::Module, public CausalLm {
 public:
  explicit Gpt2LMHeadModelImpl(const ModelConfig& config);

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

  Gpt2Model transformer{nullptr};
  AdaptableLinear lm_head{nullptr};

 private:
  const ModelConfig config_;
  StreamHook hook_;
  bool checkpointing_ = false;
  std::set<std::string> base_names_;  // parameter names at construction
};

}  // namespace peft::models

#endif  // PEFT_MODELS_GPT2_H_
