//
// train() runs a recipe end to end: model and tokenizer, adapters (or full
// fine-tuning when the recipe has none), the data pipeline, AdamW with
// parameter groups (no weight decay on norms and biases), warm-up + schedule,
// gradient accumulation, bf16 autocast with fp32 master weights, loss-based
// sample reweighting, clipping, post-clip regularisers (SORSA), non-finite
// loss handling, periodic atomic checkpoints with exact resume, evaluation,
// metrics.jsonl, an SVG loss curve and a summary, on the CPU or on
// cuda:LOCAL_RANK (training.device). It is a function over small
// parts (data/dataset.h, trainers/reweighting.h, trainers/lr_schedule.h,
// trainers/checkpoint.h), not an object that owns them.
//
// Run directory layout: recipe.textproto (the effective recipe),
// metrics.jsonl, checkpoints/step-N/, adapter[_<name>]/ (Hugging Face PEFT
// layout), merged/ (with checkpoint.merge_on_finish) or model/ (full
// fine-tuning), both with the tokenizer files, loss.svg, summary.json.
//
// Lifecycle:
// - Everything is loaded and checked (model, tokenizer, data, adapters)
//   before the run directory is created: a recipe that cannot start writes
//   nothing (TrainOptions::dry_run stops right there).
// - A directory holding another run (checkpoints, or metrics/summary without
//   them) is refused unless resuming. Resuming continues from the newest
//   checkpoint (the last step is checkpointed too): a finished run is left as
//   it is, more training.steps train on, fewer are refused, and a changed
//   recipe is allowed but each changed field is logged. metrics.jsonl is cut
//   back to the checkpoint's step, so curves and summary cover the whole run.
// - SIGINT/SIGTERM (trainers/stop_signal.h) end the run after the current
//   step on every rank, with a checkpoint, as an AbortedError.
#ifndef PEFT_TRAINERS_TRAINER_H_
#define PEFT_TRAINERS_TRAINER_H_

#include <cmath>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "trainers/precision.h"
#include "trainers/proto/recipe.pb.h"

namespace peft::trainers {

struct TrainOptions {
  /// Continue from the newest checkpoint of the run directory.
  bool resume = false;
  /// Progress lines (stderr by default); a terminal gets a live bar instead.
  std::function<void(const std::string&)> log;
  /// Check the recipe end to end (model, tokenizer, data, adapters, resume
  /// state) and return before training, writing nothing.
  bool dry_run = false;
  /// Train even when the memory plan's expected peak exceeds the memory
  /// available, with a warning instead of the refusal. The plan errs on the
  /// high side (by up to about 15% for 0.5-1B models) and MemAvailable counts
  /// no swap, so a run just over the line may well fit.
  bool ignore_memory_plan = false;
  /// Matmul rates for training.precision AUTO/BF16 instead of measuring them
  /// (tests).
  std::optional<MatmulRates> matmul_rates;
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t resumed_from_step = 0;
  double first_train_loss = std::nan("");  // NaN (JSON null) when no step ran
  double final_train_loss = std::nan("");
  double initial_eval_loss = 0;
  double final_eval_loss = 0;
  double tokens_per_second = 0;
  int64_t trainable_parameters = 0;
  int64_t skipped_steps = 0;   // non-finite losses skipped
  bool bf16 = false;           // the step computed in bf16 (training.precision, AUTO resolved)
  double planned_peak_mb = 0;  // the memory plan's expected peak (trainers/memory_plan.h)
  std::string run_dir;
  int rank = 0;  // this process's data-parallel rank (0 writes the run directory)
};

/// Trains as `recipe` says (see the lifecycle above). Errors name the
/// problem; a stop signal returns AbortedError naming the checkpoint.
absl::StatusOr<TrainSummary> train(const proto::Recipe& recipe, const TrainOptions& options = {});

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_TRAINER_H_
