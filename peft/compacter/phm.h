//
// One PHM (parameterized hypercomplex multiplication) layer of Compacter
// (Karimi Mahabadi, Henderson & Ruder, NeurIPS 2021, eqs. 3-5):
//
//   y = x H + b,   H = Σ_{i=1..n} A_i ⊗ (s_i t_iᵀ)           H [in, out]
//
// A [n, n, n] is the rule ("slow") tensor shared by every PHM layer of the
// model; the layer only holds a handle to it (the CompacterAdapter registers it
// once, so it is one parameter with one gradient). s = W_left [n, in/n, r] and
// t = W_right [n, r, out/n] are this layer's low-rank ("fast") factors
// (r = phm_rank, 1 in the paper), b = bias [out].
//
// Init (official code + AdapterHub defaults, docs/methods.md §6): every 2-D
// slice W_left[i], W_right[i] Glorot/Xavier-uniform with gain √2, bias 0.
//
// The product is computed by kernels/kronecker.h: factored (default, never
// forms H) or the dense reference (CompacterOptions.kernel = REFERENCE).
#ifndef PEFT_COMPACTER_PHM_H_
#define PEFT_COMPACTER_PHM_H_

#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace peft {

/// Options of one PHM layer. `in` and `out` must be multiples of n (the
/// rule's size). Example: `PhmLinearOptions{/*in=*/4096, /*out=*/128, /*rank=*/1}`.
struct PhmLinearOptions {
  int64_t in = 0;
  int64_t out = 0;
  int64_t rank = 1;
  /// Use kernels::phm_linear_ref (dense H) instead of the factored kernel.
  bool reference_kernel = false;
};

class PhmLinearImpl final : public torch::nn::Module {
 public:
  /// `rule` is the shared A [n, n, n]; it is held, not registered. Factors
  /// are drawn from `gen`.
  PhmLinearImpl(const PhmLinearOptions& options, const at::Tensor& rule, at::Generator& gen);

  /// x [..., in] -> [..., out] (x must have the factors' dtype).
  at::Tensor forward(const at::Tensor& x);

  /// The dense H [in, out] (for export and inspection).
  at::Tensor dense_weight() const;

  const PhmLinearOptions options;
  at::Tensor rule;     // [n, n, n]  shared with every PHM layer (not a parameter here)
  at::Tensor W_left;   // [n, in/n, r]
  at::Tensor W_right;  // [n, r, out/n]
  at::Tensor bias;     // [out]
};
TORCH_MODULE(PhmLinear);

}  // namespace peft

#endif  // PEFT_COMPACTER_PHM_H_
