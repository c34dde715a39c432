// Parity of the factored PHM map (kernels/kronecker.cc) with the dense
// Kronecker reference (kernels/kronecker_ref.cc): values and gradients, fp32
// and fp64, several shapes and ranks; plus H against a hand-built Kronecker
// product and the shape checks.
#include "kernels/kronecker.h"

#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace peft::kernels {
namespace {

struct Case {
  int64_t n, in, out, r;
};

std::vector<at::Tensor> make_args(const Case& c, at::ScalarType dtype, bool bias, uint64_t seed) {
  at::manual_seed(seed);
  const auto o = at::TensorOptions().dtype(dtype);
  at::Tensor x = at::randn({2, 3, c.in}, o).requires_grad_(true);
  at::Tensor A = at::randn({c.n, c.n, c.n}, o).requires_grad_(true);
  at::Tensor L = at::randn({c.n, c.in / c.n, c.r}, o).requires_grad_(true);
  at::Tensor R = at::randn({c.n, c.r, c.out / c.n}, o).requires_grad_(true);
  at::Tensor b = bias ? at::randn({c.out}, o).requires_grad_(true) : at::Tensor();
  return {x, A, L, R, b};
}

class KroneckerParity : public ::testing::TestWithParam<std::tuple<Case, at::ScalarType, bool>> {};

TEST_P(KroneckerParity, ValuesAndGradientsMatchReference) {
  const auto [c, dtype, bias] = GetParam();
  const double tol = dtype == at::kDouble ? 1e-12 : 1e-5;
  std::vector<at::Tensor> a = make_args(c, dtype, bias, 7);
  const at::Tensor y = phm_linear(a[0], a[1], a[2], a[3], a[4]);
  const at::Tensor y_ref = phm_linear_ref(a[0], a[1], a[2], a[3], a[4]);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{2, 3, c.out}));
  const double scale = y_ref.abs().max().item<double>();
  EXPECT_LE((y - y_ref).abs().max().item<double>(), tol * scale);

  const at::Tensor go = at::randn_like(y);
  std::vector<at::Tensor> inputs = {a[0], a[1], a[2], a[3]};
  if (bias) inputs.push_back(a[4]);
  const auto g = torch::autograd::grad({y}, inputs, {go});
  const auto g_ref = torch::autograd::grad({y_ref}, inputs, {go});
  for (size_t i = 0; i < g.size(); ++i) {
    const double s = g_ref[i].abs().max().item<double>();
    EXPECT_LE((g[i] - g_ref[i]).abs().max().item<double>(), tol * s) << "gradient " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, KroneckerParity,
                         ::testing::Combine(::testing::Values(Case{4, 32, 8, 1}, Case{4, 8, 32, 1}, Case{2, 6, 10, 3},
                                                              Case{1, 5, 7, 2}, Case{8, 64, 16, 2}),
                                            ::testing::Values(at::kFloat, at::kDouble), ::testing::Bool()));

TEST(Kronecker, WeightIsTheKroneckerSum) {
  // n = 2, in = 4, out = 2, r = 1: check H entry by entry against
  // (A_i ⊗ B_i)[p·2 + a, q·1 + c] = A_i[p, q] B_i[a, c].
  at::manual_seed(3);
  const at::Tensor A = at::randn({2, 2, 2}, at::kDouble);
  const at::Tensor L = at::randn({2, 2, 1}, at::kDouble);
  const at::Tensor R = at::randn({2, 1, 1}, at::kDouble);
  const at::Tensor H = phm_weight(A, L, R);
  ASSERT_EQ(H.sizes(), (std::vector<int64_t>{4, 2}));
  for (int64_t p = 0; p < 2; ++p) {
    for (int64_t a = 0; a < 2; ++a) {
      for (int64_t q = 0; q < 2; ++q) {
        double expect = 0;
        for (int64_t i = 0; i < 2; ++i) {
          expect += A[i][p][q].item<double>() * L[i][a][0].item<double>() * R[i][0][0].item<double>();
        }
        EXPECT_NEAR(H[p * 2 + a][q].item<double>(), expect, 1e-14);
      }
    }
  }
}

TEST(Kronecker, RejectsBadShapes) {
  const at::Tensor A = at::randn({4, 4, 4});
  const at::Tensor L = at::randn({4, 8, 1});
  const at::Tensor R = at::randn({4, 1, 2});
  EXPECT_THROW(phm_linear(at::randn({3, 30}), A, L, R, {}), c10::Error);                     // in = 32
  EXPECT_THROW(phm_linear(at::randn({3, 32}), A, L, at::randn({4, 2, 2}), {}), c10::Error);  // rank mismatch
  EXPECT_THROW(phm_linear(at::randn({3, 32}), at::randn({4, 4, 3}), L, R, {}), c10::Error);
  EXPECT_THROW(phm_linear(at::randn({3, 32}), A, L, R, at::randn({7})), c10::Error);
  EXPECT_THROW(phm_linear(at::randn({3, 32}, at::kDouble), A, L, R, {}), c10::Error);
  EXPECT_NO_THROW(phm_linear(at::randn({3, 32}), A, L, R, at::randn({8})));
}

}  // namespace
}  // namespace peft::kernels
