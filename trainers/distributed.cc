#include "trainers/distributed.h"

#include <signal.h>
#include <spawn.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <thread>
#include <utility>

#include <ATen/ATen.h>
#include <torch/version.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

// NCCL exists only in a CUDA LibTorch, and its header is empty unless
// USE_C10D_NCCL is defined (trainers/BUILD defines it under --config=cuda).
#if defined(PEFT_WITH_CUDA) && defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define PEFT_HAVE_NCCL 1
#else
#define PEFT_HAVE_NCCL 0
#endif

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "peft/core/status.h"
#include "trainers/stop_signal.h"

extern char** environ;

namespace peft::trainers {
namespace {

// ---- LibTorch 1.13 / 2.x shim ---------------------------------------------
// 1.13: ProcessGroupGloo/ProcessGroupNCCL derive from c10d::ProcessGroup.
// 2.x:  they derive from c10d::Backend, and c10d::ProcessGroup became a
//       dispatcher that owns backends. We use exactly one backend per group,
//       so we hold the backend directly. The collective signatures we call
//       (allreduce, allgather, broadcast, barrier -> Work::wait) and the
//       Options/TCPStoreOptions fields we set are the same in both.
#if TORCH_VERSION_MAJOR >= 2
using C10dGroup = c10d::Backend;
#else
using C10dGroup = c10d::ProcessGroup;
#endif
using C10dGroupPtr = c10::intrusive_ptr<C10dGroup>;

const char* backend_name(Backend backend) { return backend == Backend::kGloo ? "gloo" : "nccl"; }

// "3 s", "1.5 s", "250 ms": used in every timeout message.
std::string format_duration(std::chrono::milliseconds d) {
  const int64_t ms = d.count();
  if (ms < 1000) return absl::StrCat(ms, " ms");
  if (ms % 1000 == 0) return absl::StrCat(ms / 1000, " s");
  return absl::StrFormat("%.1f s", ms / 1000.0);
}

// c10::Error::what() carries a C++ backtrace in 1.13; keep messages short.
std::string exception_message(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) {
    return c10_error->what_without_backtrace();
  }
  return e.what();
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || absl::StartsWith(addr, "127.") || addr == "::1";
}

// Groups tensor indices by dtype, in order of first appearance. Every rank
// passes the same dtypes in the same order, so the buckets line up.
std::vector<std::vector<size_t>> bucket_by_dtype(const std::vector<at::Tensor>& tensors) {
  std::vector<std::vector<size_t>> buckets;
  std::vector<at::ScalarType> dtypes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    size_t b = 0;
    while (b < dtypes.size() && dtypes[b] != tensors[i].scalar_type()) ++b;
    if (b == dtypes.size()) {
      dtypes.push_back(tensors[i].scalar_type());
      buckets.emplace_back();
    }
    buckets[b].push_back(i);
  }
  return buckets;
}

// The dtype a tensor travels in. Gloo in LibTorch 1.13 only handles
// float/double/half/int8/uint8/int32/int64, so bf16 and fp16 go as fp32
// (exact for broadcast; the fp32 sum is also the more accurate mean) and
// bool/int16 are widened. NCCL takes every dtype we use natively.
at::ScalarType wire_dtype(Backend backend, at::ScalarType dtype) {
  if (backend == Backend::kNccl) return dtype;
  switch (dtype) {
    case at::kBFloat16:
    case at::kHalf: return at::kFloat;
    case at::kBool: return at::kByte;
    case at::kShort: return at::kInt;
    default: return dtype;
  }
}

// The device a tensor travels on: Gloo works on host memory (a CUDA tensor
// is staged through the CPU), NCCL on the tensor's own CUDA device.
at::Device wire_device(Backend backend, const at::Tensor& t) {
  return backend == Backend::kGloo ? at::Device(at::kCPU) : t.device();
}

