//
// Data-parallel plumbing over c10d: every rank holds a full model copy, runs
// forward/backward on its own shard of the batch, and the ranks average the
// gradients of the *trainable* (adapter) tensors before the optimizer step.
// There is no C++ DistributedDataParallel, so the trainer does it by hand:
//
//   PEFT_ASSIGN_OR_RETURN(DistributedEnv env, distributed_env_from_environ());
//   PEFT_ASSIGN_OR_RETURN(std::unique_ptr<ProcessGroup> pg,
//                         ProcessGroup::create(env, Backend::kGloo,
//                                              std::chrono::seconds(60)));
//   PEFT_RETURN_IF_ERROR(pg->broadcast_(trainable_params, /*root=*/0));
//   for (...) {
//     loss.backward();
//     PEFT_RETURN_IF_ERROR(pg->all_reduce_mean_(trainable_grads));
//     clip_grad_norm_(...);  // after the all-reduce, so all ranks agree
//     optimizer.step();
//   }
//
// Rank/world come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT); `launch_local` sets the same variables for N
// local processes (tests, `peft launch`). With WORLD_SIZE unset or 1 no store
// or socket is created and every collective is a local no-op.
//
// Failure model: every collective is bounded by the timeout given to
// `create`. A peer that dies (closed connection) or stalls turns into an
// absl::Status naming the peer ("peer rank 1 died or did not respond within
// 3 s ..."), so surviving ranks exit with a clear error instead of hanging.
// After a failed collective the group is unusable: later calls return
// FailedPrecondition at once (the ranks are out of step and cannot recover).
//
// Backends: Gloo (always built; it works on host memory, so CUDA tensors are
// staged through the CPU and the results copied back) and NCCL (CUDA tensors
// only, InvalidArgument otherwise; only when built against a CUDA LibTorch
// with USE_C10D_NCCL, else `create(..., Backend::kNccl, ...)` returns
// Unimplemented). Results land on the device of the tensors passed in. The
// LibTorch 1.13 / 2.x differences (ProcessGroup vs Backend base class) are
// hidden in distributed.cc; this header includes no c10d header.
//
// Threading: a ProcessGroup is not thread-safe; call its collectives from one
// thread, in the same order on every rank.
#ifndef PEFT_TRAINERS_DISTRIBUTED_H_
#define PEFT_TRAINERS_DISTRIBUTED_H_

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace peft::trainers {

/// Where this process sits in the job. Defaults describe a single process;
/// usually built by `distributed_env_from_environ()`, in tests by hand:
///
///   DistributedEnv env;
///   env.rank = 1;
///   env.world_size = 2;
///   env.master_port = 29512;
struct DistributedEnv {
  int rank = 0;                           // global rank in [0, world_size)
  int world_size = 1;                     // number of processes in the job
  int local_rank = 0;                     // rank on this node: selects cuda:<local_rank> for NCCL
  bool local_rank_given = false;          // LOCAL_RANK was set; else local_rank = rank
  std::string master_addr = "127.0.0.1";  // host of rank 0's TCPStore
  int master_port = 29500;                // port of rank 0's TCPStore

  /// OK when world_size >= 1, 0 <= rank < world_size, local_rank >= 0,
  /// master_addr non-empty and master_port in [1, 65535].
  absl::Status validate() const;
};

/// Parses torchrun's variables from `vars` (name -> value; a missing name is
/// unset). Unset WORLD_SIZE means 1; unset RANK means 0 (an error when
/// WORLD_SIZE > 1); unset LOCAL_RANK means RANK (single node; the trainer
/// then takes cuda:<RANK mod GPUs>, which also suits one process per
/// Kubernetes pod); unset MASTER_ADDR/MASTER_PORT keep the defaults above.
/// Malformed values give InvalidArgument naming the variable and the value,
/// e.g. "RANK='x1' is not an integer".
///
/// Slurm's own variables (SLURM_PROCID, SLURM_NTASKS) are deliberately not
/// read: a batch script's shell has them too (SLURM_PROCID=0, SLURM_NTASKS=N),
/// and a single `peft train` there would wait for N-1 peers. Under Slurm run
/// torchrun inside srun, or map them explicitly (README, "Data parallel").
absl::StatusOr<DistributedEnv> parse_distributed_env(const std::map<std::string, std::string>& vars);

/// `parse_distributed_env` over this process's environment (getenv).
absl::StatusOr<DistributedEnv> distributed_env_from_environ();

/// c10d backend. kGloo works on CPU tensors, kNccl on CUDA tensors.
enum class Backend { kGloo, kNccl };

/// An initialised c10d process group (RAII: destroying it closes the
/// connections; rank 0 also owns the TCPStore server).
class ProcessGroup final {
 public:
  /// Rendezvous through a TCPStore at env.master_addr:env.master_port (rank 0
  /// serves it) and connect all ranks. Blocks until every rank has joined or
  /// `rendezvous_timeout` (default: `timeout`) passes, then fails with
  /// DeadlineExceeded/Unavailable naming the address and how many ranks
  /// joined. Ranks start at different times (loading LibTorch alone takes
  /// ~1 s), so give the rendezvous more slack than a short collective
  /// timeout. `timeout` bounds every later collective. With world_size 1
  /// nothing is created and this returns at once.
  ///
  /// Gloo binds to env.master_addr when that is a loopback address (the
  /// single-node case), else to the address this host's name resolves to
  /// (c10d's createDefaultDevice, the multi-node case).
  static absl::StatusOr<std::unique_ptr<ProcessGroup>> create(
      const DistributedEnv& env, Backend backend, std::chrono::milliseconds timeout,
      std::optional<std::chrono::milliseconds> rendezvous_timeout = std::nullopt);

  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  Backend backend() const { return backend_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

  /// Overwrites each tensor in `grads` with its mean over all ranks.
  /// The tensors are flattened into ONE buffer (one collective per call, not
  /// one per tensor), summed (Gloo has no AVG), divided by world_size and
  /// copied back. Pass only the tensors to sync (the trainable gradients).
  /// Every rank must pass the same number of tensors with the same shapes,
  /// in the same order. All tensors must be defined, floating point and on one
  /// device (InvalidArgument otherwise). Mixed dtypes are fine: there is one
  /// buffer per dtype. On Gloo, bf16/fp16 are summed in fp32.
  absl::Status all_reduce_mean_(std::vector<at::Tensor>& grads);

  /// Concatenates every rank's 1-D `local` in rank order: [world_size * N].
  /// Lengths are exchanged first, so ranks passing different N get
  /// InvalidArgument on every rank instead of a silent mismatch.
  absl::StatusOr<at::Tensor> all_gather(const at::Tensor& local);

  /// Overwrites `tensors` on every rank except `root` with root's values
  /// (e.g. the initial adapter weights). Same shape/order/dtype rules as
  /// all_reduce_mean_ (any dtype; one buffer per dtype). Root's tensors are
  /// not written.
  absl::Status broadcast_(std::vector<at::Tensor>& tensors, int root);

  /// Returns once every rank has reached the barrier.
  absl::Status barrier();

 private:
  // The c10d store and group plus the "broken" state; defined in the .cc so
  // that this header stays free of c10d (and of its 1.13/2.x differences).
  struct Impl;
  ProcessGroup(const DistributedEnv& env, Backend backend, std::chrono::milliseconds timeout,
               std::unique_ptr<Impl> impl);

  const DistributedEnv env_;
  const Backend backend_;
  const std::chrono::milliseconds timeout_;
  std::unique_ptr<Impl> impl_;  // null when world_size == 1
};

/// Starts `nproc` copies of `argv` (argv[0] is looked up on PATH unless it
/// contains '/') with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
/// MASTER_ADDR=127.0.0.1 and MASTER_PORT=`master_port` set on top of this
/// process's environment, and waits for all of them. When a child fails
/// (non-zero exit or signal) the others get `grace` to exit on their own,
/// then SIGTERM and, 2 s later, SIGKILL. Returns OK only if every child
/// exited 0; otherwise Internal listing each failed or killed rank.
absl::Status launch_local(int nproc, const std::vector<std::string>& argv, int master_port,
                          std::chrono::milliseconds grace = std::chrono::seconds(10));

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_DISTRIBUTED_H_
