//
// The output layer and the token cross-entropy in one pass over row chunks,
// so the [N, V] logits (and their float32 log-probabilities, and their
// gradient) never exist whole:
//
//   loss[n] = logsumexp_v(h[n] · W[v]) - h[n] · W[labels[n]]     (0 where labels[n] == ignore_index)
//
// h [N, C], W [V, C] (the lm_head weight, [out, in]), labels [N] int64.
// The logits of a chunk are computed in h's dtype (bf16 under autocast, as an
// eager `linear` would give them) and reduced in float32. On the CPU a
// hand-written row kernel does the reduction; on other devices (CUDA) ATen
// ops do it chunk by chunk.
//
// Gradients: d loss[n] / d h[n] = (softmax(h[n] Wᵀ) - onehot(labels[n])) W.
// When W needs no gradient (a frozen head: every adapter method), that row
// gradient is computed in the forward pass, chunk by chunk, and backward only
// scales it by the incoming per-token gradient: no logits are recomputed and
// nothing [N, V]-sized is kept. When W needs a gradient (full fine-tuning, a
// tied trainable embedding), forward keeps h and the per-row logsumexp, and
// backward recomputes each chunk's logits to form both gradients.
//
// A frozen W stored in another dtype than h (a bf16 head under float32
// compute) is converted 4096 rows at a time, never whole: a 128256 x 2048
// bf16 head would otherwise take a 1 GB float32 copy for the step. With a
// float32/float64 h the rows then go through the vocabulary blocks in one
// pass (an online logsumexp, each block converted once per call). Any other
// frozen W of another dtype (wider than h) is converted whole to h's dtype,
// a copy no larger than W.
//
// Memory beyond the inputs: a few [chunk_rows, V] float32 buffers (chunk_rows
// 256 and V 32000: 33 MB each) plus the [N, C] row gradient.
// linear_cross_entropy_ref (kernels/linear_cross_entropy_ref.cc) is the
// specification through at::cross_entropy_loss on the full logits;
// tests/kernels/linear_cross_entropy_test.cc checks values and gradients.
#ifndef PEFT_KERNELS_LINEAR_CROSS_ENTROPY_H_
#define PEFT_KERNELS_LINEAR_CROSS_ENTROPY_H_

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace peft::kernels {

/// Per-token CE [N] (float32; float64 for float64 inputs) of logits h Wᵀ against labels (see above). h and
/// W must share device, and dtype unless W needs no gradient (it is then used in h's dtype, converted by
/// blocks); labels must be in [0, V) or ignore_index.
/// Differentiable in h and W (once: no double backward).
at::Tensor linear_cross_entropy(const at::Tensor& h, const at::Tensor& W, const at::Tensor& labels,
                                int64_t ignore_index = -100, int64_t chunk_rows = 256);

/// The reference: at::cross_entropy_loss(h Wᵀ in the same reduction dtype, labels, reduction none).
at::Tensor linear_cross_entropy_ref(const at::Tensor& h, const at::Tensor& W, const at::Tensor& labels,
                                    int64_t ignore_index = -100);

}  // namespace peft::kernels

#endif  // PEFT_KERNELS_LINEAR_CROSS_ENTROPY_H_