absl::Status check_backend_device(Backend backend, const char* op, const at::Tensor& t) {
  if (backend == Backend::kNccl && t.defined() && !t.is_cuda()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": the NCCL backend needs CUDA tensors, got one on ", t.device().str()));
  }
  return absl::OkStatus();
}

// Checks the tensor-list contract shared by all_reduce_mean_ and broadcast_.
absl::Status check_tensor_list(const char* op, const std::vector<at::Tensor>& tensors, bool floating_only) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    if (!t.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": tensor ", i,
                                                     " is undefined (an unused parameter has no grad; pass zeros so "
                                                     "every rank sends the same layout)"));
    }
    if (floating_only && !at::isFloatingType(t.scalar_type())) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": tensor ", i, " has non-floating dtype ", c10::toString(t.scalar_type())));
    }
    if (t.device() != tensors[0].device()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": tensor ", i, " is on ", t.device().str(),
                                                     " but tensor 0 on ", tensors[0].device().str(),
                                                     "; all must share one device"));
    }
  }
  return absl::OkStatus();
}

// [sum numel]: the tensors of one bucket flattened into one contiguous buffer
// of the wire dtype, on the wire device.
at::Tensor flatten(const std::vector<at::Tensor>& tensors, const std::vector<size_t>& bucket, Backend backend) {
  std::vector<at::Tensor> parts;
  parts.reserve(bucket.size());
  for (size_t i : bucket) parts.push_back(tensors[i].reshape({-1}));
  const at::Tensor flat = at::cat(parts);
  return flat.to(wire_device(backend, flat), wire_dtype(backend, flat.scalar_type()));
}

// Inverse of flatten(): copies slices of `flat` back into the tensors
// (copy_ casts from the wire dtype and moves from the wire device).
void unflatten_(const at::Tensor& flat, std::vector<at::Tensor>& tensors, const std::vector<size_t>& bucket) {
  int64_t offset = 0;
  for (size_t i : bucket) {
    const int64_t n = tensors[i].numel();
    tensors[i].copy_(flat.narrow(0, offset, n).view(tensors[i].sizes()));
    offset += n;
  }
}

}  // namespace

// ---- DistributedEnv --------------------------------------------------------

absl::Status DistributedEnv::validate() const {
  if (world_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat("WORLD_SIZE=", world_size, " must be >= 1"));
  }
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(absl::StrCat("RANK=", rank, " must be in [0, WORLD_SIZE=", world_size, ")"));
  }
  if (local_rank < 0) {
    return absl::InvalidArgumentError(absl::StrCat("LOCAL_RANK=", local_rank, " must be >= 0"));
  }
  if (master_addr.empty()) {
    return absl::InvalidArgumentError("MASTER_ADDR is empty");
  }
  if (master_port < 1 || master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("MASTER_PORT=", master_port, " must be in [1, 65535]"));
  }
  return absl::OkStatus();
}

absl::StatusOr<DistributedEnv> parse_distributed_env(const std::map<std::string, std::string>& vars) {
  // Reads an optional integer variable; leaves *out alone when unset.
  auto read_int = [&vars](const char* name, int* out, bool* present) -> absl::Status {
    auto it = vars.find(name);
    *present = it != vars.end();
    if (!*present) return absl::OkStatus();
    if (!absl::SimpleAtoi(it->second, out)) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, "='", it->second, "' is not an integer (torchrun sets ", name, "; check your launcher)"));
    }
    return absl::OkStatus();
  };
  DistributedEnv env;
  bool has_rank = false, has_world = false, has_local = false, has_port = false;
  PEFT_RETURN_IF_ERROR(read_int("WORLD_SIZE", &env.world_size, &has_world));
  PEFT_RETURN_IF_ERROR(read_int("RANK", &env.rank, &has_rank));
  PEFT_RETURN_IF_ERROR(read_int("LOCAL_RANK", &env.local_rank, &has_local));
  PEFT_RETURN_IF_ERROR(read_int("MASTER_PORT", &env.master_port, &has_port));
  if (auto it = vars.find("MASTER_ADDR"); it != vars.end()) {
    env.master_addr = it->second;
  }
  if (env.world_size > 1 && !has_rank) {
    return absl::InvalidArgumentError(absl::StrCat("WORLD_SIZE=", env.world_size, " but RANK is not set"));
  }
  env.local_rank_given = has_local;
  if (!has_local) env.local_rank = env.rank;  // single-node assumption
  PEFT_RETURN_IF_ERROR(env.validate());
  return env;
}

