//
// Compacter and Compacter++ (Karimi Mahabadi, Henderson & Ruder, "Compacter:
// Efficient Low-Rank Hypercomplex Adapter Layers", NeurIPS 2021): bottleneck
// adapters whose two projections are PHM layers (peft/compacter/phm.h) with
// ONE rule tensor A [n, n, n] shared by the whole model:
//
//   Adapter(h) = h + PHM_up( gelu_new( PHM_down(h) ) )       d -> k -> d
//   PHM(x)     = x Σ_i A_i ⊗ (s_i t_iᵀ) + b,   k = d / reduction_factor
//
// Placement (the official T5 code's rule, docs/methods.md §6): on the
// sublayer output, before the residual add. Compacter adapts the attention
// output and the MLP output of every block; Compacter++ (`plus_plus`) only the
// MLP output. The embedding output is left alone. Trainable: the adapters, the
// shared rule (init N(0, phm_init_range²)) and every layer norm of the base
// (`unfreeze_layer_norms`: LLaMA input/post-attention/final RMSNorm weights,
// GPT-2 ln_1/ln_2/ln_f weights and biases). Trainable count with phm_rank r:
//   Compacter   4·L·r·(k + d) + n³ weights + 2·L·(k + d) biases + norms
//   Compacter++ 2·L·r·(k + d) + n³ weights +   L·(k + d) biases + norms
//
// Not mergeable: the GELU sits between the two PHM maps, so nothing folds into
// a base weight; PeftModel::merge_ refuses with a message. Saving writes the
// adapter tensors plus the tuned norms; our own loader runs them. The adapter
// is not the identity at init, but its output is tiny (A ≈ 1e-4).
//
//   proto::AdapterConfig c;
//   c.set_name("compacter");
//   c.mutable_compacter()->set_phm_dim(4);
//   c.mutable_compacter()->set_reduction_factor(16);
//   c.mutable_compacter()->set_plus_plus(true);   // Compacter++
//   PEFT_RETURN_IF_ERROR(pm.add_adapter(c, /*seed=*/0));
#ifndef PEFT_COMPACTER_COMPACTER_H_
#define PEFT_COMPACTER_COMPACTER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/adapter.h"
#include "peft/compacter/phm.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

/// One bottleneck: h + up(gelu_tanh(down(h))), down d -> k, up k -> d.
class CompacterBottleneckImpl final : public torch::nn::Module {
 public:
  CompacterBottleneckImpl(int64_t d, int64_t k, int64_t rank, bool reference_kernel, const at::Tensor& rule,
                          at::Generator& gen);
  /// h [..., d] -> [..., d] (computed in the factors' dtype, returned in h's).
  at::Tensor forward(const at::Tensor& h);
  PhmLinear down{nullptr};  // d -> k
  PhmLinear up{nullptr};    // k -> d
};
TORCH_MODULE(CompacterBottleneck);

/// The model-level Compacter adapter: the shared rule `phm_rule` and, per
/// block ℓ, `layers.ℓ.attn` (Compacter only) and `layers.ℓ.mlp`.
class CompacterAdapterImpl final : public torch::nn::Module, public StreamAdapter {
 public:
  /// d = model width, `num_layers` blocks. Requires n | d and n | k with
  /// k = d / reduction_factor ≥ 1 (checked by the registry's make_stream;
  /// raises c10::Error here). Deterministic in `seed`.
  CompacterAdapterImpl(const proto::CompacterOptions& options, int64_t d, int64_t num_layers, uint64_t seed);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  /// Identity for the embedding; the bottleneck of `layer` for the adapted
  /// sublayer outputs; identity for attention outputs under Compacter++.
  at::Tensor forward(HookPoint point, int64_t layer, const at::Tensor& h) override;
  at::Tensor aux_loss() override { return {}; }
  /// Keys "compacter.<parameter path>", e.g. "compacter.phm_rule",
  /// "compacter.layers.0.mlp.down.W_left".
  std::vector<AdapterTensor> state() override;
  void on_step(int64_t /*step*/) override {}

  /// Every PHM layer, in module order (down before up, attn before mlp).
  std::vector<PhmLinearImpl*> phm_layers();

  const proto::CompacterOptions options;
  const int64_t d;                        // model width
  const int64_t k;                        // bottleneck width d / reduction_factor
  at::Tensor phm_rule;                    // [n, n, n]: THE shared rule of every PHM layer
  std::vector<CompacterBottleneck> attn;  // per block; empty for Compacter++
  std::vector<CompacterBottleneck> mlp;   // per block
};

/// The registry entry for "compacter" (peft_type "COMPACTER").
AdapterMethod compacter_method();

}  // namespace peft

#endif  // PEFT_COMPACTER_COMPACTER_H_
