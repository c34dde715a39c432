#include "trainers/stop_signal.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace peft::trainers {
namespace {

static_assert(std::atomic<int>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free,
              "signal handlers need lock-free atomics");

std::atomic<int> g_first{0};
std::atomic<int> g_count{0};
std::atomic<int64_t> g_first_ns{0};
std::atomic<bool> g_announce{false};
std::atomic<bool> g_repeat_kills{false};
struct sigaction g_old_int, g_old_term;

int64_t monotonic_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

void write_stderr(const char* s) {
  ssize_t ignored = ::write(2, s, std::strlen(s));
  (void)ignored;
}

extern "C" void on_stop_signal(int sig) {
  const int saved_errno = errno;
  const int64_t now = monotonic_ns();
  int expected = 0;
  if (g_first.compare_exchange_strong(expected, sig)) {
    g_first_ns.store(now);
    g_count.store(1);
    if (g_announce.load()) {
      write_stderr(sig == SIGINT ? "\npeft: SIGINT: stopping after this step with a checkpoint (again to stop now)\n"
                                 : "\npeft: SIGTERM: stopping after this step with a checkpoint (again to stop now)\n");
    }
  } else {
    g_count.fetch_add(1);
    if (g_repeat_kills.load() && now - g_first_ns.load() >= 2000000000LL) {
      ::signal(sig, SIG_DFL);
      ::raise(sig);
    }
  }
  errno = saved_errno;
}

}  // namespace

StopSignals::StopSignals(bool announce, bool repeat_kills) {
  g_first.store(0);
  g_count.store(0);
  g_announce.store(announce);
  g_repeat_kills.store(repeat_kills);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, &g_old_int);
  ::sigaction(SIGTERM, &sa, &g_old_term);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGINT, &g_old_int, nullptr);
  ::sigaction(SIGTERM, &g_old_term, nullptr);
  g_first.store(0);
  g_count.store(0);
}

int StopSignals::pending() { return g_first.load(); }

int StopSignals::count() { return g_count.load(); }

std::string StopSignals::name(int sig) {
  if (sig == SIGINT) return "SIGINT";
  if (sig == SIGTERM) return "SIGTERM";
  return absl::StrCat("signal ", sig);
}

}  // namespace peft::trainers
