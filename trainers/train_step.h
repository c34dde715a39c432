//
// One optimizer step of the trainer, the only copy of it: `peft train`, the
// speed benchmark (trainers/perf_bench) and the custom-loop example call it,
// so the step that is measured is the step that users run.
//
//   for each micro-batch: forward under autocast, per-sample losses, the
//     (re)weighted loss (trainers/reweighting.h) plus the adapters' extra
//     losses / grad_accum, backward
//   all-reduce the gradients (mean over ranks) with the step loss and the
//     stop flag riding along
//   clip; a non-finite gradient skips the update (every rank alike)
//   SORSA OFFICIAL regulariser into .grad, optimizer step, SORSA DECOUPLED
//     regulariser as a plain step (peft/sorsa/regularizer_step.h)
//
// Stream adapters' schedules (HSM) are set before the forward: optimizer
// step `step` (0-based) runs with the official PAT trainer's counter,
// max(step − 1, 0) (docs/methods.md, PAT), so a resumed run continues the
// schedule exactly.
//
//   StepContext ctx{pm, optimizer, params, pg.get(), group};
//   const StepOptions so = step_options(recipe);
//   PEFT_ASSIGN_OR_RETURN(StepResult r, train_step(ctx, so, micro_batches, step, lr));
#ifndef PEFT_TRAINERS_TRAIN_STEP_H_
#define PEFT_TRAINERS_TRAIN_STEP_H_

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "data/dataset.h"
#include "peft/peft_model.h"
#include "trainers/proto/recipe.pb.h"
#include "trainers/reweighting.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace peft::trainers {

class ProcessGroup;

/// What the step needs from a recipe.
struct StepOptions {
  int64_t grad_accum = 1;
  bool bf16 = false;         ///< autocast to bf16 (fp32 master weights)
  double max_grad_norm = 0;  ///< ≤ 0: no clipping (the norm is still measured)
  double peak_lr = 1e-3;     ///< η₀ of SORSA's OFFICIAL regulariser (> 0)
  bool fused_loss = true;    ///< fused head + cross-entropy (trainers/loss.h)
  ReweightOptions reweight;
};

/// The recipe's optimizer, training and reweighting fields as StepOptions.
StepOptions step_options(const proto::Recipe& recipe);

/// The recipe's `reweighting` as ReweightOptions.
ReweightOptions reweight_options(const proto::Recipe& recipe);

/// The model, its optimizer and the data-parallel group the step runs in.
struct StepContext {
  PeftModel& pm;
  torch::optim::Optimizer& optimizer;
  std::vector<at::Tensor> params;  ///< the trainable parameters (clipped, all-reduced)
  ProcessGroup* pg = nullptr;      ///< null: one process
  DataParallelGroup group;         ///< for the reweighting's all-gather
};

struct StepResult {
  double loss = 0;              ///< the step's loss over the global batch (incl. extra losses)
  int64_t tokens = 0;           ///< loss tokens of the step over all ranks
  double grad_norm = 0;         ///< before clipping
  bool applied = true;          ///< false: non-finite loss or gradient, update skipped
  bool stop_requested = false;  ///< a stop signal reached some rank (trainers/stop_signal.h)
  WeightStats weights;          ///< the last micro-batch's weights (reweighting only)
};

/// Runs optimizer step `step` (0-based) on `micro_batches` (grad_accum of
/// them, on the training device) at learning rate `lr`. Collective: every
/// rank calls it with the same step. Errors: a torch error in the forward or
/// backward, a failed collective.
absl::StatusOr<StepResult> train_step(StepContext& ctx, const StepOptions& options,
                                      const std::vector<data::Batch>& micro_batches, int64_t step, double lr);

/// The HSM/PAT schedule counter of optimizer step `step` (0-based):
/// max(step − 1, 0), as the official trainer's step_placeholder.
int64_t schedule_step(int64_t step);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_TRAIN_STEP_H_
