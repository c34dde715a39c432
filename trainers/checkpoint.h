// File: trainers/checkpoint.h
//
// Training checkpoints for exact resume: the trainable tensors, the optimizer
// state, the step, the data position and the CPU RNG state, written into
// `<run>/checkpoints/step-00000050/` through a temporary directory and a
// rename (a crash never leaves a half-written checkpoint), keeping the last K.
//
//   PEFT_RETURN_IF_ERROR(save_training_state(run_dir, state, optimizer, keep_last));
//   PEFT_ASSIGN_OR_RETURN(std::optional<std::string> dir, latest_checkpoint(run_dir));
//   if (dir) PEFT_RETURN_IF_ERROR(load_training_state(*dir, &state, &optimizer));
#ifndef PEFT_TRAINERS_CHECKPOINT_H_
#define PEFT_TRAINERS_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace peft::trainers {

/// What a checkpoint restores besides the optimizer.
struct TrainingState {
  int64_t step = 0;        // optimizer steps completed
  int64_t data_epoch = 0;  // the data loader's position
  int64_t data_index = 0;
  /// Named trainable tensors (their values are saved; on load they are
  /// copied into these same tensors, matched by name and shape).
  std::vector<std::pair<std::string, at::Tensor>> trainable;
};

/// Writes step-<step> under `run_dir/checkpoints` and removes all but the
/// newest `keep_last` checkpoints.
absl::Status save_training_state(const std::string& run_dir, const TrainingState& state,
                                 torch::optim::Optimizer& optimizer, int keep_last);

/// The newest complete checkpoint directory of `run_dir`, if any.
absl::StatusOr<std::optional<std::string>> latest_checkpoint(const std::string& run_dir);

/// Restores `state` (step, data position, tensor values), the optimizer and
/// the global CPU RNG from `checkpoint_dir`. Names and shapes must match.
absl::Status load_training_state(const std::string& checkpoint_dir, TrainingState* state,
                                 torch::optim::Optimizer& optimizer);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_CHECKPOINT_H_
