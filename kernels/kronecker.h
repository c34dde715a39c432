//
// The PHM (parameterized hypercomplex multiplication) linear map of Compacter
// (Karimi Mahabadi, Henderson & Ruder, "Compacter: Efficient Low-Rank
// Hypercomplex Adapter Layers", NeurIPS 2021, eqs. 3-5; Zhang et al. 2021 for
// the PHM layer):
//
//   y = x H + b,   H = Σ_{i=1..n} A_i ⊗ (L_i R_i)        H [in, out]
//
// with A [n, n, n] the "rule" (slow) matrices, L = W_left [n, in/n, r] and
// R = W_right [n, r, out/n] the low-rank "fast" factors (Compacter's rank-one
// case is r = 1). The Kronecker layout is
//   (A_i ⊗ B)[p·(in/n) + a, q·(out/n) + c] = A_i[p, q] · B[a, c].
//
// Two implementations with one contract:
//  - phm_linear_ref (kernels/kronecker_ref.cc) builds H explicitly with
//    at::kron: the readable specification.
//  - phm_linear (kernels/kronecker.cc) never materialises H. Writing x as
//    X [N, n, in/n] (rows p, columns a):
//      U[N, p, i, r] = Σ_a X[N, p, a] L[i, a, r]
//      V[N, q, i, r] = Σ_p A[i, p, q] U[N, p, i, r]
//      Y[N, q, c]    = Σ_{i, r} V[N, q, i, r] R[i, r, c]
//    costing N·r·(n·(in + out) + n³) multiply-adds instead of N·in·out (plus
//    n·in·out to build H). Differences from the reference are rounding only;
//    tests/kernels/kronecker_test.cc checks values and gradients (fp32, fp64).
//
// Both are plain ATen (autograd works through them) and accept any leading
// batch shape. Shape or dtype mismatches raise c10::Error naming the shapes.
#ifndef PEFT_KERNELS_KRONECKER_H_
#define PEFT_KERNELS_KRONECKER_H_

#include <ATen/core/Tensor.h>

namespace peft::kernels {

/// y [..., out] = x [..., in] · Σ_i A_i ⊗ (W_left_i W_right_i) + bias, without
/// building the [in, out] matrix. A [n, n, n], W_left [n, in/n, r],
/// W_right [n, r, out/n], bias [out] or undefined. All tensors share x's
/// dtype and device.
at::Tensor phm_linear(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                      const at::Tensor& bias);

/// The same map computed as x · H + bias with H = phm_weight(...): the
/// reference implementation.
at::Tensor phm_linear_ref(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                          const at::Tensor& bias);

/// H [in, out] = Σ_i kron(A_i, W_left_i W_right_i): the dense matrix for
/// right-multiplication (a Linear weight would be Hᵀ). Used by the reference
/// and by exports that need a dense adapter.
at::Tensor phm_weight(const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right);

/// Checks the shapes and dtypes of a PHM call (x undefined: factors only);
/// raises c10::Error with the offending shapes.
void check_phm_args(const at::Tensor& x, const at::Tensor& A, const at::Tensor& W_left, const at::Tensor& W_right,
                    const at::Tensor& bias);

}  // namespace peft::kernels

#endif  // PEFT_KERNELS_KRONECKER_H_
