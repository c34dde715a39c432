//
// A minimal custom training loop over the library's pieces, for users who
// drive fine-tuning from their own C++ code rather than the recipe trainer:
// PeftModel (inject + freeze), torch::optim::AdamW over the trainable
// tensors, and the trainer's own optimizer step (trainers/train_step.h:
// next-token cross-entropy plus the adapters' extra losses, gradient
// clipping, SORSA's regulariser, per-step schedules such as HSM's).
//
//   PeftModel pm(lm);
//   PEFT_RETURN_IF_ERROR(pm.add_adapter(config));
//   LoopOptions opts;            // steps, lr, batch, seq_len, seed
//   PEFT_ASSIGN_OR_RETURN(LoopResult r, train_adapter(pm, token_ids, opts));
#ifndef PEFT_EXAMPLES_ADAPTER_LOOP_H_
#define PEFT_EXAMPLES_ADAPTER_LOOP_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "peft/peft_model.h"

namespace peft::examples {

struct LoopOptions {
  int64_t steps = 40;
  double lr = 1e-2;
  int64_t batch = 4;
  int64_t seq_len = 64;
  double max_grad_norm = 1.0;
  uint64_t seed = 0;
  /// Called after every step with (step, training loss incl. extra losses).
  std::function<void(int64_t, double)> on_step;
};

struct LoopResult {
  double eval_loss_before = 0;  // mean next-token NLL on a fixed held-out batch
  double eval_loss_after = 0;
  std::vector<double> train_losses;
};

/// Trains the active adapters of `pm` on windows of `tokens` (one long token
/// stream; the last 20% is held out for the before/after evaluation).
absl::StatusOr<LoopResult> train_adapter(PeftModel& pm, const std::vector<int64_t>& tokens, const LoopOptions& options);

/// Mean next-token NLL of `pm.model()` on ids [B, T] (no gradient).
double mean_nll(PeftModel& pm, const at::Tensor& ids);

}  // namespace peft::examples

#endif  // PEFT_EXAMPLES_ADAPTER_LOOP_H_
