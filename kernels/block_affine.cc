// Fast path of kernels/block_affine.h: every block product in one bmm.
//
// W [out, in] viewed as [out/r, r·(in/r), r] is contiguous and its row
// (i, a·(in/r) + j) is row a of block W_ij, so bmm with (I + T) [out/r, r, r]
// computes all W_ij (I + T_i) at once with no permute or copy.
#include "kernels/block_affine.h"

#include <tuple>

#include <ATen/ATen.h>

namespace peft::kernels {

at::Tensor block_affine_weight(const at::Tensor& w, const at::Tensor& t) {
  check_block_affine_args(w, t, "block_affine_weight");
  const at::ScalarType dtype = at::promote_types(w.scalar_type(), t.scalar_type());
  const int64_t out = w.size(0), in = w.size(1), r = t.size(1), n_out = out / r, n_in = in / r;
  const at::Tensor tt = t.to(dtype);                                // [n_out, r, r]
  const at::Tensor w3 = w.to(dtype).reshape({n_out, r * n_in, r});  // [n_out, r·n_in, r]
  at::Tensor y = at::bmm(w3, tt + at::eye(r, tt.options()));        // [n_out, r·n_in, r]
  // + T_i on every block, in place: bmm's backward needs its inputs, not its
  // output, so this saves a weight-sized buffer without breaking autograd.
  y.view({n_out, r, n_in, r}).add_(tt.unsqueeze(2));
  return y.view({out, in});
}

at::Tensor block_affine_unmerge(const at::Tensor& merged, const at::Tensor& t) {
  check_block_affine_args(merged, t, "block_affine_unmerge");
  const at::ScalarType dtype = at::promote_types(merged.scalar_type(), t.scalar_type());
  const int64_t out = merged.size(0), in = merged.size(1), r = t.size(1), n_out = out / r, n_in = in / r;
  // fp64 so that merge-then-unmerge of fp32 weights restores them to ~1 ulp.
  const at::Tensor tt = t.to(at::kDouble);
  const at::Tensor b =
      (merged.to(at::kDouble).reshape({n_out, r, n_in, r}) - tt.unsqueeze(2)).view({n_out, r * n_in, r});
  at::Tensor x, info;
  // X (I + T_i) = W'_i - T_i for every row block at once (left = false).
  std::tie(x, info) = at::linalg_solve_ex(tt + at::eye(r, tt.options()), b, /*left=*/false);
  const at::Tensor bad = info.nonzero();
  TORCH_CHECK(bad.numel() == 0,
              "block_affine_unmerge: I + T_i is singular for row block i = ", bad.numel() ? bad[0].item<int64_t>() : -1,
              " (r = ", r, "); the merge cannot be undone");
  return x.view({out, in}).to(dtype);
}

}  // namespace peft::kernels
