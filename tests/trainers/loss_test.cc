// trainers/loss.h: causal_lm_loss through the fused head + cross-entropy
// equals the logits path (per-sample losses, token counts and trainable
// gradients) for LLaMA and GPT-2, with ignored labels, in fp32 and under
// bf16 autocast; and the fused path is taken exactly when the head is a
// plain product (AdaptableLinear::plain_weight: no live adapter on it).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

#include "peft/core/autocast.h"
#include "peft/peft_model.h"
#include "tests/testing/tiny_models.h"
#include "trainers/loss.h"

namespace peft::trainers {
namespace {

proto::AdapterConfig lora(const std::string& name, const std::string& module = "") {
  proto::AdapterConfig c;
  c.set_name(name);
  c.mutable_lora()->set_r(4);
  c.mutable_lora()->set_alpha(8);
  if (module.empty()) {
    c.mutable_target()->set_preset("all_linear");
  } else {
    c.mutable_target()->add_modules(module);
  }
  return c;
}

struct LossRun {
  PerSampleLoss loss;
  std::vector<at::Tensor> grads;
};

LossRun run(PeftModel& pm, const at::Tensor& ids, const at::Tensor& labels, bool fused, bool bf16) {
  for (auto& [name, p] : pm.trainable_parameters()) p.mutable_grad() = at::Tensor();
  LossRun r;
  {
    AutocastScope ac(bf16, at::kCPU);
    r.loss = causal_lm_loss(pm.model(), ids, labels, fused);
    (r.loss.loss * r.loss.token_counts.to(at::kFloat)).sum().backward();
  }
  for (auto& [name, p] : pm.trainable_parameters()) r.grads.push_back(p.grad().clone());
  return r;
}

void expect_same(const LossRun& a, const LossRun& b, double tol) {
  EXPECT_TRUE(at::equal(a.loss.token_counts, b.loss.token_counts));
  EXPECT_LE((a.loss.loss - b.loss.loss).abs().max().item<double>(), tol) << a.loss.loss << b.loss.loss;
  ASSERT_EQ(a.grads.size(), b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    const double scale = std::max(1.0, b.grads[i].abs().max().item<double>());
    EXPECT_LE((a.grads[i] - b.grads[i]).abs().max().item<double>(), tol * scale) << "gradient " << i;
  }
}

class LossTest : public ::testing::TestWithParam<bool> {};  // GPT-2?

TEST_P(LossTest, FusedHeadEqualsTheLogitsPath) {
  const models::ModelConfig cfg = GetParam() ? testing::tiny_gpt2_config() : testing::tiny_llama_config();
  PeftModel pm(testing::tiny_model(cfg, 3));
  ASSERT_TRUE(pm.add_adapter(lora("a"), 5).ok());
  ASSERT_TRUE(pm.set_active("a").ok());
  pm.freeze_base_();
  // LoRA's B starts at zero: train it a little so A's gradient is not zero.
  for (auto& [name, p] : pm.trainable_parameters()) {
    torch::NoGradGuard no_grad;
    p.normal_(0, 0.05);
  }
  const at::Tensor ids = testing::sample_ids(cfg.vocab_size(), 3, 12, 7);
  at::Tensor labels = testing::sample_ids(cfg.vocab_size(), 3, 12, 8);
  labels.index_put_({0, at::indexing::Slice(0, 5)}, -100);  // a prompt without loss
  labels.index_put_({2}, -100);                             // a sample without any
  ASSERT_TRUE(pm.model().plain_head_weight().defined());
  expect_same(run(pm, ids, labels, /*fused=*/true, false), run(pm, ids, labels, false, false), 1e-5);
  const LossRun bf = run(pm, ids, labels, true, /*bf16=*/true), bl = run(pm, ids, labels, false, true);
  expect_same(bf, bl, 2e-2);
  EXPECT_EQ(bf.loss.loss[2].item<float>(), 0.0f);
  EXPECT_EQ(bf.loss.token_counts[2].item<int64_t>(), 0);
}

INSTANTIATE_TEST_SUITE_P(Models, LossTest, ::testing::Values(false, true));

TEST(LossHeadTest, AnAdaptedHeadIsNotFusedUntilMerged) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 3));
  models::CausalLm& lm = pm.model();
  ASSERT_TRUE(lm.plain_head_weight().defined());
  {
    // Under bf16 autocast a frozen fp32 head is given as its bf16 copy.
    pm.freeze_base_();
    AutocastScope ac(true, at::kCPU);
    EXPECT_EQ(lm.plain_head_weight().scalar_type(), at::kBFloat16);
  }
  ASSERT_TRUE(pm.add_adapter(lora("head", "lm_head"), 5).ok());
  ASSERT_TRUE(pm.set_active("head").ok());
  EXPECT_FALSE(lm.plain_head_weight().defined()) << "a live adapter on the head must take the logits path";
  ASSERT_TRUE(pm.merge_().ok());
  EXPECT_TRUE(lm.plain_head_weight().defined()) << "merged: the head is a plain product again";
  ASSERT_TRUE(pm.unmerge_().ok());
  EXPECT_FALSE(lm.plain_head_weight().defined());
}

}  // namespace
}  // namespace peft::trainers
