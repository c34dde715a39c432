// Reference implementation of kernels/block_affine.h: the formulas written
// block by block, as the spec for the parity test. O((out/r)·(in/r)) small
// ATen calls; not for training-size weights.
#include "kernels/block_affine.h"

#include <tuple>
#include <vector>

#include <ATen/ATen.h>

namespace peft::kernels {

at::Tensor block_affine_weight_ref(const at::Tensor& w, const at::Tensor& t) {
  check_block_affine_args(w, t, "block_affine_weight_ref");
  const at::ScalarType dtype = at::promote_types(w.scalar_type(), t.scalar_type());
  const int64_t r = t.size(1), n_out = w.size(0) / r, n_in = w.size(1) / r;
  const at::Tensor wd = w.to(dtype), td = t.to(dtype);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < n_out; ++i) {
    const at::Tensor ti = td[i];                         // [r, r]
    const at::Tensor a = at::eye(r, td.options()) + ti;  // I + T_i
    std::vector<at::Tensor> blocks;
    for (int64_t j = 0; j < n_in; ++j) {
      const at::Tensor wij = wd.slice(0, i * r, (i + 1) * r).slice(1, j * r, (j + 1) * r);
      blocks.push_back(at::mm(wij, a) + ti);  // W_ij (I + T_i) + T_i
    }
    rows.push_back(at::cat(blocks, 1));
  }
  return at::cat(rows, 0);
}

at::Tensor block_affine_unmerge_ref(const at::Tensor& merged, const at::Tensor& t) {
  check_block_affine_args(merged, t, "block_affine_unmerge_ref");
  const at::ScalarType dtype = at::promote_types(merged.scalar_type(), t.scalar_type());
  const int64_t r = t.size(1), n_out = merged.size(0) / r, n_in = merged.size(1) / r;
  const at::Tensor md = merged.to(at::kDouble), td = t.to(at::kDouble);
  std::vector<at::Tensor> rows;
  for (int64_t i = 0; i < n_out; ++i) {
    const at::Tensor ti = td[i];
    at::Tensor inv, info;
    std::tie(inv, info) = at::linalg_inv_ex(at::eye(r, td.options()) + ti);
    TORCH_CHECK(info.item<int64_t>() == 0, "block_affine_unmerge_ref: I + T_i is singular for row block i = ", i,
                " (r = ", r, ")");
    std::vector<at::Tensor> blocks;
    for (int64_t j = 0; j < n_in; ++j) {
      const at::Tensor mij = md.slice(0, i * r, (i + 1) * r).slice(1, j * r, (j + 1) * r);
      blocks.push_back(at::mm(mij - ti, inv));  // (W'_ij - T_i)(I + T_i)^-1
    }
    rows.push_back(at::cat(blocks, 1));
  }
  return at::cat(rows, 0).to(dtype);
}

}  // namespace peft::kernels
