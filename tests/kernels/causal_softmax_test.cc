// The one-pass causal softmax (kernels/causal_softmax.cc) against its ATen
// reference: values and gradients for float32 and bfloat16, prefill (T = S),
// a continuation after a cache (T < S), single-token decode, grouped query
// heads (R = rep·T), sliding windows (only keys i - W < j <= i), and the
// input checks.
#include "kernels/causal_softmax.h"

#include <tuple>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace peft::kernels {
namespace {

struct Shape {
  int64_t rep, t, s;
  int64_t window = 0;
};

class CausalSoftmaxParity : public ::testing::TestWithParam<std::tuple<at::ScalarType, Shape>> {};

TEST_P(CausalSoftmaxParity, ValuesAndGradientsMatchReference) {
  const auto [dtype, sh] = GetParam();
  at::manual_seed(11);
  const at::Tensor x = (at::randn({2, 3, sh.rep * sh.t, sh.s}) * 4).to(dtype).requires_grad_(true);
  const at::Tensor p = causal_softmax(x, 0.125, sh.t, sh.window);
  const at::Tensor p_ref = causal_softmax_ref(x, 0.125, sh.t, sh.window);
  ASSERT_EQ(p.scalar_type(), dtype);
  const double tol = dtype == at::kFloat ? 1e-6 : 4e-3;  // bf16: one ulp of values <= 1
  EXPECT_LE((p.to(at::kFloat) - p_ref.to(at::kFloat)).abs().max().item<double>(), tol);
  // Rows sum to one; masked entries are exactly zero.
  EXPECT_LE((p.to(at::kFloat).sum(-1) - 1).abs().max().item<double>(), dtype == at::kFloat ? 1e-5 : 2e-2);
  EXPECT_EQ(p.masked_select(p_ref == 0).abs().sum().item<double>(), 0.0);
  const at::Tensor g = at::randn(x.sizes()).to(dtype);
  const at::Tensor gx = torch::autograd::grad({p}, {x}, {g})[0];
  const at::Tensor gx_ref = torch::autograd::grad({p_ref}, {x}, {g})[0];
  const double s = gx_ref.to(at::kFloat).abs().max().item<double>();
  EXPECT_LE((gx.to(at::kFloat) - gx_ref.to(at::kFloat)).abs().max().item<double>(),
            (dtype == at::kFloat ? 1e-5 : 3e-2) * s);
}

INSTANTIATE_TEST_SUITE_P(All, CausalSoftmaxParity,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kBFloat16),
                                            ::testing::Values(Shape{1, 9, 9}, Shape{2, 5, 5}, Shape{1, 3, 11},
                                                              Shape{4, 1, 7}, Shape{2, 33, 40}, Shape{1, 9, 9, 4},
                                                              Shape{2, 5, 12, 3}, Shape{4, 1, 7, 3},
                                                              Shape{2, 33, 40, 8}, Shape{1, 6, 6, 1})));

// The window convention itself, counted by hand: the query at position i
// keeps the keys j with i - W < j <= i, min(W, i + 1) of them.
TEST(CausalSoftmax, WindowKeepsTheLastWKeys) {
  const int64_t t = 10, s = 10, w = 4;
  const at::Tensor p = causal_softmax(at::randn({1, t, s}), 1.0, t, w);
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < s; ++j) {
      const bool visible = j <= i && j > i - w;
      EXPECT_EQ(p[0][i][j].item<float>() > 0, visible) << "query " << i << " key " << j;
    }
  }
}

TEST(CausalSoftmax, RejectsBadInputs) {
  EXPECT_THROW(causal_softmax(at::randn({2, 4, 4}, at::kDouble), 1.0, 4), c10::Error);
  EXPECT_THROW(causal_softmax(at::randn({2, 5, 4}), 1.0, 2), c10::Error);      // R not a multiple of T
  EXPECT_THROW(causal_softmax(at::randn({2, 6, 4}), 1.0, 6), c10::Error);      // T > S
  EXPECT_THROW(causal_softmax(at::randn({2, 4, 4}), 1.0, 4, -1), c10::Error);  // negative window
}

}  // namespace
}  // namespace peft::kernels
