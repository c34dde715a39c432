// NoRA specifics (peft/nora/nora.h): the frozen outer pair is the top-r SVD
// of W (orthonormal, buffers, no gradient, base untouched), ΔW is zero at
// init (exactly with zero-B, to fp32 rounding with the M₀ residual), the
// trainable count is 2·r·r', forward equals the materialised formula, the
// options and targets are checked, and the file keys are as documented.
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/adaptable_linear.h"
#include "peft/io/safetensors.h"
#include "peft/nora/nora.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

constexpr int64_t kOut = 24, kIn = 16;

at::Tensor random_weight(uint64_t seed, int64_t out = kOut, int64_t in = kIn) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::empty({out, in}).normal_(0.0, 0.3, gen);
}

proto::NoraOptions nora(int r, int r_inner) {
  proto::NoraOptions o;
  o.set_r(r);
  o.set_r_inner(r_inner);
  return o;
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

void perturb_(const at::Tensor& p, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard ng;
  p.add_(at::empty_like(p).normal_(0.0, 0.5, gen));
}

TEST(Nora, OuterFactorsAreTheTopRSvdOrthonormalAndFrozen) {
  const at::Tensor w = random_weight(1);
  const at::Tensor w0 = w.clone();
  auto layer = std::make_shared<NoraLinearImpl>(nora(8, 4), w, 7);
  EXPECT_TRUE(at::equal(w, w0)) << "NoRA must not modify the base weight";

  // B_o = U_r has orthonormal columns.
  const at::Tensor gram = at::matmul(layer->nora_B_outer.t(), layer->nora_B_outer);
  EXPECT_LE(max_abs(gram - at::eye(8)), 1e-5);
  // B_o A_o = U_r Σ_r V_rᵀ, the best rank-8 approximation (double reference).
  auto [u, s, vh] = at::linalg_svd(w.to(at::kDouble), false);
  const at::Tensor best = at::matmul(u.narrow(1, 0, 8) * s.narrow(0, 0, 8), vh.narrow(0, 0, 8));
  EXPECT_LE(max_abs(at::matmul(layer->nora_B_outer, layer->nora_A_outer).to(at::kDouble) - best), 1e-5);

  // Buffers, not parameters: never trained, no gradient.
  std::map<std::string, at::Tensor> params, buffers;
  for (const auto& p : layer->named_parameters()) params[p.key()] = p.value();
  for (const auto& b : layer->named_buffers()) buffers[b.key()] = b.value();
  EXPECT_EQ(params.size(), 2u);
  EXPECT_TRUE(params.count("nora_A") && params.count("nora_B"));
  EXPECT_TRUE(buffers.count("nora_A_outer") && buffers.count("nora_B_outer"));
  EXPECT_FALSE(buffers.count("nora_M_init")) << "zero-B init needs no M_init";
  EXPECT_FALSE(layer->nora_A_outer.requires_grad());
  EXPECT_FALSE(layer->nora_B_outer.requires_grad());
  perturb_(layer->nora_B, 2);
  at::Tensor x = at::randn({5, kIn});
  layer->forward(x, w, at::Tensor()).pow(2).sum().backward();
  EXPECT_FALSE(layer->nora_A_outer.grad().defined());
  EXPECT_FALSE(layer->nora_B_outer.grad().defined());
  EXPECT_GT(max_abs(layer->nora_A.grad()), 0);
  EXPECT_GT(max_abs(layer->nora_B.grad()), 0);
}

TEST(Nora, SigmaSidesGiveTheSameOuterProduct) {
  const at::Tensor w = random_weight(3);
  proto::NoraOptions o = nora(6, 3);
  auto a_side = std::make_shared<NoraLinearImpl>(o, w, 0);
  o.set_sigma_side(proto::NoraOptions::SIGMA_B);
  auto b_side = std::make_shared<NoraLinearImpl>(o, w, 0);
  o.set_sigma_side(proto::NoraOptions::SIGMA_SQRT);
  auto sqrt_side = std::make_shared<NoraLinearImpl>(o, w, 0);
  const at::Tensor ref = at::matmul(a_side->nora_B_outer, a_side->nora_A_outer);
  EXPECT_LE(max_abs(at::matmul(b_side->nora_B_outer, b_side->nora_A_outer) - ref), 1e-5);
  EXPECT_LE(max_abs(at::matmul(sqrt_side->nora_B_outer, sqrt_side->nora_A_outer) - ref), 1e-5);
  // SIGMA_B: A_o = V_rᵀ has orthonormal rows.
  EXPECT_LE(max_abs(at::matmul(b_side->nora_A_outer, b_side->nora_A_outer.t()) - at::eye(6)), 1e-5);
}

TEST(Nora, DeltaIsZeroAtInit) {
  const at::Tensor w = random_weight(4);
  const at::Tensor x = at::randn({7, kIn});
  {
    auto layer = std::make_shared<NoraLinearImpl>(nora(8, 4), w, 11);
    EXPECT_EQ(max_abs(layer->nora_B), 0.0);
    EXPECT_EQ(max_abs(layer->delta_weight()), 0.0);
    EXPECT_EQ(max_abs(layer->forward_delta(x, w)), 0.0);
  }
  for (auto init : {proto::NoraOptions::KAIMING, proto::NoraOptions::RANDN}) {
    SCOPED_TRACE(proto::NoraOptions::InnerInit_Name(init));
    proto::NoraOptions o = nora(8, 4);
    o.set_inner_init(init);
    auto layer = std::make_shared<NoraLinearImpl>(o, w, 11);
    ASSERT_TRUE(layer->nora_M_init.defined());
    EXPECT_GT(max_abs(layer->nora_B), 0.0);
    EXPECT_LE(max_abs(layer->delta_weight()), 1e-5);
    EXPECT_LE(max_abs(layer->forward_delta(x, w)), 1e-5);
    // keep_base (the authors' behaviour): no residual, so ΔW ≠ 0.
    o.set_keep_base(true);
    auto kept = std::make_shared<NoraLinearImpl>(o, w, 11);
    EXPECT_FALSE(kept->nora_M_init.defined());
    EXPECT_GT(max_abs(kept->delta_weight()), 1e-2);
    EXPECT_TRUE(at::equal(kept->nora_B, layer->nora_B)) << "same seed, same inner init";
  }
}

TEST(Nora, InitScalesAndTrainableCount) {
  const at::Tensor w = random_weight(5);
  auto layer = std::make_shared<NoraLinearImpl>(nora(8, 4), w, 3);
  // kaiming_uniform(a=√5) on A_i [r', r] = U(±1/√r).
  EXPECT_LE(max_abs(layer->nora_A), 1.0 / std::sqrt(8.0));
  EXPECT_GT(max_abs(layer->nora_A), 0.5 / std::sqrt(8.0));
  int64_t n = 0;
  for (const at::Tensor& p : layer->parameters()) n += p.numel();
  EXPECT_EQ(n, 2 * 8 * 4);
  proto::AdapterConfig c;
  *c.mutable_nora() = nora(8, 4);
  EXPECT_EQ(nora_method().trainable_count(c, kOut, kIn), 64);
  // Through PeftModel on a tiny LLaMA: 2·r·r' on each of the 8 attention projections.
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  c.mutable_target()->set_preset("attention");
  ASSERT_TRUE(pm.add_adapter(c).ok());
  pm.freeze_base_();
  EXPECT_EQ(pm.num_trainable(), 8 * 64);
}

TEST(Nora, Scaling) {
  proto::NoraOptions o = nora(8, 4);
  EXPECT_DOUBLE_EQ(nora_scaling(o), 1.0);  // alpha defaults to r_inner
  o.set_alpha(8);
  EXPECT_DOUBLE_EQ(nora_scaling(o), 2.0);
  o.set_scale_by_outer(true);
  EXPECT_DOUBLE_EQ(nora_scaling(o), 1.0);
}

TEST(Nora, ForwardEqualsTheMaterialisedFormula) {
  const at::Tensor w = random_weight(6);
  const at::Tensor b = at::randn({kOut});
  for (bool residual : {false, true}) {
    SCOPED_TRACE(residual ? "kaiming + M_init" : "zero_B");
    proto::NoraOptions o = nora(8, 4);
    o.set_alpha(6);  // s = 1.5
    if (residual) o.set_inner_init(proto::NoraOptions::KAIMING);
    auto layer = std::make_shared<NoraLinearImpl>(o, w, 21);
    perturb_(layer->nora_A, 1);
    perturb_(layer->nora_B, 2);
    // y = x Wᵀ + b + s · x (B_o (B_i A_i − M₀) A_o)ᵀ in double.
    auto d = [](const at::Tensor& t) { return t.detach().to(at::kDouble); };
    at::Tensor inner = at::matmul(d(layer->nora_B), d(layer->nora_A));
    if (residual) inner = inner - d(layer->nora_M_init);
    const at::Tensor delta = 1.5 * at::matmul(d(layer->nora_B_outer), at::matmul(inner, d(layer->nora_A_outer)));
    for (uint64_t seed : {1, 2, 3}) {
      at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
      const at::Tensor x = at::empty({2, 5, kIn}).normal_(0.0, 1.0, gen);
      const at::Tensor want = at::matmul(d(x), (d(w) + delta).t()) + d(b);
      torch::NoGradGuard ng;
      const at::Tensor got = layer->forward(x, w, b);
      EXPECT_LE(max_abs(got.to(at::kDouble) - want) / max_abs(want), 1e-6);
      EXPECT_LE(max_abs(layer->delta_weight().to(at::kDouble) - delta), 1e-5);
      EXPECT_LE(max_abs(layer->merged_weight(w) - w - layer->delta_weight()), 1e-6);
      EXPECT_LE(max_abs(layer->unmerged_weight(layer->merged_weight(w)) - w), 1e-6);
    }
  }
}

TEST(Nora, BadOptionsAndTargetsAreErrors) {
  const AdapterMethod m = nora_method();
  auto validate = [&](const proto::NoraOptions& o) {
    proto::AdapterConfig c;
    *c.mutable_nora() = o;
    return m.validate(c);
  };
  EXPECT_TRUE(validate(nora(8, 4)).ok());
  EXPECT_TRUE(validate(nora(4, 4)).ok());
  absl::Status st = validate(nora(4, 8));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("r_inner = 8"), std::string::npos) << st;
  EXPECT_FALSE(validate(nora(0, 4)).ok());
  EXPECT_FALSE(validate(nora(8, 0)).ok());
  proto::NoraOptions o = nora(8, 4);
  o.set_alpha(0);
  EXPECT_FALSE(validate(o).ok());
  o = nora(8, 4);
  o.set_dropout(1.0);
  EXPECT_FALSE(validate(o).ok());

  // r larger than min(out, in) of the target.
  AdaptableLinear lin(AdaptableLinearOptions{/*in=*/kIn, /*out=*/kOut});
  {
    torch::NoGradGuard ng;
    lin->weight.copy_(random_weight(8));
  }
  const LinearTarget t{"model.layers.0.mlp.up_proj", 0, lin.get()};
  proto::AdapterConfig c;
  *c.mutable_nora() = nora(kIn + 1, 4);
  st = m.check_target(c, t);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("up_proj [24, 16]"), std::string::npos) << st;
  *c.mutable_nora() = nora(kIn, 4);
  EXPECT_TRUE(m.check_target(c, t).ok());

  // Activation-aware SVD needs calibration data: a clear Unimplemented.
  c.mutable_nora()->set_svd_mode(proto::NoraOptions::ACTIVATION_AWARE);
  absl::StatusOr<std::shared_ptr<LinearAdapter>> made = m.make_linear(c, t, 0);
  EXPECT_EQ(made.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(made.status().message().find("calibration"), std::string::npos) << made.status();

  // Through PeftModel: nothing is injected and the base is unchanged.
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  proto::AdapterConfig big;
  *big.mutable_nora() = nora(17, 4);  // k_proj is [16, 32]
  big.mutable_target()->set_preset("attention");
  st = pm.add_adapter(big);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("k_proj"), std::string::npos) << st;
  EXPECT_TRUE(pm.adapter_names().empty());
}

TEST(Nora, AdapterFileKeys) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  proto::AdapterConfig c;
  *c.mutable_nora() = nora(8, 4);
  c.mutable_nora()->set_inner_init(proto::NoraOptions::KAIMING);
  c.mutable_target()->add_modules("q_proj");
  c.mutable_target()->add_layers(0);
  ASSERT_TRUE(pm.add_adapter(c).ok());
  const std::string dir = testing::make_temp_dir("nora") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  std::map<std::string, std::vector<int64_t>> got;
  for (const io::TensorInfo& t : (*file)->tensors()) got[t.name] = t.shape;
  const std::string p = "base_model.model.model.layers.0.self_attn.q_proj.";
  const std::map<std::string, std::vector<int64_t>> want = {
      {p + "nora_A_outer", {8, 32}}, {p + "nora_B_outer", {32, 8}}, {p + "nora_A", {4, 8}},
      {p + "nora_B", {8, 4}},        {p + "nora_M_init", {8, 8}},
  };
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace peft
