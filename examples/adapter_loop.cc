#include "examples/adapter_loop.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "data/dataset.h"
#include "peft/core/status.h"
#include "trainers/train_step.h"

namespace peft::examples {
namespace {

// [B, T+1] windows starting at the given offsets.
at::Tensor windows(const std::vector<int64_t>& tokens, const std::vector<int64_t>& starts, int64_t len) {
  std::vector<int64_t> flat;
  for (int64_t s : starts) flat.insert(flat.end(), tokens.begin() + s, tokens.begin() + s + len + 1);
  return at::tensor(flat, at::kLong).view({static_cast<int64_t>(starts.size()), len + 1});
}

at::Tensor next_token_loss(models::CausalLm& lm, const at::Tensor& window) {
  const int64_t t = window.size(1) - 1;
  at::Tensor logits = lm.forward(window.narrow(1, 0, t), nullptr);  // [B, T, V]
  at::Tensor logp = at::log_softmax(logits.to(at::kFloat), -1);
  return at::nll_loss(logp.reshape({-1, logp.size(-1)}), window.narrow(1, 1, t).reshape({-1}));
}

}  // namespace

double mean_nll(PeftModel& pm, const at::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const bool was_training = pm.model().module().is_training();
  pm.model().module().eval();
  const double loss = next_token_loss(pm.model(), ids).item<double>();
  pm.model().module().train(was_training);
  return loss;
}

absl::StatusOr<LoopResult> train_adapter(PeftModel& pm, const std::vector<int64_t>& tokens, const LoopOptions& o) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t split = n * 8 / 10;
  if (split < o.seq_len + 2 || n - split < o.seq_len + 2) {
    return absl::InvalidArgumentError(absl::StrCat("need more tokens: ", n, " for windows of ", o.seq_len));
  }
  pm.freeze_base_();
  std::vector<at::Tensor> params;
  for (auto& [name, p] : pm.trainable_parameters()) params.push_back(p);
  if (params.empty()) return absl::FailedPreconditionError("no trainable parameters: add an adapter first");
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(o.lr).weight_decay(0.0));

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(o.seed);
  std::vector<int64_t> eval_starts;
  for (int64_t b = 0; b < o.batch; ++b) eval_starts.push_back(split + (b * (n - split - o.seq_len - 1)) / o.batch);
  const at::Tensor eval_ids = windows(tokens, eval_starts, o.seq_len);

  LoopResult r;
  r.eval_loss_before = mean_nll(pm, eval_ids);
  pm.model().module().train();
  // The trainer's own step (trainers/train_step.h): task loss plus the
  // adapters' extra losses, clipping, SORSA's regulariser, schedules.
  trainers::StepOptions so;
  so.max_grad_norm = o.max_grad_norm;
  so.peak_lr = o.lr;
  trainers::StepContext ctx{pm, opt, params, /*pg=*/nullptr, trainers::DataParallelGroup()};
  for (int64_t step = 0; step < o.steps; ++step) {
    at::Tensor starts = at::randint(split - o.seq_len - 1, {o.batch}, gen, at::kLong);
    std::vector<int64_t> s(starts.data_ptr<int64_t>(), starts.data_ptr<int64_t>() + o.batch);
    const at::Tensor w = windows(tokens, s, o.seq_len);
    data::Batch b;
    b.input_ids = w.narrow(1, 0, o.seq_len).contiguous();
    b.labels = w.narrow(1, 1, o.seq_len).contiguous();
    b.tokens = b.global_tokens = o.batch * o.seq_len;
    PEFT_ASSIGN_OR_RETURN(const trainers::StepResult res, trainers::train_step(ctx, so, {b}, step, o.lr));
    r.train_losses.push_back(res.loss);
    if (o.on_step) o.on_step(step, res.loss);
  }
  r.eval_loss_after = mean_nll(pm, eval_ids);
  return r;
}

}  // namespace peft::examples
