// Factored PHM map: contracts x with the factors block-wise so the [in, out]
// Kronecker sum is never formed (derivation in kernels/kronecker.h).
#include "kernels/kronecker.h"

#include <vector>

#include <ATen/ATen.h>

namespace peft::kernels {

at::Tensor phm_linear(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                      const at::Tensor& bias) {
  check_phm_args(x, A, W_left, W_right, bias);
  const int64_t n = A.size(0), a = W_left.size(1), r = W_left.size(2), c = W_right.size(2);
  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = n * c;
  const at::Tensor X = x.reshape({-1, n, a});                                                // [N, n(p), a]
  const at::Tensor L = W_left.permute({1, 0, 2}).reshape({a, n * r});                        // [a, (i, r)]
  const at::Tensor U = at::matmul(X, L).view({X.size(0), n, n, r});                          // [N, p, i, r]
  const at::Tensor V = at::einsum("npir,ipq->nqir", {U, A});                                 // [N, q, i, r]
  at::Tensor Y = at::matmul(V.reshape({X.size(0), n, n * r}), W_right.reshape({n * r, c}));  // [N, q, c]
  Y = Y.reshape(out_shape);
  return bias.defined() ? Y + bias : Y;
}

}  // namespace peft::kernels
