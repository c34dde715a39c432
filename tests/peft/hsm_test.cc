// PAT / HSM (peft/hsm): the gate schedule T(t), β(t) against hand values;
// mask loss and Identity Loss against hand computations; the straight-through
// gradient of the indicator; exact identity at init; the trainable count; the
// hard gate; and the structural prune: hidden size D, logits equal to the
// hard-masked model (with LoRA active beside the HSM, tied and untied heads),
// the RMSNorm factor, and a saved directory that reloads.
#include "peft/hsm/hsm.h"

#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/blocks.h"
#include "models/llama.h"
#include "models/model_io.h"
#include "peft/hsm/prune.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

proto::AdapterConfig hsm_config(int d = 24, int e = 8, int g = 100) {
  proto::AdapterConfig c;
  c.set_name("hsm");
  c.mutable_hsm()->set_target_hidden(d);
  c.mutable_hsm()->set_bottleneck(e);
  c.mutable_hsm()->set_global_step(g);
  return c;
}

TEST(HsmSchedule, HandValues) {
  const int64_t G = 10000;
  // T(t) = 1 / (1 − ln(max(1, t)) / ln G + 1e-6), β(t) = max(0.5 − t/G, 0).
  struct Row {
    int64_t t;
    double T, beta;
    bool detach;
  };
  const std::vector<Row> rows = {
      {0, 1.0 / (1.0 + 1e-6), 0.5, false},
      {1, 1.0 / (1.0 + 1e-6), 0.4999, false},
      {100, 1.0 / (0.5 + 1e-6), 0.49, false},   // ln 100 / ln 10⁴ = 1/2
      {1000, 1.0 / (0.25 + 1e-6), 0.4, false},  // 3/4
      {2500, 1.0 / (1.0 - std::log(2500.0) / std::log(10000.0) + 1e-6), 0.25, false},
      {5000, 1.0 / (1.0 - std::log(5000.0) / std::log(10000.0) + 1e-6), 0.0, false},
      {7999, 1.0 / (1.0 - std::log(7999.0) / std::log(10000.0) + 1e-6), 0.0, false},
      // Frozen at T(0.8·G) = 41.27... and detached from here on.
      {8000, 1.0 / (1.0 - std::log(8000.0) / std::log(10000.0) + 1e-6), 0.0, true},
      {9999, 1.0 / (1.0 - std::log(8000.0) / std::log(10000.0) + 1e-6), 0.0, true},
      {20000, 1.0 / (1.0 - std::log(8000.0) / std::log(10000.0) + 1e-6), 0.0, true},
  };
  for (const Row& r : rows) {
    const HsmSchedule s = hsm_schedule(r.t, G);
    EXPECT_NEAR(s.temperature, r.T, 1e-9 * r.T) << "t = " << r.t;
    EXPECT_NEAR(s.beta, r.beta, 1e-12) << "t = " << r.t;
    EXPECT_EQ(s.detach, r.detach) << "t = " << r.t;
  }
  EXPECT_NEAR(hsm_schedule(8000, G).temperature, 41.27, 0.01);  // docs/methods.md: ≈ 41 for G = 10⁴
  EXPECT_NEAR(hsm_schedule(100, G).temperature, 2.0, 1e-5);
  // G = 10: freeze at int(0.8·10) = 8.
  EXPECT_FALSE(hsm_schedule(7, 10).detach);
  EXPECT_TRUE(hsm_schedule(8, 10).detach);
}

