// Tests for trainers/distributed.h. Multi-process cases re-execute this test
// binary through launch_local with --distributed_test_worker=<scenario>; each
// worker checks its own results and reports through its exit code, so a
// failing rank shows up as "rank r (pid p) exited with code 1" plus its
// stderr lines in the test log. Gloo on CPU, 2 ranks, a free localhost port.
#include "trainers/distributed.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace peft::trainers {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr char kWorkerFlag[] = "--distributed_test_worker=";

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Asks the kernel for a free TCP port on 127.0.0.1 (bind to port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, n) : std::string();
}

absl::Status launch_worker(const std::string& scenario, milliseconds grace = std::chrono::seconds(10)) {
  const int port = free_port();
  if (port == 0) return absl::InternalError("no free port");
  return launch_local(2, {self_exe(), absl::StrCat(kWorkerFlag, scenario)}, port, grace);
}

// ---- worker side (runs in the child processes) ------------------------------

// Records a failed expectation of a worker on stderr.
struct WorkerChecks {
  int rank = -1;
  int failures = 0;
  void expect(bool ok, const std::string& what) {
    if (ok) return;
    ++failures;
    std::fprintf(stderr, "[worker rank %d] FAILED: %s\n", rank, what.c_str());
  }
};

bool close_to(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         at::allclose(a.to(at::kDouble), b.to(at::kDouble), 1e-6, 1e-6);
}

int worker_collectives(ProcessGroup& pg, WorkerChecks& c) {
  const int r = pg.rank();
  const double w = pg.world_size();

  // Mixed dtypes (three buckets) and a non-contiguous view.
  at::Tensor base = at::arange(6, at::kFloat).reshape({2, 3});  // [2, 3]
  std::vector<at::Tensor> grads = {
      base * (r + 1),                                       // [2, 3] f32
      at::full({4}, 10.0 * r, at::kDouble),                 // [4] f64
      at::arange(6, at::kFloat).reshape({3, 2}).t() + r,    // [2, 3] view
      at::full({3}, static_cast<double>(r), at::kBFloat16)  // [3] bf16
  };
  c.expect(!grads[2].is_contiguous(), "test setup: view is contiguous");
  absl::Status s = pg.all_reduce_mean_(grads);
  c.expect(s.ok(), "all_reduce_mean_: " + s.ToString());
  c.expect(close_to(grads[0], base * ((w + 1) / 2)), "mean of grads[0]");
  c.expect(close_to(grads[1], at::full({4}, 10.0 * (w - 1) / 2, at::kDouble)), "mean of grads[1]");
  c.expect(close_to(grads[2], at::arange(6, at::kFloat).reshape({3, 2}).t() + (w - 1) / 2),
           "mean of grads[2] (non-contiguous)");
  c.expect(close_to(grads[3], at::full({3}, (w - 1) / 2, at::kBFloat16)), "mean of grads[3] (bf16)");

  // all_gather: rank order.
  absl::StatusOr<at::Tensor> gathered = pg.all_gather(at::arange(3, at::kFloat) + 100.0 * r);
  c.expect(gathered.ok(), "all_gather: " + gathered.status().ToString());
  if (gathered.ok()) {
    std::vector<at::Tensor> want;
    for (int k = 0; k < pg.world_size(); ++k) {
      want.push_back(at::arange(3, at::kFloat) + 100.0 * k);
    }
    c.expect(close_to(*gathered, at::cat(want)), "all_gather order");
  }
  // Different lengths are detected on every rank; the group stays usable.
  absl::StatusOr<at::Tensor> uneven = pg.all_gather(at::ones({r + 1}));
  c.expect(uneven.status().code() == absl::StatusCode::kInvalidArgument &&
               absl::StrContains(uneven.status().message(), "different lengths [1, 2]"),
           "uneven all_gather: " + uneven.status().ToString());

  // broadcast_ from the last rank, two dtypes.
  const int root = pg.world_size() - 1;
  std::vector<at::Tensor> params = {at::full({2, 2}, 1.0 * r, at::kFloat), at::full({3}, r + 5, at::kLong)};
  s = pg.broadcast_(params, root);
  c.expect(s.ok(), "broadcast_: " + s.ToString());
  c.expect(close_to(params[0], at::full({2, 2}, 1.0 * root, at::kFloat)) &&
               at::equal(params[1], at::full({3}, root + 5, at::kLong)),
           "broadcast_ values");
  s = pg.broadcast_(params, 7);
  c.expect(s.code() == absl::StatusCode::kInvalidArgument, "bad root");

  std::vector<at::Tensor> with_undefined = {at::ones({2}), at::Tensor()};
  s = pg.all_reduce_mean_(with_undefined);
  c.expect(s.code() == absl::StatusCode::kInvalidArgument, "undefined grad: " + s.ToString());

  s = pg.barrier();
  c.expect(s.ok(), "barrier: " + s.ToString());
  return c.failures == 0 ? 0 : 1;
}

