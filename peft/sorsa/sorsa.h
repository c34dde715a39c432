//
// SORSA, "Singular Values and Orthonormal Regularized Singular Vectors
// Adaptation of Large Language Models" (arXiv 2409.00055; official code
// Gunale0926/SORSA), as fixed by docs/methods.md §4. The top-r
// singular triplets of the pretrained weight W = U Σ Vᵀ (SVD in fp32) become
// trainable and the frozen base keeps the residual:
//
//   W_r = W − s · U_p diag(S_p) V_pᵀ              (written into the base)
//   y   = x W_rᵀ + b + s · ((dropout(x) V_p) ⊙ S_p) U_pᵀ
//
//   U_p  [out, r]  "sorsa_B"   S_p [r]  "sorsa_S"   V_pᵀ [r, in]  "sorsa_A"
//   s = alpha / r when alpha is set, else 1 (the official default)
//
// so the model's output is unchanged at step 0 up to fp32 rounding. Merge is
// W_r + s·U_p diag(S_p) V_pᵀ; trainable count r·(in + out + 1). The residual
// is recomputed from the base's SVD at injection (deterministic), so saving
// the three factors (keys above, relative to the adapted module) is enough
// for an exact load.
//
// Orthonormal regulariser (the paper's Sec. 3; official `calc_ortho`): per
// layer regularizer() returns
//
//   γ · (‖V_pᵀV_p − I_r‖_F + ‖U_pᵀU_p − I_r‖_F) / 2        (unsquared, default)
//   γ · (‖V_pᵀV_p − I_r‖_F² + ‖U_pᵀU_p − I_r‖_F²) / 2      (squared_norm)
//
// so that PeftModel::regularizer() (the mean over layers) is γ · calc_ortho.
// How its gradient enters training (OFFICIAL: (1/peak lr)·∇ added to .grad
// after clipping; DECOUPLED: a separate plain step after the optimizer) is
// sorsa_regularizer_step_ in peft/sorsa/regularizer_step.h.
//
//   proto::AdapterConfig c;
//   c.mutable_sorsa()->set_r(128);
//   c.mutable_sorsa()->set_gamma(4e-4);
//   c.mutable_target()->set_preset("all_linear");
#ifndef PEFT_SORSA_SORSA_H_
#define PEFT_SORSA_SORSA_H_

#include <memory>
#include <vector>

#include <torch/nn/module.h>

#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

class SorsaLinearImpl final : public torch::nn::Module, public LinearAdapter {
 public:
  /// Takes the top-r SVD of the frozen base `weight` [out, in] and rewrites
  /// it in place to the residual W − s·U_p diag(S_p) V_pᵀ (cast to its dtype,
  /// under NoGradGuard). Requires 0 < r <= min(out, in).
  SorsaLinearImpl(const proto::SorsaOptions& options, at::Tensor& weight);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) override;
  at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) override;
  at::Tensor merged_weight(const at::Tensor& weight) const override;
  at::Tensor unmerged_weight(const at::Tensor& merged) const override;
  /// False: the "delta" over the residual base is the whole principal part,
  /// so scaling it or summing it with another adapter is not meaningful.
  bool additive() const override { return false; }
  at::Tensor aux_loss() override { return {}; }
  /// γ · orthonormality() (differentiable); undefined when γ = 0.
  at::Tensor regularizer() override;
  std::vector<AdapterTensor> state() override;

  /// (‖V_pᵀV_p − I‖_F + ‖U_pᵀU_p − I‖_F) / 2, or the squared norms with
  /// squared_norm, as a differentiable scalar in the factors' dtype.
  at::Tensor orthonormality() const;

  /// s · U_p diag(S_p) V_pᵀ in fp32 [out, in].
  at::Tensor delta_weight() const;

  const proto::SorsaOptions options;
  const double scaling;  // s
  at::Tensor sorsa_A;    // [r, in]   V_pᵀ
  at::Tensor sorsa_B;    // [out, r]  U_p
  at::Tensor sorsa_S;    // [r]       S_p
};

/// The registry entry for "sorsa" (peft_type "SORSA"; read from peft-cpp's
/// own adapter files only).
AdapterMethod sorsa_method();

/// SORSA's scaling s: alpha / r when alpha is set, else 1.
double sorsa_scaling(const proto::SorsaOptions& options);

}  // namespace peft

#endif  // PEFT_SORSA_SORSA_H_
