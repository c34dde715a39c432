// Parity of the batched block-affine kernel with its per-block reference
// (kernels/block_affine.h): forward and gradients w.r.t. T and W on random
// shapes in fp32 and fp64, the exact inverse, a finite-difference check of
// the fast path's gradient in fp64, and the argument checks.
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kernels/block_affine.h"

namespace peft::kernels {
namespace {

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

struct Shape {
  int64_t n_out, n_in, r;
};

// Random shapes, including r = 1 and single-block weights.
std::vector<Shape> random_shapes() {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  std::vector<Shape> out = {{1, 1, 1}, {1, 1, 4}, {3, 1, 2}, {1, 5, 3}};
  for (int k = 0; k < 8; ++k) {
    const at::Tensor v = at::randint(1, 6, {3}, gen, at::kLong);
    out.push_back({v[0].item<int64_t>(), v[1].item<int64_t>(), 1 + 2 * v[2].item<int64_t>()});
  }
  return out;
}

std::string label(const Shape& s, at::ScalarType dtype) {
  return "W [" + std::to_string(s.n_out * s.r) + ", " + std::to_string(s.n_in * s.r) + "], r = " + std::to_string(s.r) +
         ", " + std::string(c10::toString(dtype));
}

class BlockAffineParity : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(BlockAffineParity, ForwardAndGradientsMatchReference) {
  const at::ScalarType dtype = GetParam();
  const double tol = dtype == at::kDouble ? 1e-12 : 2e-5;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  for (const Shape& s : random_shapes()) {
    SCOPED_TRACE(label(s, dtype));
    const at::TensorOptions opt = at::TensorOptions().dtype(dtype);
    const at::Tensor w0 = at::randn({s.n_out * s.r, s.n_in * s.r}, gen, opt);
    const at::Tensor t0 = at::randn({s.n_out, s.r, s.r}, gen, opt) * 0.3;
    const at::Tensor g = at::randn({s.n_out * s.r, s.n_in * s.r}, gen, opt);  // upstream gradient

    std::vector<at::Tensor> outs, grads_t, grads_w;
    for (bool fast : {true, false}) {
      at::Tensor w = w0.clone().set_requires_grad(true), t = t0.clone().set_requires_grad(true);
      at::Tensor y = fast ? block_affine_weight(w, t) : block_affine_weight_ref(w, t);
      (y * g).sum().backward();
      outs.push_back(y.detach());
      grads_t.push_back(t.grad());
      grads_w.push_back(w.grad());
    }
    const double scale = 1.0 + max_abs(outs[1]);
    EXPECT_LE(max_abs(outs[0] - outs[1]) / scale, tol) << "forward";
    EXPECT_LE(max_abs(grads_t[0] - grads_t[1]) / (1.0 + max_abs(grads_t[1])), tol) << "dL/dT";
    EXPECT_LE(max_abs(grads_w[0] - grads_w[1]) / (1.0 + max_abs(grads_w[1])), tol) << "dL/dW";
    EXPECT_EQ(outs[0].scalar_type(), dtype);

    // Exact inverse, both implementations (fp64 inside).
    const at::Tensor back = block_affine_unmerge(outs[0], t0);
    const at::Tensor back_ref = block_affine_unmerge_ref(outs[0], t0);
    EXPECT_EQ(back.scalar_type(), dtype);
    const double inv_tol = dtype == at::kDouble ? 1e-12 : 1e-5;
    EXPECT_LE(max_abs(back - w0), inv_tol * (1.0 + max_abs(w0))) << "unmerge";
    EXPECT_LE(max_abs(back - back_ref), inv_tol * (1.0 + max_abs(w0))) << "unmerge vs reference";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BlockAffineParity, ::testing::Values(at::kFloat, at::kDouble),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(BlockAffine, ClosedFormOnTwoByTwoBlocks) {
  // W'_ij = W_ij (I + T_i) + T_i written out for r = 2, one column block.
  const at::Tensor w = at::tensor({1.0, 2.0, 3.0, 4.0}, at::kDouble).view({2, 2});
  const at::Tensor t = at::tensor({0.5, -1.0, 2.0, 0.0}, at::kDouble).view({1, 2, 2});
  // (I + T) = [[1.5, -1], [2, 1]]; W (I + T) = [[1.5+4, -1+2], [4.5+8, -3+4]] = [[5.5, 1], [12.5, 1]].
  const at::Tensor expected = at::tensor({5.5 + 0.5, 1.0 - 1.0, 12.5 + 2.0, 1.0 + 0.0}, at::kDouble).view({2, 2});
  EXPECT_TRUE(at::allclose(block_affine_weight(w, t), expected));
  EXPECT_TRUE(at::allclose(block_affine_weight_ref(w, t), expected));
}

TEST(BlockAffine, ZeroTIsIdentityBitForBit) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor w = at::randn({12, 20}, gen);
  const at::Tensor t = at::zeros({3, 4, 4});
  EXPECT_TRUE(at::equal(block_affine_weight(w, t), w));
  EXPECT_TRUE(at::equal(block_affine_unmerge(w, t), w));
}

TEST(BlockAffine, NonContiguousAndMixedDtypeInputs) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(6);
  const at::Tensor w = at::randn({18, 12}, gen).t();  // [12, 18], non-contiguous
  const at::Tensor t = at::randn({2, 6, 6}, gen, at::TensorOptions().dtype(at::kDouble)) * 0.2;
  const at::Tensor fast = block_affine_weight(w, t);
  EXPECT_EQ(fast.scalar_type(), at::kDouble);  // promoted
  EXPECT_LE(max_abs(fast - block_affine_weight_ref(w.contiguous(), t)), 1e-12);
}

TEST(BlockAffine, FastGradientMatchesFiniteDifferencesInDouble) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::TensorOptions opt = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor w = at::randn({6, 9}, gen, opt);
  const at::Tensor t0 = at::randn({2, 3, 3}, gen, opt) * 0.5;
  const at::Tensor g = at::randn({6, 9}, gen, opt);
  auto loss = [&](const at::Tensor& t) { return (block_affine_weight(w, t) * g).sum(); };
  at::Tensor t = t0.clone().set_requires_grad(true);
  const at::Tensor analytic = torch::autograd::grad({loss(t)}, {t})[0];
  at::NoGradGuard no_grad;
  const double h = 1e-6;
  at::Tensor numeric = at::zeros_like(t0);
  for (int64_t k = 0; k < t0.numel(); ++k) {
    at::Tensor plus = t0.clone(), minus = t0.clone();
    plus.view(-1)[k] += h;
    minus.view(-1)[k] -= h;
    numeric.view(-1)[k] = (loss(plus) - loss(minus)).item<double>() / (2 * h);
  }
  EXPECT_LE(max_abs(analytic - numeric), 1e-7);
}

TEST(BlockAffine, SingularBlockIsReported) {
  const at::Tensor w = at::ones({4, 4}, at::kDouble);
  at::Tensor t = at::zeros({2, 2, 2}, at::kDouble);
  t[1] = -at::eye(2, at::kDouble);  // I + T_1 = 0
  try {
    block_affine_unmerge(w, t);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("singular for row block i = 1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(block_affine_unmerge_ref(w, t), c10::Error);
}

TEST(BlockAffine, ShapeErrorsNameTheShapes) {
  auto message = [](const at::Tensor& w, const at::Tensor& t) -> std::string {
    try {
      block_affine_weight(w, t);
    } catch (const c10::Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(at::zeros({12, 10}), at::zeros({3, 4, 4}))
                .find("r = 4 must divide both dimensions of the weight [12, 10]"),
            std::string::npos);
  EXPECT_NE(message(at::zeros({12, 8}), at::zeros({2, 4, 4})).find("T has 2 blocks"), std::string::npos);
  EXPECT_NE(message(at::zeros({12, 8}), at::zeros({3, 4, 2})).find("T must be [out/r, r, r]"), std::string::npos);
  EXPECT_NE(message(at::zeros({12}), at::zeros({3, 4, 4})).find("weight must be 2-D"), std::string::npos);
  EXPECT_THROW(block_affine_weight_ref(at::zeros({12, 10}), at::zeros({3, 4, 4})), c10::Error);
  EXPECT_THROW(block_affine_unmerge(at::zeros({12, 10}), at::zeros({3, 4, 4})), c10::Error);
}

}  // namespace
}  // namespace peft::kernels
