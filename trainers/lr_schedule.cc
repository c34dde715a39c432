#include "trainers/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"

namespace peft::trainers {
namespace {

constexpr double kPi = 3.14159265358979323846;

absl::Status unit_interval(const char* field, double value) {
  if (value >= 0 && value <= 1) return absl::OkStatus();  // also rejects NaN
  return absl::InvalidArgumentError(absl::StrCat("ScheduleOptions.", field, " must be in [0, 1], got ", value));
}

}  // namespace

absl::Status ScheduleOptions::validate() const {
  if (!(std::isfinite(peak_lr) && peak_lr > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ScheduleOptions.peak_lr must be finite and > 0, got ", peak_lr));
  }
  if (warmup_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ScheduleOptions.warmup_steps must be >= 0, got ", warmup_steps));
  }
  if (total_steps < warmup_steps) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScheduleOptions.total_steps (", total_steps, ") must be >= warmup_steps (", warmup_steps, ")"));
  }
  if (decay != LrDecay::kCosine && decay != LrDecay::kLinear && decay != LrDecay::kConstant) {
    return absl::InvalidArgumentError(
        absl::StrCat("ScheduleOptions.decay has unknown value ", static_cast<int>(decay)));
  }
  PEFT_RETURN_IF_ERROR(unit_interval("min_lr_ratio", min_lr_ratio));
  return unit_interval("warmup_start_factor", warmup_start_factor);
}

double learning_rate(const ScheduleOptions& o, int64_t step) {
  const double peak = o.peak_lr;
  const double floor = o.min_lr_ratio * peak;
  step = std::max<int64_t>(step, 0);
  if (step >= o.total_steps) return o.decay == LrDecay::kConstant ? peak : floor;
  if (step < o.warmup_steps) {
    const double frac = static_cast<double>(step) / static_cast<double>(o.warmup_steps);
    return peak * (o.warmup_start_factor + (1.0 - o.warmup_start_factor) * frac);
  }
  // Here warmup_steps <= step < total_steps, so the denominator is >= 1.
  const double p = static_cast<double>(step - o.warmup_steps) / static_cast<double>(o.total_steps - o.warmup_steps);
  switch (o.decay) {
    case LrDecay::kCosine: return floor + (peak - floor) * 0.5 * (1.0 + std::cos(kPi * p));
    case LrDecay::kLinear: return peak - (peak - floor) * p;
    case LrDecay::kConstant: return peak;
  }
  return peak;  // unreachable for validated options
}

}  // namespace peft::trainers
