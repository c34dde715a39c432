// The progress line's bar and clock.
#include "trainers/progress.h"

#include <limits>

#include <gtest/gtest.h>

namespace peft::trainers {
namespace {

TEST(ProgressTest, ClockText) {
  EXPECT_EQ(clock_text(0), "00:00");
  EXPECT_EQ(clock_text(59.9), "00:59");
  EXPECT_EQ(clock_text(61), "01:01");
  EXPECT_EQ(clock_text(3599), "59:59");
  EXPECT_EQ(clock_text(3600), "1:00:00");
  EXPECT_EQ(clock_text(36000 + 62), "10:01:02");
  EXPECT_EQ(clock_text(-5), "00:00");
  EXPECT_EQ(clock_text(std::numeric_limits<double>::quiet_NaN()), "00:00");
  EXPECT_EQ(clock_text(std::numeric_limits<double>::infinity()), "00:00");
}

TEST(ProgressTest, ProgressBar) {
  EXPECT_EQ(progress_bar(0, 600), "[                    ]   0%");
  EXPECT_EQ(progress_bar(270, 600), "[========>           ]  45%");
  EXPECT_EQ(progress_bar(599, 600), "[==================> ]  99%");
  EXPECT_EQ(progress_bar(600, 600), "[====================] 100%");
  EXPECT_EQ(progress_bar(700, 600), "[====================] 100%");
  EXPECT_EQ(progress_bar(1, 0), "[====================] 100%");
}

}  // namespace
}  // namespace peft::trainers