absl::StatusOr<DistributedEnv> distributed_env_from_environ() {
  std::map<std::string, std::string> vars;
  for (const char* name : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}) {
    if (const char* value = std::getenv(name)) vars[name] = value;
  }
  return parse_distributed_env(vars);
}

// ---- ProcessGroup ----------------------------------------------------------

struct ProcessGroup::Impl {
  Impl(const DistributedEnv& env, Backend backend, std::chrono::milliseconds timeout)
      : rank(env.rank), world_size(env.world_size), backend(backend), timeout(timeout) {}

  // Issues one collective through `issue` and waits at most `timeout` for
  // it. Any exception (Gloo IoException on a closed socket, Gloo's own
  // timeout, Work::wait's "Operation timed out!") becomes a Status naming the
  // peer; the group is then marked broken because the ranks are out of step.
  absl::Status run(const char* op, const std::function<c10::intrusive_ptr<c10d::Work>(C10dGroup&)>& issue) {
    if (!broken.empty()) {
      return absl::FailedPreconditionError(
          absl::StrCat(op, ": process group is unusable after an earlier failure: ", broken));
    }
    const auto start = std::chrono::steady_clock::now();
    c10::intrusive_ptr<c10d::Work> work;
    try {
      work = issue(*group);
    } catch (const std::exception& e) {
      // Thrown before anything was sent: argument checks or backend setup.
      broken = absl::StrFormat("%s could not be started on rank %d of %d (%s: %s)", op, rank, world_size,
                               backend_name(backend), exception_message(e));
      return absl::InternalError(broken);
    }
    std::string cause;
    try {
      if (work->wait(timeout)) return absl::OkStatus();
      cause = "the operation was aborted";
    } catch (const std::exception& e) {
      cause = exception_message(e);
    }
    const auto elapsed =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    const std::string peer = world_size == 2 ? absl::StrCat("peer rank ", 1 - rank)
                                             : absl::StrCat("one of the other ", world_size - 1, " ranks");
    broken = absl::StrFormat(
        "%s failed on rank %d of %d after %.1f s: %s died or did not respond "
        "within %s (%s: %s)",
        op, rank, world_size, elapsed.count() / 1000.0, peer, format_duration(timeout), backend_name(backend), cause);
    // 5% slack: Gloo's own timeout may fire a hair before ours.
    if (elapsed * 20 >= timeout * 19) return absl::DeadlineExceededError(broken);
    return absl::UnavailableError(broken);
  }

  const int rank;
  const int world_size;
  const Backend backend;
  const std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::Store> store;
  C10dGroupPtr group;  // declared after store: destroyed first
  std::string broken;  // non-empty after a failed collective
};

ProcessGroup::ProcessGroup(const DistributedEnv& env, Backend backend, std::chrono::milliseconds timeout,
                           std::unique_ptr<Impl> impl)
    : env_(env), backend_(backend), timeout_(timeout), impl_(std::move(impl)) {}

ProcessGroup::~ProcessGroup() = default;