TEST(HsmGate, SoftGateValuesAndDetach) {
  const at::Tensor m = at::tensor({0.0, 0.3, -0.3, -50.0}, at::kDouble).requires_grad_(true);
  HsmSchedule s{2.0, 0.25, false};
  const at::Tensor g = hsm_soft_gate(m, s);
  auto sig = [](double x) { return 1.0 / (1.0 + std::exp(-x)); };
  EXPECT_NEAR(g[0].item<double>(), 0.75, 1e-15);
  EXPECT_NEAR(g[1].item<double>(), sig(0.6) + 0.25, 1e-15);
  EXPECT_NEAR(g[2].item<double>(), sig(-0.6) + 0.25, 1e-15);
  EXPECT_NEAR(g[3].item<double>(), sig(-10.0) + 0.25, 1e-15);  // lower tail clamped at σ(−10)
  g.sum().backward();
  EXPECT_NEAR(m.grad()[1].item<double>(), 2.0 * sig(0.6) * (1 - sig(0.6)), 1e-12);
  EXPECT_EQ(m.grad()[3].item<double>(), 0.0);  // clamped: no gradient
  s.detach = true;
  EXPECT_FALSE(hsm_soft_gate(m, s).requires_grad());
  // Init: m = 0, β = 0.5 gives exactly 1.
  EXPECT_TRUE(at::equal(hsm_soft_gate(at::zeros({5}), hsm_schedule(0, 100)), at::ones({5})));
}

TEST(HsmGate, HardGate) {
  const at::Tensor m = at::tensor({0.5f, -0.5f, 0.0f, 1e-3f, -1e-3f, 3.0f});
  EXPECT_TRUE(at::equal(hsm_hard_gate(m), at::tensor({1.f, 0.f, 0.f, 1.f, 0.f, 1.f})));
}

TEST(HsmLoss, MaskLossHandValueAndSteGradient) {
  // m = [0.7, −0.2, 0.0, 0.3], D = 2: Σ𝟙[m ≥ 0] = 3 → 10·|3 − 2|/2 = 5;
  // m > 0: {0.7, 0.3} → mean(0.2², 0.2²) = 0.04; m ≤ 0: {−0.2, 0} →
  // mean(0.3², 0.5²) = 0.17. Total 5.21.
  const at::Tensor m = at::tensor({0.7, -0.2, 0.0, 0.3}, at::kDouble).requires_grad_(true);
  const at::Tensor loss = hsm_mask_loss(m, 2);
  EXPECT_NEAR(loss.item<double>(), 5.21, 1e-12);
  loss.backward();
  // STE: ∂/∂m_c of the first term = 10/D · sign(3 − 2) = 5 for every c;
  // polarisation: 2(m − 0.5)/2 or 2(m + 0.5)/2.
  const std::vector<double> expect = {5.0 + 0.2, 5.0 + 0.3, 5.0 + 0.5, 5.0 - 0.2};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(m.grad()[i].item<double>(), expect[i], 1e-12) << i;

  // Exactly D kept: the count term is 0 and |·| has zero slope there (as torch's abs).
  const at::Tensor m2 = at::tensor({0.5, -0.5, 0.5, -0.5}, at::kDouble).requires_grad_(true);
  const at::Tensor l2 = hsm_mask_loss(m2, 2);
  EXPECT_EQ(l2.item<double>(), 0.0);
  l2.backward();
  EXPECT_EQ(max_abs(m2.grad()), 0.0);

  // At init (all m = 0) the "m > 0" mean is over no channel and counts as 0
  // (the official code gives NaN): 10·|H − D|/D + 0.25.
  EXPECT_NEAR(hsm_mask_loss(at::zeros({8}, at::kDouble), 6).item<double>(), 10.0 * 2 / 6 + 0.25, 1e-12);
}

TEST(HsmLoss, BinarizeSteIsExactWithUnitGradient) {
  const at::Tensor m = at::tensor({0.3, -0.1, 0.0, 1e-9, -7.0}, at::kDouble).requires_grad_(true);
  const at::Tensor b = binarize_ste(m);
  EXPECT_TRUE(at::equal(b.detach(), at::tensor({1.0, 0.0, 1.0, 1.0, 0.0}, at::kDouble)));
  (b * at::tensor({1.0, 2.0, 3.0, 4.0, 5.0}, at::kDouble)).sum().backward();
  EXPECT_TRUE(at::equal(m.grad(), at::tensor({1.0, 2.0, 3.0, 4.0, 5.0}, at::kDouble)));
}

