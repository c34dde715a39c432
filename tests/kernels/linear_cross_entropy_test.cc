// The fused output layer + cross-entropy (kernels/linear_cross_entropy.cc)
// against its reference on full logits: per-token values and gradients for h
// and W, fp64 (to rounding), fp32 and bf16 (to the dtype's precision), with
// ignored labels, chunk sizes that do and do not divide N, a frozen head (the
// row gradient formed in forward) and a trainable one (recomputed in
// backward); plus the input checks.
#include "kernels/linear_cross_entropy.h"

#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace peft::kernels {
namespace {

struct Inputs {
  at::Tensor h, W, labels, upstream;
};

Inputs make_inputs(at::ScalarType dtype, int64_t n, int64_t c, int64_t v, bool train_w, uint64_t seed) {
  at::manual_seed(seed);
  Inputs in;
  in.h = (at::randn({n, c}, at::kDouble)).to(dtype).requires_grad_(true);
  in.W = (at::randn({v, c}, at::kDouble) * 0.5).to(dtype).requires_grad_(train_w);
  in.labels = at::randint(v, {n}, at::kLong);
  in.labels.index_put_({at::arange(0, n, 3)}, -100);  // every third row ignored
  in.upstream = at::rand({n}, at::kFloat) + 0.5;      // a per-token weighting, as the reweighted loss gives
  return in;
}

class LinearCeParity : public ::testing::TestWithParam<std::tuple<at::ScalarType, bool, int64_t>> {};

TEST_P(LinearCeParity, ValuesAndGradientsMatchReference) {
  const auto [dtype, train_w, chunk] = GetParam();
  const double tol = dtype == at::kDouble ? 1e-10 : dtype == at::kFloat ? 1e-5 : 3e-2;
  Inputs in = make_inputs(dtype, 37, 16, 50, train_w, 3);
  const at::Tensor loss = linear_cross_entropy(in.h, in.W, in.labels, -100, chunk);
  const at::Tensor ref = linear_cross_entropy_ref(in.h, in.W, in.labels, -100);
  ASSERT_EQ(loss.scalar_type(), dtype == at::kDouble ? at::kDouble : at::kFloat);
  ASSERT_EQ(loss.sizes(), ref.sizes());
  EXPECT_LE((loss - ref).abs().max().item<double>(), tol * ref.abs().max().item<double>());
  // Ignored rows are exactly zero and the others positive.
  const at::Tensor ignored = in.labels == -100;
  EXPECT_EQ(loss.masked_select(ignored).abs().max().item<double>(), 0.0);
  EXPECT_GT(loss.masked_select(~ignored).min().item<double>(), 0.0);

  std::vector<at::Tensor> wrt = {in.h};
  if (train_w) wrt.push_back(in.W);
  const auto g = torch::autograd::grad({loss}, wrt, {in.upstream.to(loss.scalar_type())});
  const auto g_ref = torch::autograd::grad({ref}, wrt, {in.upstream.to(ref.scalar_type())});
  for (size_t i = 0; i < g.size(); ++i) {
    ASSERT_EQ(g[i].scalar_type(), wrt[i].scalar_type());
    const double s = g_ref[i].abs().max().item<double>();
    EXPECT_GT(s, 0.0);
    EXPECT_LE((g[i].to(at::kDouble) - g_ref[i].to(at::kDouble)).abs().max().item<double>(), tol * s)
        << "gradient " << i;
  }
  // Gradient rows of ignored tokens are zero.
  EXPECT_EQ(g[0].index({ignored}).abs().max().item<double>(), 0.0);
}

INSTANTIATE_TEST_SUITE_P(All, LinearCeParity,
                         ::testing::Combine(::testing::Values(at::kDouble, at::kFloat, at::kBFloat16),
                                            ::testing::Bool(), ::testing::Values<int64_t>(1, 8, 37, 256)));

TEST(LinearCe, FrozenHeadAndFrozenInputNeedNoGraph) {
  Inputs in = make_inputs(at::kFloat, 5, 4, 7, false, 1);
  in.h.requires_grad_(false);
  const at::Tensor loss = linear_cross_entropy(in.h, in.W, in.labels);
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_LE((loss - linear_cross_entropy_ref(in.h, in.W, in.labels)).abs().max().item<double>(), 1e-5);
}

// A frozen head stored in another dtype than h (a bf16 base under float32
// compute, or the reverse) is used in h's dtype, converted 4096 vocabulary
// rows at a time: V = 9000 spans two whole blocks and a partial one, and a
// float32/float64 h goes through them in one pass (online logsumexp) in
// tiles of up to 2 x chunk rows here. The values and h's gradient equal the
// reference on W converted whole.
TEST(LinearCe, FrozenHeadOfAnotherDtypeMatchesTheConvertedHead) {
  for (const auto& [h_dtype, w_dtype, tol] :
       {std::tuple{at::kFloat, at::kBFloat16, 1e-5}, std::tuple{at::kBFloat16, at::kFloat, 3e-2},
        std::tuple{at::kDouble, at::kFloat, 1e-10}}) {
    for (const int64_t chunk : {1, 16, 256}) {
      SCOPED_TRACE(std::string(c10::toString(h_dtype)) + " h, " + c10::toString(w_dtype) + " W, chunk " +
                   std::to_string(chunk));
      Inputs in = make_inputs(h_dtype, 41, 16, 9000, false, 5);
      in.W = in.W.detach().to(w_dtype);
      const at::Tensor loss = linear_cross_entropy(in.h, in.W, in.labels, -100, chunk);
      const at::Tensor h_ref = in.h.detach().clone().requires_grad_(true);
      const at::Tensor ref = linear_cross_entropy_ref(h_ref, in.W.to(h_dtype), in.labels, -100);
      ASSERT_EQ(loss.scalar_type(), ref.scalar_type());
      EXPECT_LE((loss - ref).abs().max().item<double>(), tol * ref.abs().max().item<double>());
      const at::Tensor g = torch::autograd::grad({loss}, {in.h}, {in.upstream.to(loss.scalar_type())})[0];
      const at::Tensor g_ref = torch::autograd::grad({ref}, {h_ref}, {in.upstream.to(ref.scalar_type())})[0];
      ASSERT_EQ(g.scalar_type(), h_dtype);
      const double s = g_ref.abs().max().item<double>();
      EXPECT_GT(s, 0.0);
      EXPECT_LE((g.to(at::kDouble) - g_ref.to(at::kDouble)).abs().max().item<double>(), tol * s);
      // Gradient rows of ignored tokens are zero.
      EXPECT_EQ(g.index({in.labels == -100}).abs().max().item<double>(), 0.0);
    }
  }
}

TEST(LinearCe, RejectsBadInputs) {
  Inputs in = make_inputs(at::kFloat, 5, 4, 7, false, 1);
  EXPECT_THROW(linear_cross_entropy(in.h, in.W.narrow(1, 0, 3), in.labels), c10::Error);  // C mismatch
  EXPECT_THROW(linear_cross_entropy(in.h, in.W, in.labels.narrow(0, 0, 4)), c10::Error);  // N mismatch
  // A W of another dtype is accepted only when it needs no gradient.
  EXPECT_THROW(linear_cross_entropy(in.h, in.W.to(at::kDouble).requires_grad_(true), in.labels), c10::Error);
  EXPECT_THROW(linear_cross_entropy(in.h, in.W, in.labels.to(at::kInt)), c10::Error);  // label dtype
  EXPECT_THROW(linear_cross_entropy(in.h, in.W, in.labels, -100, 0), c10::Error);      // chunk
  at::Tensor bad = in.labels.clone();
  bad[1] = 7;  // == V
  try {
    linear_cross_entropy(in.h, in.W, bad);
    FAIL() << "accepted a label outside the vocabulary";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("outside [0, 7)"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace peft::kernels
