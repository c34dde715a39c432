//
// Graceful stop on SIGINT/SIGTERM (Ctrl-C, `scancel`, a Kubernetes pod
// eviction, a preempted spot machine). While a StopSignals guard lives, the
// first such signal only records itself; the trainer sees it through
// `pending()` at the end of the current step, agrees on it with every rank
// (through the step's all-reduce), saves a checkpoint and returns, so that
// `--resume` continues with nothing lost. A second signal more than two
// seconds after the first ends the process at once (the usual default
// action), for a stop that must not wait for the step. `peft launch` forwards
// the first signal to its ranks as SIGTERM and SIGKILLs them on a second one.
//
// The handlers are process-wide: keep one guard alive at a time.
#ifndef PEFT_TRAINERS_STOP_SIGNAL_H_
#define PEFT_TRAINERS_STOP_SIGNAL_H_

#include <string>

namespace peft::trainers {

class StopSignals {
 public:
  /// Installs the handlers. `announce`: write one line to stderr when the
  /// first signal arrives (rank 0 only, so a job says it once).
  /// `repeat_kills`: a second signal (2 s or more after the first) restores
  /// the default action and re-raises it.
  StopSignals(bool announce, bool repeat_kills);
  /// Restores the handlers that were there before and forgets the signals.
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  /// 0, or the first stop signal received (SIGINT or SIGTERM).
  static int pending();
  /// How many stop signals arrived so far.
  static int count();
  /// "SIGTERM", "SIGINT", or "signal N".
  static std::string name(int sig);
};

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_STOP_SIGNAL_H_
