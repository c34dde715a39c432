// Activation checkpointing (models/checkpoint.h, CausalLm::
// set_activation_checkpointing): loss and every trainable gradient equal those
// of the plain forward for LLaMA and GPT-2 with LoRA (dropout on), with a
// stream adapter (HSM on LLaMA, Compacter on GPT-2), and for full
// fine-tuning; under bf16 CPU autocast with backward inside and outside the
// autocast scope; the RNG stream continues as without checkpointing; eval,
// no-grad and KV-cache forwards are unchanged; the graph from the loss has far
// fewer autograd nodes; checkpoint_block on its own (input with and without
// grad, nothing trainable, grad mode off).
#include "models/checkpoint.h"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/causal_lm.h"
#include "peft/core/autocast.h"
#include "peft/peft_model.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

enum class Autocast { kOff, kBf16BackwardInside, kBf16BackwardOutside };

struct StepResult {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;  // every parameter that requires grad
  int64_t nodes = 0;                        // autograd nodes reachable from the loss
  at::Tensor next_random;                   // the RNG stream after the step
};

at::Tensor lm_loss(models::CausalLm& lm, const at::Tensor& ids) {
  const at::Tensor logits = lm.forward(ids, nullptr).to(at::kFloat);  // [B, T, V]
  const int64_t v = logits.size(-1), t = ids.size(1);
  return at::cross_entropy_loss(logits.narrow(1, 0, t - 1).reshape({-1, v}), ids.narrow(1, 1, t - 1).reshape({-1}));
}

// One training forward + backward from RNG seed `seed`; `aux` adds the
// adapters' extra loss (HSM).
StepResult train_step(models::CausalLm& lm, const std::function<at::Tensor()>& aux, const at::Tensor& ids,
                      bool checkpointing, Autocast ac, uint64_t seed) {
  lm.set_activation_checkpointing(checkpointing);
  lm.module().train();
  for (at::Tensor& p : lm.module().parameters()) p.mutable_grad() = at::Tensor();
  at::manual_seed(seed);
  StepResult r;
  at::Tensor loss;
  {
    AutocastScope scope(ac != Autocast::kOff, at::kCPU);
    loss = lm_loss(lm, ids);
    if (aux) {
      const at::Tensor a = aux();
      if (a.defined() && a.numel() > 0) loss = loss + a.to(loss.scalar_type());
    }
    r.nodes = testing::autograd_node_count(loss);
    if (ac != Autocast::kBf16BackwardOutside) loss.backward();
  }
  if (ac == Autocast::kBf16BackwardOutside) loss.backward();
  r.loss = loss.item<double>();
  for (const auto& item : lm.module().named_parameters(/*recurse=*/true)) {
    const at::Tensor& g = item.value().grad();
    if (item.value().requires_grad()) r.grads[item.key()] = g.defined() ? g.clone() : at::Tensor();
  }
  r.next_random = at::rand({8});
  return r;
}

// Checkpointed and plain steps agree: loss, every trainable gradient (present
// in both, within `tol` of the larger magnitude when `relative`), the RNG
// stream, and the checkpointed graph is much smaller.
void expect_same_step(models::CausalLm& lm, const std::function<at::Tensor()>& aux, Autocast ac, double tol,
                      bool relative) {
  const at::Tensor ids = testing::sample_ids(lm.config().vocab_size(), 3, 12, 7);
  const StepResult plain = train_step(lm, aux, ids, false, ac, 123);
  const StepResult ckpt = train_step(lm, aux, ids, true, ac, 123);
  lm.set_activation_checkpointing(false);
  EXPECT_NEAR(ckpt.loss, plain.loss, relative ? tol * std::abs(plain.loss) : tol);
  ASSERT_EQ(plain.grads.size(), ckpt.grads.size());
  ASSERT_FALSE(plain.grads.empty());
  int64_t nonzero = 0;
  for (const auto& [name, g] : plain.grads) {
    const at::Tensor& c = ckpt.grads.at(name);
    ASSERT_EQ(g.defined(), c.defined()) << name;
    if (!g.defined()) continue;
    const double scale = relative ? std::max(g.abs().max().item<double>(), 1e-12) : 1.0;
    EXPECT_LE((g - c).abs().max().item<double>(), tol * scale) << name;
    if (g.abs().max().item<double>() > 0) ++nonzero;
  }
  EXPECT_GT(nonzero, static_cast<int64_t>(plain.grads.size()) / 2) << "most gradients should be non-zero";
  EXPECT_TRUE(at::equal(plain.next_random, ckpt.next_random)) << "the RNG stream must continue unchanged";
  EXPECT_LT(ckpt.nodes * 3, plain.nodes) << "checkpointed " << ckpt.nodes << " nodes, plain " << plain.nodes;
}

