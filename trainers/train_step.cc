#include "trainers/train_step.h"

#include <torch/types.h>  // first: torch/nn/utils/clip_grad.h is not self-contained

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <torch/nn/utils/clip_grad.h>  // needs torch/types.h above
#include <torch/optim/optimizer.h>

#include "absl/strings/str_cat.h"
#include "peft/core/autocast.h"
#include "peft/core/status.h"
#include "peft/sorsa/regularizer_step.h"
#include "trainers/distributed.h"
#include "trainers/loss.h"
#include "trainers/stop_signal.h"

namespace peft::trainers {

ReweightOptions reweight_options(const proto::Recipe& r) {
  ReweightOptions o;
  switch (r.reweighting().strategy()) {
    case proto::ReweightingConfig::LIN_UPPER: o.strategy = ReweightStrategy::kLinUpper; break;
    case proto::ReweightingConfig::QUADRATIC: o.strategy = ReweightStrategy::kQuadratic; break;
    case proto::ReweightingConfig::EXTREMES: o.strategy = ReweightStrategy::kExtremes; break;
    default: o.strategy = ReweightStrategy::kUniform;
  }
  o.temperature = r.reweighting().temperature();
  o.warmup_steps = r.reweighting().warmup_steps();
  switch (r.reweighting().token_weighting()) {
    case proto::ReweightingConfig::SAMPLES: o.token_weighting = TokenWeighting::kSamples; break;
    case proto::ReweightingConfig::TOKENS_MICRO_BATCH: o.token_weighting = TokenWeighting::kTokensMicroBatch; break;
    default: o.token_weighting = TokenWeighting::kTokens;
  }
  return o;
}

StepOptions step_options(const proto::Recipe& r) {
  StepOptions o;
  o.grad_accum = r.training().grad_accum();
  o.bf16 = r.training().precision() == proto::PrecisionChoice::BF16;
  o.max_grad_norm = r.optimizer().max_grad_norm();
  o.peak_lr = r.optimizer().lr();
  o.reweight = reweight_options(r);
  return o;
}

int64_t schedule_step(int64_t step) { return std::max<int64_t>(step - 1, 0); }

absl::StatusOr<StepResult> train_step(StepContext& ctx, const StepOptions& o,
                                      const std::vector<data::Batch>& micro_batches, int64_t step, double lr) {
  if (static_cast<int64_t>(micro_batches.size()) != o.grad_accum) {
    return absl::InvalidArgumentError(
        absl::StrCat("train_step: ", micro_batches.size(), " micro-batches for grad_accum ", o.grad_accum));
  }
  PeftModel& pm = ctx.pm;
  const int64_t world = ctx.group.world_size;
  for (auto& g : ctx.optimizer.param_groups()) g.options().set_lr(lr);
  ctx.optimizer.zero_grad();
  pm.on_step(schedule_step(step));
  StepResult result;
  // The loss is normalised by the loss tokens of the whole optimizer step
  // (all micro-batches, all ranks), so that accumulation and data
  // parallelism give the gradient of one big batch.
  for (const data::Batch& b : micro_batches) result.tokens += b.global_tokens;
  double step_loss = 0;
  bool finite = true;
  for (int64_t a = 0; a < o.grad_accum; ++a) {
    const data::Batch& b = micro_batches[a];
    at::Tensor loss;
    PEFT_RETURN_IF_ERROR(status_from_torch_error("training step", [&] {
      AutocastScope ac(o.bf16, b.input_ids.device().type());
      const PerSampleLoss ps = causal_lm_loss(pm.model(), b.input_ids, b.labels, o.fused_loss);
      const ReweightedLoss r =
          reweighted_loss(o.reweight, ps.loss, ps.token_counts, step, ctx.group, result.tokens, o.grad_accum);
      if (o.reweight.strategy != ReweightStrategy::kUniform && a == o.grad_accum - 1) {
        result.weights = weight_stats(r.global_weights);
      }
      loss = r.loss;
      at::Tensor aux = pm.aux_loss();
      if (aux.numel() > 0) loss = loss + aux.to(loss.scalar_type()) / static_cast<double>(o.grad_accum);
      // A non-finite loss still back-propagates: its NaN gradients reach
      // every rank through the all-reduce, so all ranks skip together.
      loss.backward();
    }));
    const double lv = loss.item<double>();
    if (!std::isfinite(lv)) finite = false;
    step_loss += lv;
  }
  {
    std::vector<at::Tensor> grads;
    for (const at::Tensor& p : ctx.params) {
      if (!p.grad().defined()) p.mutable_grad() = at::zeros_like(p);
      grads.push_back(p.grad());
    }
    // The logged loss is the global batch's (each rank holds its share),
    // and a stop signal seen by any rank stops every rank after this step.
    const at::Device device = ctx.params.empty() ? at::Device(at::kCPU) : ctx.params.front().device();
    grads.push_back(at::tensor({step_loss, StopSignals::pending() != 0 ? 1.0 : 0.0}, at::kDouble).to(device));
    if (ctx.pg != nullptr) PEFT_RETURN_IF_ERROR(ctx.pg->all_reduce_mean_(grads));
    const at::Tensor shared = grads.back().cpu();
    result.loss = shared[0].item<double>();
    result.stop_requested = shared[1].item<double>() > 0;
  }
  // The decision to skip rests on the all-reduced gradients alone, so that
  // every rank makes the same one.
  result.grad_norm = torch::nn::utils::clip_grad_norm_(ctx.params, o.max_grad_norm > 0 ? o.max_grad_norm : 1e30);
  result.applied = std::isfinite(result.grad_norm) && (world > 1 || finite);
  if (!result.applied) {
    ctx.optimizer.zero_grad();
  } else {
    PEFT_RETURN_IF_ERROR(status_from_torch_error(
        "regulariser", [&] { sorsa_regularizer_step_(pm, proto::SorsaOptions::OFFICIAL, o.peak_lr, o.grad_accum); }));
    ctx.optimizer.step();
    PEFT_RETURN_IF_ERROR(status_from_torch_error(
        "regulariser", [&] { sorsa_regularizer_step_(pm, proto::SorsaOptions::DECOUPLED, o.peak_lr, o.grad_accum); }));
  }
  // Evaluation between steps sees the schedule of the next step.
  pm.on_step(schedule_step(step + 1));
  return result;
}

}  // namespace peft::trainers
