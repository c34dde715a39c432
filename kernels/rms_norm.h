//
// RMSNorm for mixed precision in one pass: a float32 residual stream x
// [..., C] in, y = low(x · rsqrt(mean(x²) + eps) · w) out in `out_dtype`
// (bf16 under autocast), which is exactly what transformers' LlamaRMSNorm
// followed by autocast's cast at the next linear computes, without the five
// intermediate [.., C] tensors (the fp32 copy, x², x·rstd, ·w, the cast) or
// their backward passes. Backward gives dx in float32 (and dw when w needs a
// gradient):
//   x̂ = x·rstd,  g' = g·w,  dx = rstd·(g' - x̂·mean(g'·x̂)),  dw = Σ_rows g·x̂.
// rms_norm_ref is the ATen specification; tests/kernels/rms_norm_test.cc
// checks values and gradients.
#ifndef PEFT_KERNELS_RMS_NORM_H_
#define PEFT_KERNELS_RMS_NORM_H_

#include <ATen/core/Tensor.h>

namespace peft::kernels {

/// x [..., C] float32 contiguous on the CPU, w [C] float32; out_dtype float32
/// or bfloat16. Differentiable in x and w.
at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);

/// (x · rsqrt(mean(x², -1) + eps) · w).to(out_dtype) with ATen ops.
at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype);

}  // namespace peft::kernels

#endif  // PEFT_KERNELS_RMS_NORM_H_