// Every trainable tensor moved off its init (LoRA B = 0 would zero A's grads).
void perturb_trainable_(PeftModel& pm, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::NoGradGuard ng;
  for (auto& [name, p] : pm.trainable_parameters()) p.add_(at::empty_like(p).normal_(0.0, 0.1, gen));
}

proto::AdapterConfig lora_config(const std::string& preset) {
  proto::AdapterConfig c;
  c.set_name("lora");
  c.mutable_lora()->set_r(4);
  c.mutable_lora()->set_alpha(8);
  c.mutable_lora()->set_dropout(0.25);
  c.mutable_target()->set_preset(preset);
  return c;
}

proto::AdapterConfig hsm_config() {
  proto::AdapterConfig c;
  c.set_name("hsm");
  c.mutable_hsm()->set_target_hidden(24);
  c.mutable_hsm()->set_bottleneck(8);
  c.mutable_hsm()->set_global_step(100);
  return c;
}

proto::AdapterConfig compacter_config() {
  proto::AdapterConfig c;
  c.set_name("compacter");
  c.mutable_compacter()->set_phm_dim(4);
  c.mutable_compacter()->set_reduction_factor(4);
  return c;
}

std::unique_ptr<PeftModel> lora_model(const models::ModelConfig& mc) {
  auto pm = std::make_unique<PeftModel>(testing::tiny_model(mc, 5));
  EXPECT_TRUE(pm->add_adapter(lora_config("all_linear"), 2).ok());
  pm->freeze_base_();
  perturb_trainable_(*pm, 11);
  return pm;
}

// `stream` beside LoRA, both active.
std::unique_ptr<PeftModel> stream_model(const models::ModelConfig& mc, const proto::AdapterConfig& stream) {
  auto pm = std::make_unique<PeftModel>(testing::tiny_model(mc, 5));
  EXPECT_TRUE(pm->add_adapter(stream, 1).ok());
  EXPECT_TRUE(pm->add_adapter(lora_config("all_linear"), 2).ok());
  EXPECT_TRUE(pm->set_active({{stream.name(), 1.0}, {"lora", 1.0}}).ok());
  pm->freeze_base_();
  perturb_trainable_(*pm, 11);
  pm->on_step(30);
  return pm;
}

std::function<at::Tensor()> aux_of(PeftModel& pm) {
  return [&pm] { return pm.aux_loss(); };
}

TEST(Checkpointing, OffByDefaultAndToggles) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(), 5);
  EXPECT_FALSE(lm->activation_checkpointing());
  lm->set_activation_checkpointing(true);
  EXPECT_TRUE(lm->activation_checkpointing());
  lm->set_activation_checkpointing(false);
  EXPECT_FALSE(lm->activation_checkpointing());
}

TEST(Checkpointing, DropoutIsActiveInTheseTests) {
  // Otherwise matching losses would not show that the dropout masks match.
  std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_llama_config());
  const at::Tensor ids = testing::sample_ids(96, 3, 12, 7);
  const StepResult a = train_step(pm->model(), nullptr, ids, false, Autocast::kOff, 1);
  const StepResult b = train_step(pm->model(), nullptr, ids, false, Autocast::kOff, 2);
  EXPECT_GT(std::abs(a.loss - b.loss), 1e-6);
}

