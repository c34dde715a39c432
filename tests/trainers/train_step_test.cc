// The trainer's optimizer step (trainers/train_step.h) against the official
// implementations' numbers, computed here by hand on a tiny LLaMA:
//  - SORSA's OFFICIAL regulariser enters with γ / (η₀ · grad_accum)
//    (Gunale0926/SORSA's trainer back-propagates it through accelerate, which
//    divides by the accumulation steps);
//  - DECOUPLED applies W_p ← W_p − γ ∇calc_ortho after the optimizer step;
//  - PAT's schedule counter for optimizer step s (0-based) is max(s − 1, 0);
//  - the speed benchmark's step is the trainer's (same loss on one batch).
// Plain SGD makes the update linear in the gradient, so the regulariser's
// share of a step is the difference between a run with γ and one without.
#include <cmath>
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/sgd.h>

#include "peft/hsm/hsm.h"
#include "peft/peft_model.h"
#include "peft/sorsa/sorsa.h"
#include "tests/testing/tiny_models.h"
#include "trainers/train_step.h"

namespace peft::trainers {
namespace {

constexpr double kLr = 0.5, kPeakLr = 0.02, kGamma = 0.3;

proto::AdapterConfig sorsa_config(double gamma, proto::SorsaOptions::RegMode mode) {
  proto::AdapterConfig c;
  c.mutable_sorsa()->set_r(4);
  c.mutable_sorsa()->set_gamma(gamma);
  c.mutable_sorsa()->set_reg_mode(mode);
  c.mutable_target()->set_preset("attention");
  return c;
}

// A tiny LLaMA with SORSA whose factors are moved off orthonormality (at
// init ∇R = 0), the same for every γ and mode.
std::unique_ptr<PeftModel> sorsa_model(double gamma, proto::SorsaOptions::RegMode mode) {
  auto pm = std::make_unique<PeftModel>(testing::tiny_model(testing::tiny_llama_config(), 1));
  EXPECT_TRUE(pm->add_adapter(sorsa_config(gamma, mode), 0).ok());
  pm->freeze_base_();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(7);
  torch::NoGradGuard ng;
  for (auto& [name, p] : pm->trainable_parameters()) p.add_(at::empty_like(p).normal_(0.0, 0.05, gen));
  return pm;
}

data::Batch batch(uint64_t seed) {
  const at::Tensor ids = testing::sample_ids(96, 2, 9, seed);
  data::Batch b;
  b.input_ids = ids.narrow(1, 0, 8).contiguous();
  b.labels = ids.narrow(1, 1, 8).contiguous();
  b.tokens = b.global_tokens = 16;
  return b;
}

std::vector<at::Tensor> params_of(PeftModel& pm) {
  std::vector<at::Tensor> out;
  for (auto& [name, p] : pm.trainable_parameters()) out.push_back(p);
  return out;
}

std::vector<at::Tensor> snapshot(const std::vector<at::Tensor>& ps) {
  std::vector<at::Tensor> out;
  for (const at::Tensor& p : ps) out.push_back(p.detach().clone());
  return out;
}

// One train_step with SGD(kLr) on `accum` copies of the same batch; returns
// the trainable parameters before and after.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> one_step(PeftModel& pm, int64_t accum) {
  std::vector<at::Tensor> params = params_of(pm);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(kLr));
  StepOptions so;
  so.grad_accum = accum;
  so.peak_lr = kPeakLr;
  StepContext ctx{pm, opt, params, nullptr, DataParallelGroup()};
  std::vector<data::Batch> micro(accum, batch(3));
  for (data::Batch& b : micro) b.global_tokens = 16;
  const std::vector<at::Tensor> before = snapshot(params);
  absl::StatusOr<StepResult> r = train_step(ctx, so, micro, 0, kLr);
  EXPECT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->applied);
  return {before, snapshot(params)};
}

