//
// Attention's scale, causal mask and softmax in one pass over the scores:
//
//   p[.., r, j] = softmax_j(scale · s[.., r, j]) over the keys j ≤ q = S - T + (r mod T), 0 after
//
// and, with a sliding window W > 0, only over the keys q - W < j ≤ q (the
// convention of transformers' sliding_window_overlay; 0 before them too).
//
// for scores s [..., R, S] whose R rows are T queries (repeated R/T times for
// the query heads that share a KV head) at absolute positions S-T..S-1. The
// softmax runs in float32 and p is written in the scores' dtype (bf16 under
// autocast), what eager attention gets from masked_fill + softmax(float) +
// a cast, without the [.., R, S] intermediates. Backward:
//   ds = scale · p · (g - Σ_j g·p),  0 where masked.
// causal_softmax_ref is the ATen specification
// (tests/kernels/causal_softmax_test.cc).
#ifndef PEFT_KERNELS_CAUSAL_SOFTMAX_H_
#define PEFT_KERNELS_CAUSAL_SOFTMAX_H_

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace peft::kernels {

/// scores [..., R, S] float32 or bfloat16 on the CPU, R a multiple of
/// `queries` (T), T ≤ S; `window` 0 = none. Differentiable in scores.
at::Tensor causal_softmax(const at::Tensor& scores, double scale, int64_t queries, int64_t window = 0);

/// The same with ATen ops (mul, masked_fill, softmax in float32, cast).
at::Tensor causal_softmax_ref(const at::Tensor& scores, double scale, int64_t queries, int64_t window = 0);

}  // namespace peft::kernels

#endif  // PEFT_KERNELS_CAUSAL_SOFTMAX_H_
