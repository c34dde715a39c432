//
// Learning-rate schedules as pure functions of the optimizer step: a linear
// warm-up followed by a cosine decay, a linear decay or a constant rate. No
// state, no optimizer: the trainer asks for the rate of each step and writes
// it into the optimizer's parameter groups, so resuming at step k needs only k.
//
// With s0 = warmup_start_factor, W = warmup_steps, S = total_steps,
// P = peak_lr and m = min_lr_ratio·P, the rate for step t (0-based: the step
// that performs update number t + 1) is
//
//   t < W (warm-up):  P·(s0 + (1 − s0)·t/W)           (P·s0 at t = 0, → P)
//   W ≤ t < S:        p = (t − W)/(S − W) ∈ [0, 1)
//                     kCosine:   m + (P − m)·(1 + cos(π·p))/2
//                     kLinear:   P − (P − m)·p
//                     kConstant: P
//   t ≥ S (clamped):  the end value: m for kCosine/kLinear, P for kConstant
//
// The warm-up is the Hugging Face `get_*_schedule_with_warmup` convention
// (rate 0 at step 0 unless s0 > 0). The cosine-to-a-floor shape is the one
// the reweighting paper's GPT-2 runs use (Sow et al., "Dynamic Loss-Based
// Sample Reweighting for Improved Large Language Model Pretraining",
// ICLR 2025, arXiv 2502.06733; docs/methods.md §8: 500 warm-up steps, cosine from
// 5e-4 to 1e-4, i.e. min_lr_ratio = 0.2).
//
//   ScheduleOptions o;
//   o.peak_lr = 5e-4;
//   o.warmup_steps = 500;
//   o.total_steps = 20000;
//   o.min_lr_ratio = 0.2;  // kCosine by default
//   PEFT_RETURN_IF_ERROR(o.validate());
//   for (int64_t step = 0; step < o.total_steps; ++step) {
//     const double lr = learning_rate(o, step);
//     ...
//   }
#ifndef PEFT_TRAINERS_LR_SCHEDULE_H_
#define PEFT_TRAINERS_LR_SCHEDULE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace peft::trainers {

/// What follows the warm-up (recipe.proto `ScheduleConfig.Kind`).
enum class LrDecay {
  kCosine,    ///< half-cosine from peak_lr down to min_lr_ratio·peak_lr at total_steps
  kLinear,    ///< straight line from peak_lr down to min_lr_ratio·peak_lr at total_steps
  kConstant,  ///< peak_lr for every step after the warm-up
};

/// Options of a schedule. peak_lr and total_steps are required (no useful
/// default); the rest default to "no warm-up, cosine to zero".
struct ScheduleOptions {
  double peak_lr = 0;        ///< rate at the end of the warm-up; > 0
  int64_t total_steps = 0;   ///< S: optimizer steps of the run; ≥ warmup_steps
  int64_t warmup_steps = 0;  ///< W ≥ 0; 0 = start at peak_lr
  LrDecay decay = LrDecay::kCosine;
  double min_lr_ratio = 0;         ///< floor of the decay as a fraction of peak_lr, in [0, 1]
  double warmup_start_factor = 0;  ///< rate at step 0 as a fraction of peak_lr, in [0, 1]

  /// OK, or InvalidArgument naming the first bad field and its value:
  /// non-finite or non-positive peak_lr, negative step counts, total_steps <
  /// warmup_steps, ratios outside [0, 1], an unknown decay value.
  absl::Status validate() const;
};

/// The learning rate for optimizer step `step` (0-based), per the formulas
/// in the file comment. A pure function: same inputs, same output, no state.
/// Steps at or past total_steps return the end value; a negative step is
/// treated as 0. Precondition: `options.validate()` is OK (otherwise the
/// result is unspecified, though never a crash).
double learning_rate(const ScheduleOptions& options, int64_t step);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_LR_SCHEDULE_H_