TEST(HsmLoss, IdentityLossHandValues) {
  // A = [[1, 0, 0], [0, 2, 0]]: A Aᵀ − I = diag(0, 3) → 9 / 4.
  EXPECT_NEAR(hsm_identity_loss(at::tensor({1.0, 0.0, 0.0, 0.0, 2.0, 0.0}, at::kDouble).view({2, 3})).item<double>(),
              2.25, 1e-15);
  // A = [[1, 1, 0], [0, 1, 0]]: A Aᵀ − I = [[1, 1], [1, 0]] → 3 / 4.
  EXPECT_NEAR(hsm_identity_loss(at::tensor({1.0, 1.0, 0.0, 0.0, 1.0, 0.0}, at::kDouble).view({2, 3})).item<double>(),
              0.75, 1e-15);
  // Orthonormal rows: 0.
  EXPECT_NEAR(hsm_identity_loss(at::eye(3, 5, at::kDouble)).item<double>(), 0.0, 1e-15);
}

HsmAdapterImpl* hsm_of(PeftModel& pm, const std::string& name = "hsm") { return find_hsm_adapter(pm, name).value(); }

TEST(Hsm, AuxLossSumsEveryHsmOrTheOfficialSubset) {
  const models::ModelConfig mc = testing::tiny_llama_config();
  for (const bool official : {false, true}) {
    PeftModel pm(testing::tiny_model(mc, 5));
    proto::AdapterConfig c = hsm_config(24, 8);
    c.mutable_hsm()->set_official_last_layer_only(official);
    ASSERT_TRUE(pm.add_adapter(c, 1).ok());
    HsmAdapterImpl* h = hsm_of(pm);
    {
      torch::NoGradGuard ng;
      h->mask.copy_(at::linspace(-1, 1, 32));
    }
    at::Tensor expect = hsm_mask_loss(h->mask, 24);
    std::vector<HsmModuleImpl*> mods = h->modules_in_order();
    ASSERT_EQ(mods.size(), 5u);  // 2L + 1
    if (official) mods = {h->embed.get(), h->attn[1].get(), h->mlp[1].get()};
    for (HsmModuleImpl* m : mods) expect = expect + hsm_identity_loss(m->A);
    EXPECT_NEAR(pm.aux_loss().item<double>(), expect.item<double>(), 1e-6);
  }
  // Without identity loss: only the mask loss, and no scale γ.
  PeftModel pm(testing::tiny_model(mc, 5));
  proto::AdapterConfig c = hsm_config(24, 8);
  c.mutable_hsm()->set_identity_loss(false);
  ASSERT_TRUE(pm.add_adapter(c, 1).ok());
  // m = 0: 10·|32 − 24|/24 + mean over m ≤ 0 of (0 + ½)² (the m > 0 mean is empty).
  EXPECT_NEAR(pm.aux_loss().item<double>(), 10.0 * 8 / 24 + 0.25, 1e-6);
  EXPECT_FALSE(hsm_of(pm)->embed->scale.defined());
}

TEST(Hsm, ExactIdentityAtInitAndTrainableCount) {
  const models::ModelConfig mc = testing::tiny_llama_config();
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(mc, 5);
  const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 2, 10, 3);
  torch::NoGradGuard ng;
  const at::Tensor base = lm->forward(ids, nullptr);
  PeftModel pm(lm);
  ASSERT_TRUE(pm.add_adapter(hsm_config(24, 8), 1).ok());
  EXPECT_TRUE(at::equal(pm.model().forward(ids, nullptr), base));
  pm.freeze_base_();
  // (2L + 1)·(2·H·e + H) + H = 5·(512 + 32) + 32.
  EXPECT_EQ(pm.num_trainable(), 5 * (2 * 32 * 8 + 32) + 32);
  // One mask, shared: exactly one [H] tensor named ...mask.
  int masks = 0;
  for (const auto& [name, t] : pm.trainable_parameters()) masks += name.find("mask") != std::string::npos;
  EXPECT_EQ(masks, 1);
}