TEST(Checkpointing, LlamaLoraFp32) {
  std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_llama_config());
  expect_same_step(pm->model(), nullptr, Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, LlamaLoraTiedHeadFp32) {
  std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_llama_config(/*tied=*/true));
  expect_same_step(pm->model(), nullptr, Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, Gpt2LoraFp32) {
  std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_gpt2_config());
  expect_same_step(pm->model(), nullptr, Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, LoraOnOneLayerOnly) {
  // Block 0 has nothing trainable and no hook: it runs plainly; block 1's
  // input does not require grad (the anchor path).
  auto pm = std::make_unique<PeftModel>(testing::tiny_model(testing::tiny_llama_config(), 5));
  proto::AdapterConfig c = lora_config("attention");
  c.mutable_target()->add_layers(1);
  ASSERT_TRUE(pm->add_adapter(c, 2).ok());
  pm->freeze_base_();
  perturb_trainable_(*pm, 11);
  expect_same_step(pm->model(), nullptr, Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, LlamaHsmWithLoraFp32) {
  std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_llama_config(), hsm_config());
  expect_same_step(pm->model(), aux_of(*pm), Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, Gpt2CompacterWithLoraFp32) {
  // Compacter leaves the embedding alone, so block 0's input does not require
  // grad while its hook and LoRA do.
  std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_gpt2_config(), compacter_config());
  expect_same_step(pm->model(), aux_of(*pm), Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, LlamaCompacterWithLoraFp32) {
  std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_llama_config(), compacter_config());
  expect_same_step(pm->model(), aux_of(*pm), Autocast::kOff, 1e-6, false);
}

TEST(Checkpointing, FullFineTuningFp32) {
  for (const models::ModelConfig& mc : {testing::tiny_llama_config(), testing::tiny_gpt2_config()}) {
    std::shared_ptr<models::CausalLm> lm = testing::tiny_model(mc, 5);
    for (const at::Tensor& p : lm->module().parameters()) ASSERT_TRUE(p.requires_grad());
    expect_same_step(*lm, nullptr, Autocast::kOff, 1e-6, false);
  }
}

TEST(Checkpointing, Bf16AutocastBackwardInsideScope) {
  // As the trainer does: backward() inside the AutocastScope, where a cast
  // cache filled by the no-grad forward would drop trainable gradients.
  {
    std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_llama_config());
    expect_same_step(pm->model(), nullptr, Autocast::kBf16BackwardInside, 1e-3, true);
  }
  {
    std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_gpt2_config(), compacter_config());
    expect_same_step(pm->model(), aux_of(*pm), Autocast::kBf16BackwardInside, 1e-3, true);
  }
  {
    proto::AdapterConfig hsm = hsm_config();
    hsm.mutable_hsm()->set_identity_loss(false);
    std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_llama_config(), hsm);
    expect_same_step(pm->model(), aux_of(*pm), Autocast::kBf16BackwardInside, 1e-3, true);
  }
  {
    // With the Identity Loss, HSM's A feeds both a block and the loss through
    // ONE cached bf16 cast in the plain graph, so its two gradient
    // contributions are summed in bf16 there and in fp32 here (the
    // recomputation makes its own cast): differences of a bf16 ulp (2^-8).
    std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_llama_config(), hsm_config());
    expect_same_step(pm->model(), aux_of(*pm), Autocast::kBf16BackwardInside, 1e-2, true);
  }
  std::shared_ptr<models::CausalLm> full = testing::tiny_model(testing::tiny_gpt2_config(), 5);
  expect_same_step(*full, nullptr, Autocast::kBf16BackwardInside, 1e-3, true);
}