// Rank 1 vanishes (no cleanup, like a crash); rank 0's collective must fail
// fast with a message naming rank 1, and the group must refuse further work.
// With `late`, rank 0 starts only after rank 1 is gone and sends 16 MB, so
// it writes into a closed socket (must be an error, not a SIGPIPE death).
int worker_dead_peer(ProcessGroup& pg, WorkerChecks& c, bool late) {
  absl::Status s = pg.barrier();
  c.expect(s.ok(), "barrier: " + s.ToString());
  if (pg.rank() == 1) {
    std::fflush(stderr);
    ::_exit(0);
  }
  if (late) std::this_thread::sleep_for(milliseconds(300));
  std::vector<at::Tensor> grads = {at::ones({late ? 4 << 20 : 4})};
  const Clock::time_point start = Clock::now();
  s = pg.all_reduce_mean_(grads);
  const double elapsed = seconds_since(start);
  std::fprintf(stderr, "[worker rank 0] dead peer after %.2f s: %s\n", elapsed, s.ToString().c_str());
  c.expect(!s.ok(), "all_reduce_mean_ succeeded with a dead peer");
  c.expect(elapsed < 3.0 + 1.5, absl::StrCat("took ", elapsed, " s"));
  c.expect(absl::StrContains(s.message(), "peer rank 1"), "names rank 1");
  s = pg.barrier();
  c.expect(s.code() == absl::StatusCode::kFailedPrecondition, "group still usable after failure: " + s.ToString());
  return c.failures == 0 ? 0 : 1;
}

// Rank 1 stays alive but never joins the collective: rank 0 must give up
// after the 1.5 s timeout with DeadlineExceeded.
int worker_stalled_peer(ProcessGroup& pg, WorkerChecks& c) {
  absl::Status s = pg.barrier();
  c.expect(s.ok(), "barrier: " + s.ToString());
  if (pg.rank() == 1) {
    std::this_thread::sleep_for(milliseconds(2500));
    return 0;
  }
  std::vector<at::Tensor> grads = {at::ones({4})};
  const Clock::time_point start = Clock::now();
  s = pg.all_reduce_mean_(grads);
  const double elapsed = seconds_since(start);
  std::fprintf(stderr, "[worker rank 0] stalled peer after %.2f s: %s\n", elapsed, s.ToString().c_str());
  c.expect(s.code() == absl::StatusCode::kDeadlineExceeded, "expected DeadlineExceeded");
  c.expect(elapsed > 1.4 && elapsed < 1.5 + 1.5, absl::StrCat("took ", elapsed, " s"));
  c.expect(absl::StrContains(s.message(), "peer rank 1 died or did not respond within 1.5 s"), "message");
  return c.failures == 0 ? 0 : 1;
}

int run_worker(const std::string& scenario) {
  absl::StatusOr<DistributedEnv> env = distributed_env_from_environ();
  if (!env.ok()) {
    std::fprintf(stderr, "[worker] env: %s\n", env.status().ToString().c_str());
    return 1;
  }
  WorkerChecks checks;
  checks.rank = env->rank;
  if (scenario == "exit3") {  // rank 1 fails at once, rank 0 hangs
    if (env->rank == 1) return 3;
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }
  milliseconds timeout(10000);
  if (scenario == "stalled_peer") timeout = milliseconds(1500);
  if (absl::StartsWith(scenario, "dead_peer")) timeout = milliseconds(3000);
  absl::StatusOr<std::unique_ptr<ProcessGroup>> pg =
      ProcessGroup::create(*env, Backend::kGloo, timeout,
                           /*rendezvous_timeout=*/std::chrono::seconds(20));
  if (!pg.ok()) {
    std::fprintf(stderr, "[worker rank %d] create: %s\n", env->rank, pg.status().ToString().c_str());
    return 1;
  }
  if (scenario == "collectives") return worker_collectives(**pg, checks);
  if (scenario == "dead_peer") return worker_dead_peer(**pg, checks, false);
  if (scenario == "dead_peer_late") return worker_dead_peer(**pg, checks, true);
  if (scenario == "stalled_peer") return worker_stalled_peer(**pg, checks);
  std::fprintf(stderr, "[worker] unknown scenario '%s'\n", scenario.c_str());
  return 2;
}

