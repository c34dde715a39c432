// Reference PHM map: the Kronecker sum is built explicitly (the spec).
#include <ATen/ATen.h>

#include "kernels/kronecker.h"

namespace peft::kernels {

void check_phm_args(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                    const at::Tensor& bias) {
  TORCH_CHECK(A.dim() == 3 && A.size(0) == A.size(1) && A.size(1) == A.size(2),
              "PHM: rule tensor A must be [n, n, n], got ", A.sizes());
  const int64_t n = A.size(0);
  TORCH_CHECK(W_left.dim() == 3 && W_left.size(0) == n, "PHM: W_left must be [n=", n, ", in/n, r], got ",
              W_left.sizes());
  TORCH_CHECK(W_right.dim() == 3 && W_right.size(0) == n && W_right.size(1) == W_left.size(2),
              "PHM: W_right must be [n=", n, ", r=", W_left.size(2), ", out/n], got ", W_right.sizes());
  TORCH_CHECK(W_left.scalar_type() == A.scalar_type() && W_right.scalar_type() == A.scalar_type(),
              "PHM: A, W_left and W_right must share a dtype, got ", A.scalar_type(), ", ", W_left.scalar_type(), ", ",
              W_right.scalar_type());
  const int64_t in = n * W_left.size(1), out = n * W_right.size(2);
  if (bias.defined()) {
    TORCH_CHECK(bias.dim() == 1 && bias.size(0) == out, "PHM: bias must be [out=", out, "], got ", bias.sizes());
  }
  if (x.defined()) {
    TORCH_CHECK(x.dim() >= 1 && x.size(-1) == in, "PHM: input has ", x.dim() ? x.size(-1) : 0,
                " features, the layer expects in = n·(in/n) = ", in);
    TORCH_CHECK(x.scalar_type() == A.scalar_type(), "PHM: input dtype ", x.scalar_type(), " differs from the factors' ",
                A.scalar_type());
  }
}

at::Tensor phm_weight(const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right) {
  check_phm_args({}, A, W_left, W_right, {});
  at::Tensor H;
  for (int64_t i = 0; i < A.size(0); ++i) {
    at::Tensor term = at::kron(A[i], at::matmul(W_left[i], W_right[i]));  // [in, out]
    H = H.defined() ? H + term : term;
  }
  return H;
}

at::Tensor phm_linear_ref(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                          const at::Tensor& bias) {
  check_phm_args(x, A, W_left, W_right, bias);
  at::Tensor y = at::matmul(x, phm_weight(A, W_left, W_right));
  return bias.defined() ? y + bias : y;
}

}  // namespace peft::kernels
