// Learning-rate schedules (trainers/lr_schedule.h) against hand-computed
// values at the boundaries and midpoints of each phase, for cosine, linear
// and constant decay, with and without a warm-up start factor; plus the
// option checks.
#include "trainers/lr_schedule.h"

#include <cmath>

#include <gtest/gtest.h>

namespace peft::trainers {
namespace {

constexpr double kTol = 1e-12;
constexpr double kPi = 3.14159265358979323846;

// peak 2, floor 0.2 (ratio 0.1), warm-up 10 steps, decay over steps 10..110.
ScheduleOptions base(LrDecay decay) {
  ScheduleOptions o;
  o.peak_lr = 2.0;
  o.warmup_steps = 10;
  o.total_steps = 110;
  o.min_lr_ratio = 0.1;
  o.decay = decay;
  return o;
}

TEST(LrScheduleTest, WarmupIsLinearFromZero) {
  for (LrDecay d : {LrDecay::kCosine, LrDecay::kLinear, LrDecay::kConstant}) {
    const ScheduleOptions o = base(d);
    ASSERT_TRUE(o.validate().ok());
    EXPECT_NEAR(learning_rate(o, 0), 0.0, kTol);
    EXPECT_NEAR(learning_rate(o, 1), 0.2, kTol);
    EXPECT_NEAR(learning_rate(o, 5), 1.0, kTol);
    EXPECT_NEAR(learning_rate(o, 9), 1.8, kTol);
    EXPECT_NEAR(learning_rate(o, 10), 2.0, kTol);  // peak exactly at the end of the warm-up
  }
}

TEST(LrScheduleTest, WarmupStartFactor) {
  ScheduleOptions o = base(LrDecay::kCosine);
  o.warmup_start_factor = 0.1;
  ASSERT_TRUE(o.validate().ok());
  EXPECT_NEAR(learning_rate(o, 0), 0.2, kTol);
  EXPECT_NEAR(learning_rate(o, 5), 0.2 + 1.8 * 0.5, kTol);
  EXPECT_NEAR(learning_rate(o, 10), 2.0, kTol);
}

TEST(LrScheduleTest, Cosine) {
  const ScheduleOptions o = base(LrDecay::kCosine);
  EXPECT_NEAR(learning_rate(o, 10), 2.0, kTol);
  EXPECT_NEAR(learning_rate(o, 35), 0.2 + 1.8 * 0.5 * (1 + std::cos(kPi / 4)), kTol);  // p = 1/4: 1.736396…
  EXPECT_NEAR(learning_rate(o, 60), 1.1, kTol);                                        // p = 1/2: midway
  EXPECT_NEAR(learning_rate(o, 85), 0.2 + 1.8 * 0.5 * (1 - std::cos(kPi / 4)), kTol);  // p = 3/4
  EXPECT_NEAR(learning_rate(o, 109), 0.2 + 1.8 * 0.5 * (1 + std::cos(kPi * 0.99)), kTol);
  EXPECT_NEAR(learning_rate(o, 110), 0.2, kTol);
  EXPECT_NEAR(learning_rate(o, 1000), 0.2, kTol);  // clamped past the end
}

TEST(LrScheduleTest, Linear) {
  const ScheduleOptions o = base(LrDecay::kLinear);
  EXPECT_NEAR(learning_rate(o, 10), 2.0, kTol);
  EXPECT_NEAR(learning_rate(o, 35), 1.55, kTol);
  EXPECT_NEAR(learning_rate(o, 60), 1.1, kTol);
  EXPECT_NEAR(learning_rate(o, 85), 0.65, kTol);
  EXPECT_NEAR(learning_rate(o, 110), 0.2, kTol);
  EXPECT_NEAR(learning_rate(o, 111), 0.2, kTol);
}

TEST(LrScheduleTest, Constant) {
  const ScheduleOptions o = base(LrDecay::kConstant);
  for (int64_t step : {10, 35, 60, 109, 110, 5000}) EXPECT_NEAR(learning_rate(o, step), 2.0, kTol) << step;
}

TEST(LrScheduleTest, CosineToZeroWithoutWarmup) {
  ScheduleOptions o;
  o.peak_lr = 1e-3;
  o.total_steps = 4;
  ASSERT_TRUE(o.validate().ok());
  EXPECT_NEAR(learning_rate(o, 0), 1e-3, kTol);  // no warm-up: start at the peak
  EXPECT_NEAR(learning_rate(o, 1), 1e-3 * 0.5 * (1 + std::cos(kPi / 4)), kTol);
  EXPECT_NEAR(learning_rate(o, 2), 0.5e-3, kTol);
  EXPECT_NEAR(learning_rate(o, 4), 0.0, kTol);
  EXPECT_NEAR(learning_rate(o, -3), 1e-3, kTol);  // negative step = step 0
}

TEST(LrScheduleTest, PaperGpt2Schedule) {
  // docs/methods.md §8: 500 warm-up steps, cosine from 5e-4 to 1e-4 over 20k steps.
  ScheduleOptions o;
  o.peak_lr = 5e-4;
  o.warmup_steps = 500;
  o.total_steps = 20000;
  o.min_lr_ratio = 0.2;
  ASSERT_TRUE(o.validate().ok());
  EXPECT_NEAR(learning_rate(o, 250), 2.5e-4, kTol);
  EXPECT_NEAR(learning_rate(o, 500), 5e-4, kTol);
  EXPECT_NEAR(learning_rate(o, 10250), 3e-4, kTol);
  EXPECT_NEAR(learning_rate(o, 20000), 1e-4, kTol);
}

TEST(LrScheduleTest, WarmupEqualToTotal) {
  ScheduleOptions o = base(LrDecay::kCosine);
  o.total_steps = o.warmup_steps;
  ASSERT_TRUE(o.validate().ok());
  EXPECT_NEAR(learning_rate(o, 5), 1.0, kTol);
  EXPECT_NEAR(learning_rate(o, 10), 0.2, kTol);  // the end value once the run is over
}

TEST(LrScheduleTest, Monotone) {
  for (LrDecay d : {LrDecay::kCosine, LrDecay::kLinear, LrDecay::kConstant}) {
    const ScheduleOptions o = base(d);
    for (int64_t s = 0; s < 10; ++s) EXPECT_LT(learning_rate(o, s), learning_rate(o, s + 1));
    for (int64_t s = 10; s < 120; ++s) EXPECT_GE(learning_rate(o, s), learning_rate(o, s + 1));
  }
}

TEST(LrScheduleTest, ValidateRejectsBadOptions) {
  const ScheduleOptions good = base(LrDecay::kCosine);
  ASSERT_TRUE(good.validate().ok());
  auto expect_bad = [](ScheduleOptions o, const char* field) {
    const absl::Status s = o.validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), absl::string_view::npos) << s.message();
  };
  ScheduleOptions o = good;
  o.total_steps = 9;
  expect_bad(o, "total_steps");
  o = good;
  o.warmup_steps = -1;
  expect_bad(o, "warmup_steps");
  o = good;
  o.peak_lr = 0;
  expect_bad(o, "peak_lr");
  o = good;
  o.peak_lr = -1e-3;
  expect_bad(o, "peak_lr");
  o = good;
  o.peak_lr = std::nan("");
  expect_bad(o, "peak_lr");
  o = good;
  o.min_lr_ratio = -0.1;
  expect_bad(o, "min_lr_ratio");
  o = good;
  o.min_lr_ratio = 1.5;
  expect_bad(o, "min_lr_ratio");
  o = good;
  o.warmup_start_factor = -1;
  expect_bad(o, "warmup_start_factor");
  o = good;
  o.decay = static_cast<LrDecay>(7);
  expect_bad(o, "decay");
  EXPECT_TRUE(ScheduleOptions().validate().code() == absl::StatusCode::kInvalidArgument);  // peak_lr is required
}

}  // namespace
}  // namespace peft::trainers