TEST(Hsm, ForwardFormulaAndSchedule) {
  const models::ModelConfig mc = testing::tiny_llama_config();
  PeftModel pm(testing::tiny_model(mc, 5));
  ASSERT_TRUE(pm.add_adapter(hsm_config(24, 8, 100), 1).ok());
  HsmAdapterImpl* h = hsm_of(pm);
  torch::NoGradGuard ng;
  for (auto& p : h->parameters()) p.add_(at::randn_like(p) * 0.3);
  pm.on_step(30);
  EXPECT_EQ(h->step(), 30);
  const HsmSchedule s = hsm_schedule(30, 100);
  const at::Tensor g = at::reciprocal(1 + at::exp(at::clamp_max(-s.temperature * h->mask, 10))) + s.beta;
  EXPECT_TRUE(at::allclose(h->gate(), g));
  const at::Tensor x = at::randn({2, 3, 32});
  HsmModuleImpl* m = h->attn[1].get();
  const at::Tensor expect = m->scale * (g * (x + at::matmul(at::matmul(x, m->A.t()), m->B.t())));
  EXPECT_TRUE(at::allclose(h->forward(models::HookPoint::kAttentionOutput, 1, x), expect, 1e-5, 1e-6));
  h->set_hard_gate_(true);
  EXPECT_TRUE(at::equal(h->gate(), hsm_hard_gate(h->mask)));
}

TEST(Hsm, OptionErrors) {
  {
    PeftModel pm(testing::tiny_model(testing::tiny_gpt2_config(), 5));
    absl::Status st = pm.add_adapter(hsm_config(24), 1);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  }
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 5));
  proto::AdapterConfig c = hsm_config(24);
  c.mutable_hsm()->clear_target_hidden();
  EXPECT_EQ(pm.add_adapter(c, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pm.add_adapter(hsm_config(33), 1).code(), absl::StatusCode::kInvalidArgument);  // D > H
  EXPECT_EQ(pm.add_adapter(hsm_config(0), 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pm.add_adapter(hsm_config(24, 8, 1), 1).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(pm.add_adapter(hsm_config(24), 1).ok());
  absl::Status st = pm.merge_();
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("cannot be merged"), std::string::npos) << st;
}

// ---------------------------------------------------------------------------
// Structural prune.

struct PatSetup {
  std::unique_ptr<PeftModel> pm;
  at::Tensor keep;  // [D] kept channel indices, sorted
};

// HSM + LoRA (all_linear) both active, every trainable tensor perturbed, the
// mask set to +0.5 on D random channels and −0.5 elsewhere, hard gate on.
PatSetup pat_model(const models::ModelConfig& mc, int64_t D, at::ScalarType dtype) {
  PatSetup s;
  s.pm = std::make_unique<PeftModel>(testing::tiny_model(mc, 5));
  PeftModel& pm = *s.pm;
  EXPECT_TRUE(pm.add_adapter(hsm_config(D, 8), 1).ok());
  proto::AdapterConfig lora;
  lora.set_name("lora");
  lora.mutable_lora()->set_r(4);
  lora.mutable_lora()->set_alpha(8);
  lora.mutable_target()->set_preset("all_linear");
  EXPECT_TRUE(pm.add_adapter(lora, 2).ok());
  EXPECT_TRUE(pm.set_active({{"hsm", 1.0}, {"lora", 1.0}}).ok());
  pm.model().module().to(dtype);
  pm.freeze_base_();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
  torch::NoGradGuard ng;
  for (auto& [name, p] : pm.trainable_parameters()) p.add_(at::empty_like(p).normal_(0.0, 0.1, gen));
  HsmAdapterImpl* h = find_hsm_adapter(pm, "hsm").value();
  const int64_t H = mc.hidden_size();
  s.keep = std::get<0>(at::randperm(H, gen).narrow(0, 0, D).sort());
  at::Tensor m = at::full({H}, -0.5, h->mask.options());
  m.index_fill_(0, s.keep, 0.5);
  h->mask.copy_(m);
  h->set_hard_gate_(true);
  return s;
}

void expect_prune_matches(const models::ModelConfig& mc, at::ScalarType dtype, double tol) {
  const int64_t D = 24;
  PatSetup s = pat_model(mc, D, dtype);
  PeftModel& pm = *s.pm;
  const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 2, 12, 9);
  torch::NoGradGuard ng;
  const at::Tensor masked = pm.model().forward(ids, nullptr);

  absl::StatusOr<std::shared_ptr<models::CausalLm>> pruned = prune_hsm(pm, "hsm");
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  models::CausalLm& p = **pruned;
  EXPECT_EQ(p.config().llama.hidden_size, D);
  EXPECT_EQ(p.config().llama.head_dim, mc.llama.head_dim);
  EXPECT_EQ(p.config().llama.intermediate_size, mc.llama.intermediate_size);
  EXPECT_DOUBLE_EQ(p.config().llama.rms_norm_eps, mc.llama.rms_norm_eps * 32.0 / D);
  for (const auto& item : p.module().named_parameters()) {
    EXPECT_EQ(item.key().find("lora"), std::string::npos) << item.key();
    EXPECT_EQ(item.key().find("peft_"), std::string::npos) << item.key();
    EXPECT_EQ(item.value().scalar_type(), dtype) << item.key();
  }
  const at::Tensor logits = p.forward(ids, nullptr);
  EXPECT_LE(max_abs(logits - masked), tol) << "max |logit| " << max_abs(masked);
  std::cout << "pruned vs hard-masked logits, max |diff| = " << max_abs(logits - masked) << " (max |logit| "
            << max_abs(masked) << ")\n";
  // The KV-cached path of the pruned model agrees too.
  models::KvCache cache = p.make_cache(2, 16);
  const at::Tensor first = p.forward(ids.narrow(1, 0, 7), &cache);
  const at::Tensor rest = p.forward(ids.narrow(1, 7, 5), &cache);
  EXPECT_LE(max_abs(at::cat({first, rest}, 1) - masked), 10 * tol);

  // The pm is untouched: same masked logits afterwards.
  EXPECT_TRUE(at::equal(pm.model().forward(ids, nullptr), masked));

  // Saved as a plain model directory (fp32 files), it reloads and runs the same.
  if (dtype != at::kFloat) return;
  const std::string dir = testing::make_temp_dir("hsm_prune") + "/pruned";
  ASSERT_TRUE(models::save_model(p, dir).ok());
  models::LoadReport report;
  absl::StatusOr<std::shared_ptr<models::CausalLm>> back = models::load_model(dir, {}, &report);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(report.unexpected_tensors.empty());
  EXPECT_EQ((*back)->config().llama.hidden_size, D);
  EXPECT_EQ((*back)->config().llama.tie_word_embeddings, p.config().llama.tie_word_embeddings);
  EXPECT_TRUE(at::equal((*back)->forward(ids, nullptr), logits));
}