// The official calc_ortho by hand: the mean over layers of
// (‖A Aᵀ − I‖_F + ‖Bᵀ B − I‖_F) / 2 (A = V_pᵀ [r, in], B = U_p [out, r]).
at::Tensor calc_ortho_by_hand(PeftModel& pm) {
  at::Tensor total = at::zeros({}, at::kDouble);
  int64_t n = 0;
  for (const LinearTarget& t : pm.targets("default")) {
    auto* s = dynamic_cast<SorsaLinearImpl*>(t.linear->adapter("default"));
    const at::Tensor a = s->sorsa_A.to(at::kDouble), b = s->sorsa_B.to(at::kDouble);
    const at::Tensor ia = at::eye(a.size(0), a.options()), ib = at::eye(b.size(1), b.options());
    total =
        total + ((at::matmul(a, a.t()) - ia).pow(2).sum().sqrt() + (at::matmul(b.t(), b) - ib).pow(2).sum().sqrt()) / 2;
    ++n;
  }
  return total / static_cast<double>(n);
}

// ∇ calc_ortho with respect to each trainable parameter (0 where unused).
std::vector<at::Tensor> ortho_gradient(PeftModel& pm) {
  std::vector<at::Tensor> params = params_of(pm);
  torch::AutoGradMode on(true);
  std::vector<at::Tensor> g = torch::autograd::grad({calc_ortho_by_hand(pm)}, params, {}, false, false, true);
  for (size_t i = 0; i < g.size(); ++i) {
    if (!g[i].defined()) g[i] = at::zeros_like(params[i]);
    g[i] = g[i].to(at::kFloat);
  }
  return g;
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// The official coefficient is γ / (η₀ · grad_accum): with SGD the
// regulariser moves the factors by −lr · γ / (η₀ · a) · ∇calc_ortho, 4x less
// at accumulation 4 than at 1 (the task gradient is the same: 4 copies of
// one batch, normalised by the step's tokens).
TEST(TrainStep, SorsaOfficialRegulariserIsDividedByAccumulation) {
  std::vector<at::Tensor> reg_share[2];
  std::vector<at::Tensor> grad_r;
  const int64_t accums[2] = {1, 4};
  for (int k = 0; k < 2; ++k) {
    auto with = sorsa_model(kGamma, proto::SorsaOptions::OFFICIAL);
    auto without = sorsa_model(0.0, proto::SorsaOptions::OFFICIAL);
    if (k == 0) grad_r = ortho_gradient(*with);  // at the starting point, before any step
    auto [b1, a1] = one_step(*with, accums[k]);
    auto [b0, a0] = one_step(*without, accums[k]);
    for (size_t i = 0; i < a1.size(); ++i) {
      ASSERT_TRUE(at::equal(b1[i], b0[i]));
      reg_share[k].push_back(a1[i] - a0[i]);
    }
  }
  double largest = 0;
  for (size_t i = 0; i < grad_r.size(); ++i) {
    const at::Tensor want1 = -kLr * kGamma / kPeakLr * grad_r[i];
    EXPECT_LE(max_abs(reg_share[0][i] - want1), 2e-5 + 1e-4 * max_abs(want1)) << i;
    EXPECT_LE(max_abs(reg_share[1][i] - want1 / 4), 2e-5 + 1e-4 * max_abs(want1)) << i;
    largest = std::max(largest, max_abs(want1));
  }
  EXPECT_GT(largest, 0.1);  // the regulariser really moves the factors
}

// DECOUPLED: after the optimizer's step (task gradient only), a plain step
// −γ ∇calc_ortho evaluated at the updated factors; OFFICIAL differs.
TEST(TrainStep, SorsaDecoupledIsAPlainStepAfterTheOptimizer) {
  auto decoupled = sorsa_model(kGamma, proto::SorsaOptions::DECOUPLED);
  auto official = sorsa_model(kGamma, proto::SorsaOptions::OFFICIAL);
  auto without = sorsa_model(0.0, proto::SorsaOptions::DECOUPLED);
  auto [bd, ad] = one_step(*decoupled, 1);
  auto [bo, ao] = one_step(*official, 1);
  auto [b0, a0] = one_step(*without, 1);
  const std::vector<at::Tensor> g = ortho_gradient(*without);  // at the task-only updated factors
  double differ = 0;
  for (size_t i = 0; i < ad.size(); ++i) {
    const at::Tensor want = a0[i] - kGamma * g[i];
    EXPECT_LE(max_abs(ad[i] - want), 1e-6) << i;
    differ = std::max(differ, max_abs(ad[i] - ao[i]));
  }
  EXPECT_GT(differ, 1e-2) << "DECOUPLED must not behave like OFFICIAL";
}

// PAT: the official trainer writes its step counter into the model after
// each optimizer step, before incrementing it, so optimizer steps 0 and 1
// both run the schedule at t = 0 and step s at t = s − 1.
TEST(TrainStep, HsmScheduleFollowsTheOfficialCounter) {
  EXPECT_EQ(schedule_step(0), 0);
  EXPECT_EQ(schedule_step(1), 0);
  EXPECT_EQ(schedule_step(2), 1);
  EXPECT_EQ(schedule_step(57), 56);

  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  proto::AdapterConfig c;
  c.set_name("hsm");
  c.mutable_hsm()->set_target_hidden(24);
  c.mutable_hsm()->set_bottleneck(4);
  c.mutable_hsm()->set_global_step(10);
  ASSERT_TRUE(pm.add_adapter(c, 0).ok());
  pm.freeze_base_();
  auto* hsm = dynamic_cast<HsmAdapterImpl*>(pm.model().module().named_children()["peft_hsm"].get());
  ASSERT_NE(hsm, nullptr);
  std::vector<at::Tensor> params = params_of(pm);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(0.01));
  StepContext ctx{pm, opt, params, nullptr, DataParallelGroup()};
  // The loss of step s is the loss under schedule t(s): check it against a
  // forward at that t on a copy of the state, for a step at 0, 1 and 6.
  for (int64_t s : {0, 1, 6}) {
    const data::Batch b = batch(11 + s);
    pm.on_step(schedule_step(s));
    double want = 0;
    {
      torch::NoGradGuard ng;
      const at::Tensor logits = pm.model().forward(b.input_ids, nullptr);  // [B, T, V]
      want = at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}).to(at::kFloat), b.labels.reshape({-1}))
                 .item<double>() +
             pm.aux_loss().item<double>();
    }
    pm.on_step(12345);  // whatever was set before, the step sets its own
    absl::StatusOr<StepResult> r = train_step(ctx, StepOptions(), {b}, s, 0.01);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_NEAR(r->loss, want, 1e-5) << "step " << s;
    EXPECT_EQ(hsm->step(), schedule_step(s + 1));
  }
}

// A recipe's reweighting: the official warm-up (burnout_steps = 1000) unless
// set, and each normalisation maps to its own.
TEST(TrainStep, RecipeReweightingDefaults) {
  proto::Recipe r;
  r.mutable_reweighting()->set_strategy(proto::ReweightingConfig::LIN_UPPER);
  ReweightOptions o = reweight_options(r);
  EXPECT_EQ(o.warmup_steps, 1000);
  EXPECT_EQ(o.token_weighting, TokenWeighting::kTokens);
  r.mutable_reweighting()->set_token_weighting(proto::ReweightingConfig::TOKENS_MICRO_BATCH);
  EXPECT_EQ(reweight_options(r).token_weighting, TokenWeighting::kTokensMicroBatch);
  r.mutable_reweighting()->set_token_weighting(proto::ReweightingConfig::SAMPLES);
  EXPECT_EQ(reweight_options(r).token_weighting, TokenWeighting::kSamples);
}

}  // namespace
}  // namespace peft::trainers