// ---- tests (run in the gtest process) ---------------------------------------

TEST(DistributedEnvTest, UnsetMeansSingleProcess) {
  absl::StatusOr<DistributedEnv> env = parse_distributed_env({});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 0);
  EXPECT_EQ(env->world_size, 1);
  EXPECT_EQ(env->local_rank, 0);
  EXPECT_EQ(env->master_addr, "127.0.0.1");
  EXPECT_EQ(env->master_port, 29500);
}

TEST(DistributedEnvTest, ParsesTorchrunVariables) {
  absl::StatusOr<DistributedEnv> env = parse_distributed_env(
      {{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}, {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "1234"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->rank, 3);
  EXPECT_EQ(env->world_size, 4);
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_EQ(env->master_addr, "10.0.0.7");
  EXPECT_EQ(env->master_port, 1234);
  EXPECT_TRUE(env->local_rank_given);
  // LOCAL_RANK defaults to RANK (single node).
  env = parse_distributed_env({{"RANK", "1"}, {"WORLD_SIZE", "2"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->local_rank, 1);
  EXPECT_FALSE(env->local_rank_given);
}

TEST(DistributedEnvTest, SlurmVariablesAloneMeanOneProcess) {
  // A batch script's shell carries SLURM_PROCID=0 and SLURM_NTASKS=N; a plain
  // `peft train` there is one process, not rank 0 of N waiting for peers.
  absl::StatusOr<DistributedEnv> env =
      parse_distributed_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_LOCALID", "0"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->world_size, 1);
  EXPECT_EQ(env->rank, 0);
}

TEST(DistributedEnvTest, MalformedValuesAreClearErrors) {
  struct Case {
    std::map<std::string, std::string> vars;
    std::string message;
  };
  const std::vector<Case> cases = {
      {{{"RANK", "x1"}, {"WORLD_SIZE", "2"}}, "RANK='x1' is not an integer"},
      {{{"WORLD_SIZE", "two"}}, "WORLD_SIZE='two' is not an integer"},
      {{{"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 must be >= 1"},
      {{{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "RANK=2 must be in [0, WORLD_SIZE=2)"},
      {{{"RANK", "1"}}, "RANK=1 must be in [0, WORLD_SIZE=1)"},
      {{{"WORLD_SIZE", "2"}}, "WORLD_SIZE=2 but RANK is not set"},
      {{{"LOCAL_RANK", "-1"}}, "LOCAL_RANK=-1 must be >= 0"},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT=70000 must be in [1, 65535]"},
      {{{"MASTER_PORT", "29500abc"}}, "MASTER_PORT='29500abc' is not an integer"},
      {{{"MASTER_ADDR", ""}}, "MASTER_ADDR is empty"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<DistributedEnv> env = parse_distributed_env(c.vars);
    ASSERT_FALSE(env.ok()) << c.message;
    EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(absl::StrContains(env.status().message(), c.message)) << env.status();
  }
}

TEST(ProcessGroupTest, WorldSizeOneIsLocalNoOp) {
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<ProcessGroup>> pg =
      ProcessGroup::create(DistributedEnv{}, Backend::kGloo, milliseconds(500));
  ASSERT_TRUE(pg.ok()) << pg.status();
  ProcessGroup& g = **pg;
  EXPECT_EQ(g.world_size(), 1);
  at::Tensor a = at::arange(4, at::kFloat);
  std::vector<at::Tensor> grads = {a};
  ASSERT_TRUE(g.all_reduce_mean_(grads).ok());
  EXPECT_TRUE(at::equal(a, at::arange(4, at::kFloat)));
  absl::StatusOr<at::Tensor> gathered = g.all_gather(a);
  ASSERT_TRUE(gathered.ok());
  EXPECT_TRUE(at::equal(*gathered, a));
  EXPECT_NE(gathered->data_ptr(), a.data_ptr());  // a copy, as with world > 1
  ASSERT_TRUE(g.broadcast_(grads, 0).ok());
  ASSERT_TRUE(g.barrier().ok());
  // Argument checks still apply, so a bug shows up before going multi-rank.
  EXPECT_EQ(g.broadcast_(grads, 1).code(), absl::StatusCode::kInvalidArgument);
  std::vector<at::Tensor> ints = {at::ones({2}, at::kLong)};
  EXPECT_EQ(g.all_reduce_mean_(ints).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(g.all_gather(at::ones({2, 2})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_LT(seconds_since(start), 0.5);
}

#ifndef PEFT_WITH_CUDA
TEST(ProcessGroupTest, NcclNeedsCudaBuild) {
  absl::StatusOr<std::unique_ptr<ProcessGroup>> pg =
      ProcessGroup::create(DistributedEnv{}, Backend::kNccl, milliseconds(500));
  EXPECT_EQ(pg.status().code(), absl::StatusCode::kUnimplemented);
}
#endif

TEST(ProcessGroupTest, CreateFailsWithinTimeoutWhenPeerNeverJoins) {
  DistributedEnv env;
  env.world_size = 2;
  env.master_port = free_port();
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<ProcessGroup>> pg = ProcessGroup::create(env, Backend::kGloo, milliseconds(1000));
  const double elapsed = seconds_since(start);
  ASSERT_FALSE(pg.ok());
  EXPECT_EQ(pg.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(absl::StrContains(pg.status().message(), "only 1 of 2 ranks joined the TCPStore")) << pg.status();
  EXPECT_LT(elapsed, 1.0 + 1.0);
  std::printf("create without peer: %.2f s: %s\n", elapsed, pg.status().ToString().c_str());
}

TEST(ProcessGroupTest, TwoRankCollectives) {
  const Clock::time_point start = Clock::now();
  absl::Status s = launch_worker("collectives");
  EXPECT_TRUE(s.ok()) << s;
  std::printf("collectives: %.2f s\n", seconds_since(start));
}

TEST(ProcessGroupTest, DeadPeerFailsFastWithClearError) {
  const Clock::time_point start = Clock::now();
  absl::Status s = launch_worker("dead_peer");
  EXPECT_TRUE(s.ok()) << s;
  std::printf("dead_peer: %.2f s\n", seconds_since(start));
}

TEST(ProcessGroupTest, WritingToDeadPeerIsAnErrorNotSigpipe) {
  const Clock::time_point start = Clock::now();
  absl::Status s = launch_worker("dead_peer_late");
  EXPECT_TRUE(s.ok()) << s;
  std::printf("dead_peer_late: %.2f s\n", seconds_since(start));
}

TEST(ProcessGroupTest, StalledPeerTimesOut) {
  const Clock::time_point start = Clock::now();
  absl::Status s = launch_worker("stalled_peer");
  EXPECT_TRUE(s.ok()) << s;
  std::printf("stalled_peer: %.2f s\n", seconds_since(start));
}

TEST(LaunchLocalTest, FailedChildStopsTheOthers) {
  const Clock::time_point start = Clock::now();
  absl::Status s = launch_worker("exit3", milliseconds(300));
  const double elapsed = seconds_since(start);
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "exited with code 3")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "rank 0")) << s;  // killed
  EXPECT_TRUE(absl::StrContains(s.message(), "signal 15")) << s;
  EXPECT_LT(elapsed, 5.0);
  std::printf("exit3: %.2f s: %s\n", elapsed, s.ToString().c_str());
}

TEST(LaunchLocalTest, MissingProgramIsAnError) {
  absl::Status s = launch_local(2, {"/nonexistent/peft-worker"}, free_port());
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::StrContains(s.message(), "/nonexistent/peft-worker")) << s;
  EXPECT_EQ(launch_local(0, {"true"}, 1234).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace peft::trainers

int main(int argc, char** argv) {
  const std::string flag = peft::trainers::kWorkerFlag;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind(flag, 0) == 0) {
      return peft::trainers::run_worker(arg.substr(flag.size()));
    }
  }
  testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
