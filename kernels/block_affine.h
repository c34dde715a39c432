//
// The batched block-affine weight transform of Bone's "Bat" variant (Kang &
// Yin, "Bone: Block-Affine Adaptation of Large Language Models",
// arXiv 2409.15371, v1 "Weight Guide"; docs/methods.md §5 "Bat"). With block
// size r, W [out, in] is cut into r×r blocks W_ij (i over out/r row blocks,
// j over in/r column blocks) and each block is transformed by the trainable
// T_i [r, r] of its row block:
//
//   W'_ij = W_ij (I + T_i) + T_i                      (merge / forward)
//   W_ij  = (W'_ij − T_i) (I + T_i)⁻¹                 (exact inverse)
//
// Two implementations of the same contract (style rule 13):
//  - block_affine_weight / block_affine_unmerge (block_affine.cc): one
//    batched matmul (or batched solve) over the [out/r, r·in/r, r] view of
//    W; what Bone runs by default.
//  - *_ref (block_affine_ref.cc): explicit loops over the blocks, the
//    readable spec that the parity test (tests/kernels/block_affine_test.cc)
//    compares against, forward and gradients, fp32 and fp64.
// Both are built from differentiable ATen ops, so gradients reach T (and W,
// if it requires grad) through ordinary autograd; no custom Function.
//
//   at::Tensor w2 = kernels::block_affine_weight(w, t);   // [out, in]
//   at::Tensor w1 = kernels::block_affine_unmerge(w2, t); // ≈ w
#ifndef PEFT_KERNELS_BLOCK_AFFINE_H_
#define PEFT_KERNELS_BLOCK_AFFINE_H_

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace peft::kernels {

/// Shape checks shared by every entry point: W is 2-D [out, in], T is 3-D
/// [out/r, r, r] with r ≥ 1 dividing both out and in, both floating point.
/// `fn` names the caller in the message.
inline void check_block_affine_args(const at::Tensor& w, const at::Tensor& t, const char* fn) {
  TORCH_CHECK(w.defined() && t.defined(), fn, ": undefined tensor");
  TORCH_CHECK(w.dim() == 2, fn, ": weight must be 2-D [out, in], got shape ", w.sizes());
  TORCH_CHECK(t.dim() == 3 && t.size(1) == t.size(2) && t.size(1) > 0, fn, ": T must be [out/r, r, r], got shape ",
              t.sizes());
  const int64_t out = w.size(0), in = w.size(1), r = t.size(1);
  TORCH_CHECK(out % r == 0 && in % r == 0, fn, ": block size r = ", r, " must divide both dimensions of the weight [",
              out, ", ", in, "]");
  TORCH_CHECK(t.size(0) == out / r, fn, ": T has ", t.size(0), " blocks but a weight [", out, ", ", in,
              "] with r = ", r, " needs ", out / r);
  TORCH_CHECK(c10::isFloatingType(w.scalar_type()) && c10::isFloatingType(t.scalar_type()), fn,
              ": weight and T must be floating point, got ", w.scalar_type(), " and ", t.scalar_type());
  TORCH_CHECK(w.device() == t.device(), fn, ": weight on ", w.device(), " but T on ", t.device());
}

/// W' [out, in] with W'_ij = W_ij (I + T_i) + T_i, in the promoted dtype of
/// W and T. Differentiable w.r.t. both. Fast path: a single batched matmul.
at::Tensor block_affine_weight(const at::Tensor& w, const at::Tensor& t);

/// The exact inverse of block_affine_weight: W_ij = (W'_ij − T_i)(I + T_i)⁻¹,
/// by a batched linear solve (no explicit inverse) computed in fp64 and
/// returned in the promoted dtype of W' and T. Fails when some I + T_i is
/// singular.
at::Tensor block_affine_unmerge(const at::Tensor& merged, const at::Tensor& t);

/// Reference for block_affine_weight: a loop over every block (i, j).
at::Tensor block_affine_weight_ref(const at::Tensor& w, const at::Tensor& t);

/// Reference for block_affine_unmerge: per block, an explicit fp64 inverse.
at::Tensor block_affine_unmerge_ref(const at::Tensor& merged, const at::Tensor& t);

}  // namespace peft::kernels

#endif  // PEFT_KERNELS_BLOCK_AFFINE_H_
