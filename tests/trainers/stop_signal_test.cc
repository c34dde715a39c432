// StopSignals: the first SIGINT/SIGTERM is only recorded, a quick second one
// does not kill, and the previous handlers come back afterwards.
#include "trainers/stop_signal.h"

#include <signal.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace peft::trainers {
namespace {

void (*current_handler(int sig))(int) {
  struct sigaction sa;
  sigaction(sig, nullptr, &sa);
  return sa.sa_handler;
}

TEST(StopSignalsTest, RecordsTheFirstSignalAndRestoresTheHandlers) {
  ASSERT_EQ(current_handler(SIGTERM), SIG_DFL);
  {
    StopSignals guard(/*announce=*/false, /*repeat_kills=*/true);
    EXPECT_EQ(StopSignals::pending(), 0);
    EXPECT_NE(current_handler(SIGTERM), SIG_DFL);
    raise(SIGTERM);  // would end the process without the guard
    EXPECT_EQ(StopSignals::pending(), SIGTERM);
    EXPECT_EQ(StopSignals::count(), 1);
    // A second signal within 2 s is counted, not fatal.
    raise(SIGINT);
    EXPECT_EQ(StopSignals::pending(), SIGTERM);
    EXPECT_EQ(StopSignals::count(), 2);
  }
  EXPECT_EQ(current_handler(SIGTERM), SIG_DFL);
  EXPECT_EQ(current_handler(SIGINT), SIG_DFL);
  EXPECT_EQ(StopSignals::pending(), 0);
  // A new guard starts clean.
  StopSignals again(false, false);
  EXPECT_EQ(StopSignals::pending(), 0);
  raise(SIGINT);
  EXPECT_EQ(StopSignals::pending(), SIGINT);
}

TEST(StopSignalsTest, Names) {
  EXPECT_EQ(StopSignals::name(SIGTERM), "SIGTERM");
  EXPECT_EQ(StopSignals::name(SIGINT), "SIGINT");
  EXPECT_EQ(StopSignals::name(SIGHUP), "signal 1");
}

TEST(StopSignalsDeathTest, ASecondSignalLaterEndsTheProcess) {
  EXPECT_EXIT(
      {
        StopSignals guard(false, /*repeat_kills=*/true);
        raise(SIGTERM);
        usleep(2200 * 1000);
        raise(SIGTERM);
        _exit(0);  // not reached
      },
      ::testing::KilledBySignal(SIGTERM), "");
}

}  // namespace
}  // namespace peft::trainers