absl::StatusOr<std::unique_ptr<ProcessGroup>> ProcessGroup::create(
    const DistributedEnv& env, Backend backend, std::chrono::milliseconds timeout,
    std::optional<std::chrono::milliseconds> rendezvous_timeout) {
  PEFT_RETURN_IF_ERROR(env.validate());
  const std::chrono::milliseconds join_timeout = rendezvous_timeout.value_or(timeout);
  if (timeout.count() <= 0 || join_timeout.count() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("ProcessGroup::create: timeouts must be positive, got ",
                                                   timeout.count(), " ms and ", join_timeout.count(), " ms"));
  }
  if (backend == Backend::kNccl && !PEFT_HAVE_NCCL) {
    return absl::UnimplementedError(
        "ProcessGroup::create: the NCCL backend needs a CUDA LibTorch built "
        "with USE_C10D_NCCL (build with PEFT_LIBTORCH=... --config=cuda); "
        "this build is CPU-only, use Backend::kGloo");
  }
  if (env.world_size == 1) {
    return std::unique_ptr<ProcessGroup>(new ProcessGroup(env, backend, timeout, nullptr));
  }

  auto impl = std::make_unique<Impl>(env, backend, timeout);
  const std::string where = absl::StrCat(env.master_addr, ":", env.master_port);
  const auto start = std::chrono::steady_clock::now();
  auto fail = [&](const std::string& stage, std::chrono::milliseconds limit, const std::exception& e) {
    const auto elapsed = std::chrono::steady_clock::now() - start;
    std::string msg = absl::StrFormat(
        "ProcessGroup::create (%s) failed on rank %d of %d: %s at %s within "
        "%s: %s",
        backend_name(backend), env.rank, env.world_size, stage, where, format_duration(limit), exception_message(e));
    if (elapsed * 20 >= limit * 19) return absl::DeadlineExceededError(msg);
    return absl::UnavailableError(msg);
  };

  try {
    // waitWorkers=false: 1.13's wait loop gives up silently (in whole
    // seconds) and 2.x throws; our own join count below behaves the same in
    // both and says how many ranks made it.
    c10d::TCPStoreOptions store_options;
    store_options.port = static_cast<std::uint16_t>(env.master_port);
    store_options.isServer = env.rank == 0;
    store_options.numWorkers = static_cast<std::size_t>(env.world_size);
    store_options.waitWorkers = false;
    store_options.timeout = join_timeout;
    impl->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    return fail(env.rank == 0 ? "serving the TCPStore" : "reaching the TCPStore of rank 0", join_timeout, e);
  }

  // Every rank counts itself in, then waits until all have (or the deadline).
  constexpr char kJoinKey[] = "peft/ranks_joined";
  int64_t joined = 0;
  try {
    joined = impl->store->add(kJoinKey, 1);
    while (joined < env.world_size && std::chrono::steady_clock::now() - start < join_timeout) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      joined = impl->store->add(kJoinKey, 0);
    }
  } catch (const std::exception& e) {
    return fail("counting ranks in the TCPStore", join_timeout, e);
  }
  if (joined < env.world_size) {
    return absl::DeadlineExceededError(absl::StrFormat(
        "ProcessGroup::create (%s) failed on rank %d of %d: only %d of %d "
        "ranks joined the TCPStore at %s within %s (did every rank start, "
        "with the same MASTER_ADDR/MASTER_PORT and WORLD_SIZE?)",
        backend_name(backend), env.rank, env.world_size, joined, env.world_size, where, format_duration(join_timeout)));
  }

  try {
    if (backend == Backend::kGloo) {
      c10::intrusive_ptr<c10d::ProcessGroupGloo::Options> options = c10d::ProcessGroupGloo::Options::create(timeout);
      options->devices.push_back(is_loopback(env.master_addr)
                                     ? c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr)
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
      impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl->store, env.rank, env.world_size, options);
    } else {
#if PEFT_HAVE_NCCL
      // NCCL picks the device from the tensors: the caller places them on
      // cuda:<local_rank>. The communicator is created lazily on first use.
#if TORCH_VERSION_MAJOR >= 2
      // 2.x arms a watchdog with the same timeout whose default action
      // (TORCH_NCCL_ASYNC_ERROR_HANDLING=3) kills the process, possibly before
      // Work::wait throws and we can report which collective timed out and
      // why. 2 = abort the communicators only; a user's setting wins.
      setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2", /*overwrite=*/0);
#endif
      c10::intrusive_ptr<c10d::ProcessGroupNCCL::Options> options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl->store, env.rank, env.world_size, options);
