// The speed benchmark (`peft bench --suite=perf`) measures the trainer's
// own step: at a small size its first two step losses equal those of
// train_step on the same model, adapter and batch (AdamW at 1e-4, clipping
// at 1), and the first equals the token-mean cross-entropy of a plain
// forward, computed here without the fused loss.
#include <memory>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adamw.h>

#include "models/model_io.h"
#include "peft/peft_model.h"
#include "trainers/perf_bench.h"
#include "trainers/train_step.h"

namespace peft::trainers {
namespace {

TEST(PerfStep, BenchmarkStepIsTheTrainersStep) {
  PerfOptions o;
  o.threads = 1;
  o.warmup_steps = 1;
  o.steps = 1;
  o.bf16 = false;
  o.batch = 2;
  o.seq = 16;
  o.hidden = 32;
  o.layers = 2;
  o.heads = 4;
  o.ffn = 48;
  o.vocab = 64;
  o.lora_r = 4;
  o.matmul_seconds = 0.01;
  absl::StatusOr<PerfResult> bench = run_perf_benchmark(o);
  ASSERT_TRUE(bench.ok()) << bench.status();

  // The same model, adapter and batch, trained with train_step.
  absl::StatusOr<std::shared_ptr<models::CausalLm>> lm = models::create_model(perf_model_config(o));
  ASSERT_TRUE(lm.ok()) << lm.status();
  models::init_weights_(**lm, 1);
  PeftModel pm(*lm);
  ASSERT_TRUE(pm.add_adapter(perf_adapter(o), 0).ok());
  ASSERT_TRUE(pm.set_active("default").ok());
  pm.freeze_base_();
  const data::Batch batch = perf_batch(o, at::Device(at::kCPU));
  double plain = 0;
  {
    torch::NoGradGuard ng;
    const at::Tensor logits = pm.model().forward(batch.input_ids, nullptr);  // [B, T, V]
    plain = at::cross_entropy_loss(logits.reshape({-1, o.vocab}), batch.labels.reshape({-1})).item<double>();
  }
  std::vector<at::Tensor> params;
  for (auto& [name, p] : pm.trainable_parameters()) params.push_back(p);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-4).weight_decay(0.0));
  StepOptions so;
  so.max_grad_norm = 1.0;
  so.peak_lr = 1e-4;
  StepContext ctx{pm, opt, params, nullptr, DataParallelGroup()};
  std::vector<double> losses;
  for (int64_t step = 0; step < 2; ++step) {
    absl::StatusOr<StepResult> r = train_step(ctx, so, {batch}, step, 1e-4);
    ASSERT_TRUE(r.ok()) << r.status();
    losses.push_back(r->loss);
  }
  EXPECT_NEAR(losses[0], plain, 1e-5);
  EXPECT_NEAR(bench->first_loss, losses[0], 1e-6);
  EXPECT_NEAR(bench->last_loss, losses[1], 1e-6);
  EXPECT_NE(losses[0], losses[1]);  // the step changed the adapter
  EXPECT_EQ(bench->base_parameters_with_grad, 0);
}

}  // namespace
}  // namespace peft::trainers