TEST(Checkpointing, Bf16AutocastBackwardOutsideScope) {
  // The recomputation re-enters bf16 autocast itself.
  {
    std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_gpt2_config());
    expect_same_step(pm->model(), nullptr, Autocast::kBf16BackwardOutside, 1e-3, true);
  }
  std::shared_ptr<models::CausalLm> full = testing::tiny_model(testing::tiny_llama_config(), 5);
  expect_same_step(*full, nullptr, Autocast::kBf16BackwardOutside, 1e-3, true);
}

TEST(Checkpointing, Fp32ForwardBackwardUnderAutocast) {
  // Forward without autocast, backward() inside a bf16 scope: the
  // recomputation must switch autocast off again.
  std::unique_ptr<PeftModel> pm = lora_model(testing::tiny_llama_config());
  models::CausalLm& lm = pm->model();
  const at::Tensor ids = testing::sample_ids(96, 3, 12, 7);
  std::map<std::string, at::Tensor> grads[2];
  for (int on = 0; on < 2; ++on) {
    lm.set_activation_checkpointing(on == 1);
    lm.module().train();
    for (at::Tensor& p : lm.module().parameters()) p.mutable_grad() = at::Tensor();
    at::manual_seed(4);
    const at::Tensor loss = lm_loss(lm, ids);
    AutocastScope scope(true, at::kCPU);
    loss.backward();
    for (auto& [name, p] : pm->trainable_parameters()) grads[on][name] = p.grad().clone();
  }
  for (const auto& [name, g] : grads[0]) EXPECT_LE((g - grads[1].at(name)).abs().max().item<double>(), 1e-6) << name;
  lm.set_activation_checkpointing(false);
}

TEST(Checkpointing, EvalNoGradAndCacheForwardsUnchanged) {
  for (const models::ModelConfig& mc : {testing::tiny_llama_config(), testing::tiny_gpt2_config()}) {
    std::unique_ptr<PeftModel> pm = lora_model(mc);
    models::CausalLm& lm = pm->model();
    const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 2, 10, 3);
    lm.module().eval();
    const at::Tensor ref = lm.forward(ids, nullptr).detach();
    lm.set_activation_checkpointing(true);
    // Eval mode (dropout off), grad on: no checkpoint node, same logits.
    const at::Tensor eval = lm.forward(ids, nullptr);
    EXPECT_TRUE(at::equal(eval.detach(), ref));
    EXPECT_GT(testing::autograd_node_count(eval), 20);  // the full graph is built
    // Train mode, grad off: plain forward.
    lm.module().train();
    {
      at::NoGradGuard ng;
      at::manual_seed(9);
      const at::Tensor a = lm.forward(ids, nullptr);
      lm.set_activation_checkpointing(false);
      at::manual_seed(9);
      const at::Tensor b = lm.forward(ids, nullptr);
      EXPECT_TRUE(at::equal(a, b));
      EXPECT_FALSE(a.requires_grad());
      lm.set_activation_checkpointing(true);
    }
    // A KV cache is never checkpointed (it appends during forward): prefill
    // plus one step equals the full sequence in eval mode.
    lm.module().eval();
    models::KvCache cache = lm.make_cache(2, 16);
    const at::Tensor p1 = lm.forward(ids.narrow(1, 0, 9), &cache);
    const at::Tensor p2 = lm.forward(ids.narrow(1, 9, 1), &cache);
    EXPECT_EQ(cache.length, 10);
    EXPECT_LE((p2.detach().select(1, 0) - ref.select(1, 9)).abs().max().item<double>(), 1e-5);
    EXPECT_LE((p1.detach() - ref.narrow(1, 0, 9)).abs().max().item<double>(), 1e-5);
    lm.module().train();
    models::KvCache train_cache = lm.make_cache(2, 16);
    lm.forward(ids, &train_cache).sum().backward();  // would double-append if recomputed
    EXPECT_EQ(train_cache.length, 10);
    lm.set_activation_checkpointing(false);
  }
}

