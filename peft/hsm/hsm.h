//
// The Hybrid Sparsification Modules of PAT, Pruning-Aware Tuning (Liu et al.,
// "PAT: Pruning-Aware Tuning for Large Language Models", AAAI 2025,
// arXiv 2408.14721; official code kriskrisliu/PAT_Pruning-Aware-Tuning,
// DimDownModule.py). docs/methods.md §7 is the specification; notation:
// H hidden size, e HSM bottleneck, D channels kept, G the schedule length.
//
// 2L + 1 HSMs sit on every write into the residual stream of a LLaMA model
// (embedding output, each attention output, each MLP output, before the
// residual add). Each has a Hybrid-Identity-Operator A [e, H] (kaiming-uniform
// a = √5), B [H, e] (zeros) and a per-channel scale γ [H] (ones; present when
// identity_loss is on, as in the official code). ONE trainable mask
// m [H] (zeros, owned by the embedding HSM) gates every HSM:
//
//   HSM(h) = γ ⊙ ( g ⊙ (h + h Aᵀ Bᵀ) )                       (identity at init)
//   g      = 1 / (1 + exp(min(−T(t)·m, 10))) + β(t)           (training)
//   g      = round(1 / (1 + exp(min(−10⁶·m, 10))))  ∈ {0, 1}   (hard gate)
//   T(t)   = 1 / (1 − ln(max(1, t)) / ln G + 10⁻⁶),  β(t) = max(½ − t/G, 0)
//
// for the optimizer step t (on_step). From t ≥ ⌊0.8·G⌋ the gate uses m
// detached and T frozen at T(⌊0.8·G⌋); m then moves only through the mask loss.
// aux_loss() is the mask loss plus the Identity Loss of every HSM:
//
//   L_mask = 10·|Σ_c 𝟙[m_c ≥ 0] − D| / D + mean_{m_c>0}(m_c − ½)² + mean_{m_c≤0}(m_c + ½)²
//   IL     = mean( (A Aᵀ − I_e)² )
//
// with a straight-through indicator (forward: step; backward: identity) and
// an empty mean taken as 0 (the official code returns NaN when every m_c ≤ 0,
// i.e. at init). `official_last_layer_only` applies IL only to the embedding
// HSM and the last block's two HSMs (the official loop's overwrite quirk).
//
// PAT trains this adapter together with a LoRA adapter, both active:
//
//   proto::AdapterConfig hsm;
//   hsm.set_name("hsm");
//   hsm.mutable_hsm()->set_target_hidden(3072);
//   proto::AdapterConfig lora;  ... lora.set_name("lora"); preset "all_linear"
//   PEFT_RETURN_IF_ERROR(pm.add_adapter(hsm));
//   PEFT_RETURN_IF_ERROR(pm.add_adapter(lora));
//   PEFT_RETURN_IF_ERROR(pm.set_active({{"hsm", 1.0}, {"lora", 1.0}}));
//   ... each step: pm.on_step(t); loss = ce + pm.aux_loss() ...
//
// and exports a smaller dense LLaMA with prune_hsm (peft/hsm/prune.h). HSM is
// not mergeable into a same-size model. LLaMA only.
#ifndef PEFT_HSM_HSM_H_
#define PEFT_HSM_HSM_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

/// The gate schedule at one optimizer step.
struct HsmSchedule {
  double temperature = 1.0;  // T
  double beta = 0.5;         // β
  bool detach = false;       // gate uses m.detach() (t ≥ ⌊0.8·G⌋)
};

/// T(t), β(t) and the detach flag for step `step` of a schedule of length
/// `global_step` (G > 1).
HsmSchedule hsm_schedule(int64_t step, int64_t global_step);

/// Soft gate g [H] = 1 / (1 + exp(min(−T·m, 10))) + β for mask m [H].
at::Tensor hsm_soft_gate(const at::Tensor& mask, const HsmSchedule& schedule);

/// Hard gate round(1 / (1 + exp(min(−10⁶·m, 10)))): 1 for kept channels,
/// 0 for pruned ones; no gradient.
at::Tensor hsm_hard_gate(const at::Tensor& mask);

/// 𝟙[m ≥ 0] in the forward pass, identity in the backward pass (exact
/// values: the forward result is the indicator bit for bit).
at::Tensor binarize_ste(const at::Tensor& m);

/// L_mask for mask m [H] and target D (see the file comment).
at::Tensor hsm_mask_loss(const at::Tensor& mask, int64_t target_hidden);

/// IL = mean((A Aᵀ − I_e)²) for A [e, H].
at::Tensor hsm_identity_loss(const at::Tensor& A);

/// One HSM. Parameters: A [e, H], B [H, e], scale γ [H] (undefined when
/// `with_scale` is false), and on the embedding HSM only, the mask [H].
class HsmModuleImpl final : public torch::nn::Module {
 public:
  HsmModuleImpl(int64_t hidden, int64_t bottleneck, bool with_scale, at::Generator& gen);

  /// γ ⊙ (gate ⊙ (h + h Aᵀ Bᵀ)) for h [..., H] and gate [H]; computed in the
  /// parameters' dtype, returned in h's.
  at::Tensor forward(const at::Tensor& h, const at::Tensor& gate);

  /// The per-channel factor applied after the operator: gate ⊙ γ (or gate).
  at::Tensor channel_factor(const at::Tensor& gate) const;

  at::Tensor A;      // [e, H]
  at::Tensor B;      // [H, e]
  at::Tensor scale;  // [H] or undefined
};
TORCH_MODULE(HsmModule);

/// The model-level PAT adapter: `embed` (owns `embed.mask`), and per block ℓ
/// `layers.ℓ.attn`, `layers.ℓ.mlp`.
class HsmAdapterImpl final : public torch::nn::Module, public StreamAdapter {
 public:
  /// H = model width, `num_layers` blocks, deterministic in `seed`. Raises
  /// c10::Error on options the registry's make_stream would reject.
  HsmAdapterImpl(const proto::HsmOptions& options, int64_t hidden, int64_t num_layers, uint64_t seed);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  at::Tensor forward(HookPoint point, int64_t layer, const at::Tensor& h) override;
  /// L_mask + Σ IL (IL when identity_loss; over every HSM, or the official
  /// subset with official_last_layer_only).
  at::Tensor aux_loss() override;
  /// Keys "hsm.<parameter path>", e.g. "hsm.embed.mask", "hsm.layers.0.attn.A".
  std::vector<AdapterTensor> state() override;
  /// Advances the gate schedule to optimizer step `step`.
  void on_step(int64_t step) override { step_ = step; }

  /// With `hard`, forward() uses the hard 0/1 gate (evaluation of the pruned
  /// model, and required by prune_hsm).
  void set_hard_gate_(bool hard) { hard_ = hard; }
  bool hard_gate() const { return hard_; }
  int64_t step() const { return step_; }

  /// The gate g [H] forward() applies now (soft or hard).
  at::Tensor gate() const;

  /// Every HSM, embedding first, then attn/mlp of each block in order.
  std::vector<HsmModuleImpl*> modules_in_order();

  const proto::HsmOptions options;
  const int64_t hidden;
  HsmModule embed{nullptr};
  std::vector<HsmModule> attn;  // per block
  std::vector<HsmModule> mlp;   // per block
  at::Tensor mask;              // [H], registered as embed.mask, shared by all

 private:
  int64_t step_ = 0;
  bool hard_ = false;
};

/// The registry entry for "hsm" (peft_type "HSM").
AdapterMethod hsm_method();

}  // namespace peft

#endif  // PEFT_HSM_HSM_H_