TEST(HsmPrune, LogitsEqualHardMaskedModelFp32) {
  expect_prune_matches(testing::tiny_llama_config(/*tied=*/false), at::kFloat, 1e-5);
}

TEST(HsmPrune, LogitsEqualHardMaskedModelFp64) {
  // The model itself normalises and takes the softmax in fp32 even for fp64
  // weights, so fp64 does not tighten the bound; it checks the fold's dtypes.
  expect_prune_matches(testing::tiny_llama_config(/*tied=*/false), at::kDouble, 1e-5);
}

TEST(HsmPrune, TiedEmbeddingsAreUntiedWhenTheFoldChangesThem) {
  expect_prune_matches(testing::tiny_llama_config(/*tied=*/true), at::kFloat, 1e-5);
  PatSetup s = pat_model(testing::tiny_llama_config(true), 24, at::kFloat);
  std::shared_ptr<models::CausalLm> p = prune_hsm(*s.pm, "hsm").value();
  EXPECT_FALSE(p->config().llama.tie_word_embeddings);  // E Mᵀ ≠ E on the kept columns
  auto* l = dynamic_cast<models::LlamaForCausalLMImpl*>(&p->module());
  auto* src = dynamic_cast<models::LlamaForCausalLMImpl*>(&s.pm->model().module());
  EXPECT_TRUE(at::equal(l->lm_head->weight, src->model->embed_tokens->weight.index_select(1, s.keep)));
}

