//
// Training checkpoints for exact resume: the trainable tensors, the optimizer
// state, the step, the data position and the RNG states of every rank (the
// CPU generator and, when training on CUDA, the training device's), written
// into `<run>/checkpoints/step-00000050/` through a temporary directory and a
// rename (a crash never leaves a half-written checkpoint), keeping the last K.
// One process (rank 0) writes; the caller gathers the other ranks' RNG
// states into TrainingState::rng first, so no rank ever writes into the
// directory of another.
//
//   state.rng = every_ranks_states;  // e.g. capture_rng_state(device) per rank, gathered
//   PEFT_RETURN_IF_ERROR(save_training_state(run_dir, state, optimizer, keep_last));
//   PEFT_ASSIGN_OR_RETURN(std::optional<std::string> dir, latest_checkpoint(run_dir));
//   if (dir) PEFT_RETURN_IF_ERROR(load_training_state(*dir, &state, optimizer, rank, device));
#ifndef PEFT_TRAINERS_CHECKPOINT_H_
#define PEFT_TRAINERS_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "peft/core/rng_state.h"  // RngState, capture_rng_state, restore_rng_state

namespace torch::optim {
class Optimizer;
}  // namespace torch::optim

namespace peft::trainers {

/// What a checkpoint restores besides the optimizer.
struct TrainingState {
  int64_t step = 0;        // optimizer steps completed
  int64_t data_epoch = 0;  // the data loader's position
  int64_t data_index = 0;
  /// Data-parallel ranks that wrote the checkpoint (0 when an older
  /// checkpoint does not say).
  int64_t world_size = 1;
  /// Named trainable tensors (their values are saved; on load they are
  /// copied into these same tensors, matched by name and shape).
  std::vector<std::pair<std::string, at::Tensor>> trainable;
  /// The generators of every rank (index = rank) for save_training_state;
  /// empty means this process's CPU generator as rank 0's (one process).
  std::vector<RngState> rng;
};

/// `run_dir/checkpoints/step-<step, 8 digits>`: where step `step`'s checkpoint goes.
std::string checkpoint_dir(const std::string& run_dir, int64_t step);

/// The step in a checkpoint directory's name (".../step-00000050" -> 50), or
/// -1 when the name is not of that form.
int64_t checkpoint_step(const std::string& checkpoint_dir);

/// Writes step-<step> under `run_dir/checkpoints` and removes all but the
/// newest `keep_last` checkpoints.
absl::Status save_training_state(const std::string& run_dir, const TrainingState& state,
                                 torch::optim::Optimizer& optimizer, int keep_last);

/// The newest complete checkpoint directory of `run_dir`, if any.
absl::StatusOr<std::optional<std::string>> latest_checkpoint(const std::string& run_dir);

/// The newest complete checkpoint directory of `run_dir` older than step
/// `before`, if any (what to fall back to when the newest is unreadable).
std::optional<std::string> previous_checkpoint(const std::string& run_dir, int64_t before);

/// Reads a checkpoint's state.json text (`source` names it in errors) into
/// `state`'s step, data position and world size; nothing else is touched.
/// load_training_state calls it before it reads any tensor.
absl::Status parse_training_state_json(const std::string& text, const std::string& source, TrainingState* state);

/// Restores `state` (step, data position, tensor values), the optimizer and
/// this process's generators from `checkpoint_dir`: those saved for `rank`
/// (the CPU one and, when `device` is CUDA and the checkpoint has it, the
/// device's). A checkpoint without states for `rank` (written by fewer ranks)
/// gives it rank 0's CPU state. Names and shapes must match.
absl::Status load_training_state(const std::string& checkpoint_dir, TrainingState* state,
                                 torch::optim::Optimizer& optimizer, int rank = 0,
                                 const c10::Device& device = c10::Device(c10::kCPU));

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_CHECKPOINT_H_