TEST(Checkpointing, GradAccumulationOverTwoBackwards) {
  std::unique_ptr<PeftModel> pm = stream_model(testing::tiny_gpt2_config(), compacter_config());
  models::CausalLm& lm = pm->model();
  const at::Tensor a = testing::sample_ids(80, 2, 12, 1), b = testing::sample_ids(80, 2, 12, 2);
  std::map<std::string, at::Tensor> grads[2];
  for (int on = 0; on < 2; ++on) {
    lm.set_activation_checkpointing(on == 1);
    lm.module().train();
    for (at::Tensor& p : lm.module().parameters()) p.mutable_grad() = at::Tensor();
    at::manual_seed(17);
    lm_loss(lm, a).backward();
    lm_loss(lm, b).backward();
    for (auto& [name, p] : pm->trainable_parameters()) grads[on][name] = p.grad().clone();
  }
  for (const auto& [name, g] : grads[0]) EXPECT_LE((g - grads[1].at(name)).abs().max().item<double>(), 1e-6) << name;
  lm.set_activation_checkpointing(false);
}

// ---------------------------------------------------------------------------
// checkpoint_block on its own.

struct ToyBlock {
  at::Tensor w;  // [C, C]
  at::Tensor forward(const at::Tensor& x) const {
    return x + at::dropout(at::tanh(at::matmul(x, w)), 0.5, /*train=*/true);
  }
};

TEST(CheckpointBlock, InputAndParameterGradients) {
  at::manual_seed(0);
  const ToyBlock blk{at::randn({6, 6}).requires_grad_(true)};
  const at::Tensor x0 = at::randn({2, 3, 6});
  for (bool x_grad : {false, true}) {
    at::Tensor grads[2][2];  // [plain/ckpt][w, x]
    for (int on = 0; on < 2; ++on) {
      blk.w.mutable_grad() = at::Tensor();
      const at::Tensor x = x0.clone().requires_grad_(x_grad);
      const at::Tensor xin = x * 2.0;  // non-leaf when x requires grad
      at::manual_seed(5);
      at::Tensor y = on ? models::checkpoint_block([&blk](const at::Tensor& t) { return blk.forward(t); }, xin, true)
                        : blk.forward(xin);
      y = blk.forward(y);  // a plain block after it: the RNG stream must continue
      y.pow(2).sum().backward();
      grads[on][0] = blk.w.grad().clone();
      if (x_grad) grads[on][1] = x.grad().clone();
    }
    EXPECT_TRUE(at::allclose(grads[0][0], grads[1][0], 0, 1e-6)) << "x requires grad: " << x_grad;
    if (x_grad) {
      EXPECT_TRUE(at::allclose(grads[0][1], grads[1][1], 0, 1e-6));
    }
  }
}

TEST(CheckpointBlock, PlainWhenNothingNeedsGrad) {
  const at::Tensor w = at::randn({4, 4});
  const at::Tensor x = at::randn({2, 4});
  int calls = 0;
  models::BlockFn fn = [&](const at::Tensor& t) {
    ++calls;
    return at::matmul(t, w);
  };
  const at::Tensor y = models::checkpoint_block(fn, x, /*params_need_grad=*/false);
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(calls, 1);
  {
    at::NoGradGuard ng;
    const at::Tensor z = models::checkpoint_block(fn, x.clone().requires_grad_(true), true);
    EXPECT_FALSE(z.requires_grad());
  }
  EXPECT_EQ(calls, 2);
}

TEST(CheckpointBlock, RecomputesOnceInBackward) {
  const at::Tensor w = at::randn({4, 4}).requires_grad_(true);
  const at::Tensor x = at::randn({2, 4});
  int calls = 0;
  models::BlockFn fn = [&](const at::Tensor& t) {
    ++calls;
    return at::matmul(t, w);
  };
  const at::Tensor y = models::checkpoint_block(fn, x, true);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_EQ(calls, 1);
  y.sum().backward();
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(at::allclose(w.grad(), x.sum(0).unsqueeze(1).expand({4, 4}), 0, 1e-6));
}

}  // namespace
}  // namespace peft