TEST(HsmPrune, TiedEmbeddingsStayTiedWhenTheFoldIsTrivial) {
  // Fresh HSM (B = 0, γ = 1) and no LoRA: E Mᵀ restricted to K is E[:, K].
  const models::ModelConfig mc = testing::tiny_llama_config(true);
  PeftModel pm(testing::tiny_model(mc, 5));
  ASSERT_TRUE(pm.add_adapter(hsm_config(20, 8), 1).ok());
  HsmAdapterImpl* h = hsm_of(pm);
  {
    torch::NoGradGuard ng;
    h->mask.copy_(at::where(at::arange(32) % 3 == 0, -0.5, 0.5).to(at::kFloat));  // keeps 21 ≠ D = 20
  }
  const int64_t kept = (h->mask > 0).sum().item<int64_t>();
  h->set_hard_gate_(true);
  const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 1, 9, 2);
  torch::NoGradGuard ng;
  const at::Tensor masked = pm.model().forward(ids, nullptr);
  std::shared_ptr<models::CausalLm> p = prune_hsm(pm, "hsm").value();
  EXPECT_TRUE(p->config().llama.tie_word_embeddings);
  EXPECT_EQ(p->config().llama.hidden_size, kept);  // |K| even when it differs from D
  EXPECT_LE(max_abs(p->forward(ids, nullptr) - masked), 1e-5);
}

TEST(HsmPrune, RmsNormFactorIsExactForZeroChannels) {
  // RMSNorm over all H channels of x with zeros outside K equals RMSNorm over
  // K with weight·√(H/H') and eps·H/H' — and only approximately with eps kept.
  const int64_t H = 32, Hp = 24;
  const double eps = 1e-2;  // large, so the eps term is visible
  at::manual_seed(1);
  const at::Tensor keep = at::arange(Hp) + 4;
  at::Tensor x = at::zeros({3, H}, at::kDouble);
  x.index_copy_(1, keep, at::randn({3, Hp}, at::kDouble) * 0.05);
  models::RmsNorm full(H, eps);
  full->weight.data().copy_(at::randn({H}));
  models::RmsNorm kept(Hp, eps * H / Hp);
  kept->weight.data().copy_(full->weight.detach().index_select(0, keep) * std::sqrt(static_cast<double>(H) / Hp));
  const at::Tensor ref = full->forward(x.to(at::kFloat)).index_select(1, keep);
  const at::Tensor got = kept->forward(x.index_select(1, keep).to(at::kFloat));
  EXPECT_LE(max_abs(got - ref), 1e-6 * max_abs(ref));
  models::RmsNorm official(Hp, eps);  // merge_dimdown.py keeps eps
  official->weight.data().copy_(kept->weight.detach());
  EXPECT_GT(max_abs(official->forward(x.index_select(1, keep).to(at::kFloat)) - ref), 1e-3 * max_abs(ref));
}

TEST(HsmPrune, Preconditions) {
  PatSetup s = pat_model(testing::tiny_llama_config(), 24, at::kFloat);
  PeftModel& pm = *s.pm;
  HsmAdapterImpl* h = hsm_of(pm);
  h->set_hard_gate_(false);
  EXPECT_EQ(prune_hsm(pm, "hsm").status().code(), absl::StatusCode::kFailedPrecondition);
  h->set_hard_gate_(true);
  EXPECT_EQ(prune_hsm(pm, "nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(prune_hsm(pm, "lora").status().code(), absl::StatusCode::kInvalidArgument);
  {
    torch::NoGradGuard ng;
    h->mask.fill_(-0.5);
  }
  EXPECT_EQ(prune_hsm(pm, "hsm").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(pm.set_active("lora").ok());
  {
    torch::NoGradGuard ng;
    h->mask.fill_(0.5);
  }
  EXPECT_EQ(prune_hsm(pm, "hsm").status().code(), absl::StatusCode::kFailedPrecondition);  // not active
}

}  // namespace
}  // namespace peft
