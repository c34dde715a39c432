// The one-pass RMSNorm (kernels/rms_norm.cc) against its ATen reference:
// values and gradients (x, and w when it trains) with float32 and bfloat16
// outputs, odd widths (the vector loops' tails), and the input checks.
#include "kernels/rms_norm.h"

#include <tuple>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace peft::kernels {
namespace {

class RmsNormParity : public ::testing::TestWithParam<std::tuple<at::ScalarType, bool, int64_t>> {};

TEST_P(RmsNormParity, ValuesAndGradientsMatchReference) {
  const auto [out, train_w, c] = GetParam();
  at::manual_seed(5);
  const at::Tensor x = (at::randn({3, 7, c}) * 3).requires_grad_(true);
  const at::Tensor w = (at::rand({c}) + 0.5).requires_grad_(train_w);
  const at::Tensor y = fused_rms_norm(x, w, 1e-5, out);
  const at::Tensor y_ref = rms_norm_ref(x, w, 1e-5, out);
  ASSERT_EQ(y.scalar_type(), out);
  ASSERT_EQ(y.sizes(), x.sizes());
  // bf16: both round the same float32 value, so at most one bf16 ulp apart.
  const double tol = out == at::kFloat ? 1e-5 : 8e-3;
  EXPECT_LE((y.to(at::kFloat) - y_ref.to(at::kFloat)).abs().max().item<double>(),
            tol * y_ref.to(at::kFloat).abs().max().item<double>());
  const at::Tensor g = at::randn(x.sizes()).to(out);
  std::vector<at::Tensor> wrt = {x};
  if (train_w) wrt.push_back(w);
  const auto gr = torch::autograd::grad({y}, wrt, {g});
  const auto gr_ref = torch::autograd::grad({y_ref}, wrt, {g});
  for (size_t i = 0; i < gr.size(); ++i) {
    ASSERT_EQ(gr[i].scalar_type(), at::kFloat);
    const double s = gr_ref[i].abs().max().item<double>();
    EXPECT_LE((gr[i] - gr_ref[i]).abs().max().item<double>(), 1e-4 * s) << "gradient " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(All, RmsNormParity,
                         ::testing::Combine(::testing::Values(at::kFloat, at::kBFloat16), ::testing::Bool(),
                                            ::testing::Values<int64_t>(1, 17, 64, 515)));

TEST(RmsNorm, RejectsBadInputs) {
  const at::Tensor x = at::randn({2, 8});
  EXPECT_THROW(fused_rms_norm(x.to(at::kDouble), at::ones({8}), 1e-5, at::kFloat), c10::Error);
  EXPECT_THROW(fused_rms_norm(x, at::ones({7}), 1e-5, at::kFloat), c10::Error);
  EXPECT_THROW(fused_rms_norm(x, at::ones({8}), 1e-5, at::kHalf), c10::Error);
}

}  // namespace
}  // namespace peft::kernels