#endif
    }
  } catch (const std::exception& e) {
    // All ranks joined the store a moment ago, so the mesh should connect
    // well within the collective timeout.
    return fail("connecting to the other ranks", timeout, e);
  }
  return std::unique_ptr<ProcessGroup>(new ProcessGroup(env, backend, timeout, std::move(impl)));
}

absl::Status ProcessGroup::all_reduce_mean_(std::vector<at::Tensor>& grads) {
  PEFT_RETURN_IF_ERROR(check_tensor_list("all_reduce_mean_", grads, /*floating_only=*/true));
  if (impl_ == nullptr) return absl::OkStatus();
  if (!grads.empty()) {
    PEFT_RETURN_IF_ERROR(check_backend_device(backend_, "all_reduce_mean_", grads[0]));
  }
  at::NoGradGuard no_grad;
  for (const std::vector<size_t>& bucket : bucket_by_dtype(grads)) {
    // [sum numel] in the wire dtype
    std::vector<at::Tensor> buffer = {flatten(grads, bucket, backend_)};
    if (buffer[0].numel() == 0) continue;
    PEFT_RETURN_IF_ERROR(impl_->run("all_reduce_mean_", [&](C10dGroup& g) {
      c10d::AllreduceOptions options;
      options.reduceOp = c10d::ReduceOp::SUM;  // Gloo has no AVG
      options.timeout = timeout_;
      return g.allreduce(buffer, options);
    }));
    buffer[0].div_(env_.world_size);
    unflatten_(buffer[0], grads, bucket);
  }
  return absl::OkStatus();
}

absl::StatusOr<at::Tensor> ProcessGroup::all_gather(const at::Tensor& local) {
  if (!local.defined() || local.dim() != 1) {
    return absl::InvalidArgumentError(absl::StrCat("all_gather: expects a defined 1-D tensor, got ",
                                                   local.defined() ? absl::StrCat(local.dim(), "-D") : "undefined"));
  }
  if (impl_ == nullptr) return local.clone();
  PEFT_RETURN_IF_ERROR(check_backend_device(backend_, "all_gather", local));
  const at::Device wire = wire_device(backend_, local);
  at::NoGradGuard no_grad;
  // Runs one Gloo/NCCL allgather of same-shaped `input`: [world][input].
  auto gather = [&](const at::Tensor& input, std::vector<at::Tensor>* out) -> absl::Status {
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < env_.world_size; ++r) {
      outputs[0].push_back(at::empty_like(input));
    }
    std::vector<at::Tensor> inputs = {input};
    PEFT_RETURN_IF_ERROR(impl_->run("all_gather", [&](C10dGroup& g) {
      c10d::AllgatherOptions options;
      options.timeout = timeout_;
      return g.allgather(outputs, inputs, options);
    }));
    *out = std::move(outputs[0]);
    return absl::OkStatus();
  };

  // Exchange lengths first: Gloo does not check that peers agree.
  std::vector<at::Tensor> lengths;  // world x [1]
  PEFT_RETURN_IF_ERROR(
      gather(at::full({1}, local.numel(), at::TensorOptions().dtype(at::kLong).device(wire)), &lengths));
  std::vector<int64_t> n;
  for (const at::Tensor& l : lengths) n.push_back(l.item<int64_t>());
  for (int64_t len : n) {
    if (len != n[0]) {
      return absl::InvalidArgumentError(absl::StrCat("all_gather: ranks passed different lengths [",
                                                     absl::StrJoin(n, ", "), "] (index = rank); all must be equal"));
    }
  }
  if (n[0] == 0) return at::empty({0}, local.options());
  std::vector<at::Tensor> parts;  // world x [N]
  PEFT_RETURN_IF_ERROR(gather(local.to(wire, wire_dtype(backend_, local.scalar_type())).contiguous(), &parts));
  return at::cat(parts).to(local.device(), local.scalar_type());  // [world * N]
}

