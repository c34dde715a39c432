//
// NoRA, Nested Low-Rank Adaptation (arXiv 2408.10280, 2024;
// ICCV 2025 "Efficient Fine-Tuning of Large Models via Nested Low-Rank
// Adaptation"), in the form fixed by docs/methods.md §3
// "Specification we adopt". A frozen outer pair taken from the top-r SVD of
// the pretrained weight W = U Σ Vᵀ (fp32) wraps a trainable inner pair:
//
//   ΔW = s · B_o (B_i A_i − M₀) A_o,        y = x Wᵀ + b + x ΔWᵀ
//
//   B_o [out, r]  frozen   U_r            (sigma_side SIGMA_A, the default)
//   A_o [r, in]   frozen   Σ_r V_rᵀ       (SIGMA_B: B_o = U_r Σ_r, A_o = V_rᵀ;
//                                          SIGMA_SQRT: √Σ_r on both sides)
//   B_i [r, r']   trainable, 0            (inner_init ZERO_B, the default)
//   A_i [r', r]   trainable, kaiming-uniform(a=√5) = U(±1/√r)
//   s = alpha / r'   (alpha defaults to r'; scale_by_outer: alpha / r)
//
// ZERO_B leaves the model unchanged at step 0. The authors' random inner
// inits (RANDN: both N(0, 1); KAIMING: both kaiming-uniform) give ΔW ≠ 0;
// unless keep_base is set, the initial product M₀ = B_i A_i (at init) is
// subtracted so the output is still unchanged. docs/methods.md phrases that as a
// PiSSA-style residual W − s·B_o M₀ A_o written into the base; we keep M₀ as a
// frozen buffer instead and leave the base weight untouched. The two are the
// same function and merge to the same weight, but ours saves and loads
// exactly whatever seed the adapter was made with (a residual baked into W
// would depend on the init seed, which the adapter file cannot restore). With
// keep_base (authors' behaviour) M₀ is absent and the output changes at init.
//
// Forward, cheapest order (…×in → r → r' → r → out):
//   u = dropout(x) A_oᵀ;  v = u A_iᵀ B_iᵀ − u M₀ᵀ;  delta = s · v B_oᵀ.
// Trainable count: 2·r·r' per layer; frozen storage r·(in + out) (+ r² for M₀).
//
// Outer factors and M₀ are buffers (never trained, no gradient) but are saved
// in the adapter file, so a load does not depend on recomputing the SVD.
// Keys on disk, relative to the adapted module:
//   nora_A_outer [r, in], nora_B_outer [out, r], nora_A [r', r], nora_B [r, r'],
//   nora_M_init [r, r] (only for RANDN/KAIMING without keep_base).
//
// svd_mode ACTIVATION_AWARE (ASVD: SVD of W·diag(mean|x|^a), needs a
// calibration pass over data) is not implemented yet: make_linear returns
// Unimplemented. The "0.8·min(in, out)" outer-rank mode of the authors' code is
// not offered; set r explicitly.
//
//   proto::AdapterConfig c;
//   c.mutable_nora()->set_r(32);
//   c.mutable_nora()->set_r_inner(16);
//   c.mutable_target()->set_preset("all_linear");
#ifndef PEFT_NORA_NORA_H_
#define PEFT_NORA_NORA_H_

#include <cstdint>
#include <memory>
#include <vector>

#include <torch/nn/module.h>

#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

class NoraLinearImpl final : public torch::nn::Module, public LinearAdapter {
 public:
  /// Builds the outer pair from the SVD of the frozen base `weight` [out, in]
  /// (read only; never modified). Options must have passed validation, with
  /// r <= min(out, in) and svd_mode PLAIN.
  NoraLinearImpl(const proto::NoraOptions& options, const at::Tensor& weight, uint64_t seed);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) override;
  at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) override;
  at::Tensor merged_weight(const at::Tensor& weight) const override;
  at::Tensor unmerged_weight(const at::Tensor& merged) const override;
  bool additive() const override { return true; }
  at::Tensor aux_loss() override { return {}; }
  at::Tensor regularizer() override { return {}; }
  std::vector<AdapterTensor> state() override;

  /// ΔW = s · B_o (B_i A_i − M₀) A_o in fp32 [out, in].
  at::Tensor delta_weight() const;

  const proto::NoraOptions options;
  const double scaling;     // s
  at::Tensor nora_A_outer;  // [r, in]   buffer
  at::Tensor nora_B_outer;  // [out, r]  buffer
  at::Tensor nora_A;        // [r', r]   parameter
  at::Tensor nora_B;        // [r, r']   parameter
  at::Tensor nora_M_init;   // [r, r]    buffer, or undefined (see file comment)
};

/// The registry entry for "nora" (peft_type "NORA"; read from peft-cpp's own
/// adapter files only).
AdapterMethod nora_method();

/// NoRA's scaling s: alpha / r_inner, or alpha / r with scale_by_outer;
/// alpha defaults to r_inner.
double nora_scaling(const proto::NoraOptions& options);

}  // namespace peft

#endif  // PEFT_NORA_NORA_H_