absl::Status ProcessGroup::broadcast_(std::vector<at::Tensor>& tensors, int root) {
  if (root < 0 || root >= env_.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("broadcast_: root ", root, " is not in [0, world_size=", env_.world_size, ")"));
  }
  PEFT_RETURN_IF_ERROR(check_tensor_list("broadcast_", tensors, /*floating_only=*/false));
  if (impl_ == nullptr) return absl::OkStatus();
  if (!tensors.empty()) {
    PEFT_RETURN_IF_ERROR(check_backend_device(backend_, "broadcast_", tensors[0]));
  }
  at::NoGradGuard no_grad;  // parameters that require grad are written too
  for (const std::vector<size_t>& bucket : bucket_by_dtype(tensors)) {
    // [sum numel] in the wire dtype
    std::vector<at::Tensor> buffer = {flatten(tensors, bucket, backend_)};
    if (buffer[0].numel() == 0) continue;
    PEFT_RETURN_IF_ERROR(impl_->run("broadcast_", [&](C10dGroup& g) {
      c10d::BroadcastOptions options;
      options.rootRank = root;
      options.rootTensor = 0;
      options.timeout = timeout_;
      return g.broadcast(buffer, options);
    }));
    if (env_.rank != root) unflatten_(buffer[0], tensors, bucket);
  }
  return absl::OkStatus();
}

absl::Status ProcessGroup::barrier() {
  if (impl_ == nullptr) return absl::OkStatus();
  return impl_->run("barrier", [&](C10dGroup& g) {
    c10d::BarrierOptions options;
    options.timeout = timeout_;
    // NCCL's barrier all-reduces a tensor on a GPU; name ours rather than
    // let it guess one from the rank.
    if (backend_ == Backend::kNccl) options.device_ids = {env_.local_rank};
    return g.barrier(options);
  });
}

// ---- launch_local ----------------------------------------------------------

namespace {

struct Child {
  int rank = 0;
  pid_t pid = -1;
  bool done = false;
  int status = 0;        // waitpid status, valid when done
  bool stopped = false;  // we sent SIGTERM/SIGKILL
};

bool failed(const Child& c) { return !(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0); }

void signal_running(std::vector<Child>& children, int sig) {
  for (Child& c : children) {
    if (!c.done) {
      ::kill(c.pid, sig);
      c.stopped = true;
    }
  }
}

// Reaps every child, blocking; used after a spawn failure.
void reap_all(std::vector<Child>& children) {
  for (Child& c : children) {
    if (!c.done) ::waitpid(c.pid, &c.status, 0);
    c.done = true;
  }
}

}  // namespace

absl::Status launch_local(int nproc, const std::vector<std::string>& argv, int master_port,
                          std::chrono::milliseconds grace) {
  if (nproc < 1) {
    return absl::InvalidArgumentError(absl::StrCat("launch_local: nproc must be >= 1, got ", nproc));
  }
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("launch_local: argv is empty");
  }
  if (master_port < 1 || master_port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("launch_local: master_port ", master_port, " not in [1, 65535]"));
  }
  std::vector<char*> c_argv;
  for (const std::string& a : argv) c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);

  // This process's environment minus the variables we set per rank.
  const std::vector<std::string> ours = {
      "RANK=", "WORLD_SIZE=", "LOCAL_RANK=", "LOCAL_WORLD_SIZE=", "MASTER_ADDR=", "MASTER_PORT="};
  std::vector<std::string> base_env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    bool overridden = false;
    for (const std::string& prefix : ours) {
      overridden = overridden || absl::StartsWith(*e, prefix);
    }
    if (!overridden) base_env.emplace_back(*e);
  }

  const bool has_slash = argv[0].find('/') != std::string::npos;
  std::vector<Child> children;
  for (int rank = 0; rank < nproc; ++rank) {
    std::vector<std::string> env = base_env;
    env.push_back(absl::StrCat("RANK=", rank));
    env.push_back(absl::StrCat("WORLD_SIZE=", nproc));
    env.push_back(absl::StrCat("LOCAL_RANK=", rank));
    env.push_back(absl::StrCat("LOCAL_WORLD_SIZE=", nproc));
    env.push_back("MASTER_ADDR=127.0.0.1");
    env.push_back(absl::StrCat("MASTER_PORT=", master_port));
    std::vector<char*> c_env;
    for (std::string& s : env) c_env.push_back(s.data());
    c_env.push_back(nullptr);

    // posix_spawn instead of fork+exec: safe in a process with threads
    // (LibTorch, gtest) and reports exec failures as a return value.
    Child child;
    child.rank = rank;
    const int err = has_slash ? ::posix_spawn(&child.pid, c_argv[0], nullptr, nullptr, c_argv.data(), c_env.data())
                              : ::posix_spawnp(&child.pid, c_argv[0], nullptr, nullptr, c_argv.data(), c_env.data());
    if (err != 0) {
      signal_running(children, SIGKILL);
      reap_all(children);
      return absl::InternalError(
          absl::StrCat("launch_local: cannot start '", argv[0], "' for rank ", rank, ": ", std::strerror(err)));
    }
    children.push_back(child);
  }

  using Clock = std::chrono::steady_clock;
  bool failure_seen = false, term_sent = false, kill_sent = false;
  Clock::time_point term_at, kill_at;
  size_t running = children.size();
  // SIGINT/SIGTERM to the launcher: the ranks get SIGTERM (they stop after
  // the step with a checkpoint); a second signal SIGKILLs them.
  StopSignals stop_signals(/*announce=*/false, /*repeat_kills=*/false);
  int forwarded = 0;
  while (running > 0) {
    if (StopSignals::count() > forwarded) {
      forwarded = StopSignals::count();
      for (Child& c : children) {
        if (!c.done) ::kill(c.pid, forwarded == 1 ? SIGTERM : SIGKILL);
      }
    }
    for (Child& c : children) {
      if (c.done) continue;
      const pid_t r = ::waitpid(c.pid, &c.status, WNOHANG);
      if (r == 0) continue;
      if (r < 0 && errno == EINTR) continue;
      c.done = true;  // r == pid, or ECHILD (status then reads as failed)
      if (r < 0) c.status = -1;
      --running;
      if (failed(c) && !failure_seen) {
        failure_seen = true;
        term_at = Clock::now() + grace;
        kill_at = term_at + std::chrono::seconds(2);
      }
    }
    if (running == 0) break;
    const Clock::time_point now = Clock::now();
    if (failure_seen && !term_sent && now >= term_at) {
      signal_running(children, SIGTERM);
      term_sent = true;
    }
    if (term_sent && !kill_sent && now >= kill_at) {
      signal_running(children, SIGKILL);
      kill_sent = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  std::vector<std::string> problems;
  for (const Child& c : children) {
    if (!failed(c)) continue;
    std::string what;
    if (c.status == -1) {
      what = "could not be waited for";
    } else if (WIFEXITED(c.status)) {
      what = absl::StrCat("exited with code ", WEXITSTATUS(c.status));
    } else if (WIFSIGNALED(c.status)) {
      what = absl::StrCat("was killed by signal ", WTERMSIG(c.status), " (", ::strsignal(WTERMSIG(c.status)), ")");
    } else {
      what = "ended abnormally";
    }
    if (c.stopped) {
      what += absl::StrCat(" after launch_local stopped it (", format_duration(grace), " grace period)");
    }
    problems.push_back(absl::StrCat("rank ", c.rank, " (pid ", c.pid, ") ", what));
  }
  if (problems.empty()) return absl::OkStatus();
  const std::string stopped =
      forwarded > 0 ? absl::StrCat(" (stopped by ", StopSignals::name(StopSignals::pending()), ")") : "";
  return absl::InternalError(absl::StrCat("launch_local: ", nproc, " processes of '", argv[0], "'", stopped, ": ",
                                          absl::StrJoin(problems, "; ")));
}

}  // namespace peft::trainers
