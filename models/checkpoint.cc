#include "models/checkpoint.h"

#include <optional>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/core/ivalue.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/core/autocast.h"
#include "peft/core/rng_state.h"

namespace peft::models {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Autocast on/off and dtype of one device.
struct DeviceAutocast {
  bool on = false;
  at::ScalarType dtype = at::kBFloat16;
};

DeviceAutocast autocast_now(at::DeviceType device) {
  const bool on = autocast_enabled(device);
  return DeviceAutocast{on, on ? autocast_dtype(device) : at::kBFloat16};
}

// The forward-time autocast state of `device`, entered for the scope when it
// differs from the current one (an AutocastScope to switch bf16 on, an
// excluded autocast dispatch key to switch it off).
class AutocastReentry {
 public:
  AutocastReentry(at::DeviceType device, const DeviceAutocast& then) {
    const DeviceAutocast now = autocast_now(device);
    if (now.on == then.on && (!then.on || now.dtype == then.dtype)) return;
    if (then.on) {
      TORCH_CHECK(then.dtype == at::kBFloat16, "activation checkpointing: cannot re-enter ",
                  c10::DeviceTypeName(device), " autocast with dtype ", then.dtype, " (only bf16)");
      scope_.emplace(true, device);
    } else {
      off_.emplace(
          c10::DispatchKeySet(device == at::kCPU ? c10::DispatchKey::AutocastCPU : c10::DispatchKey::AutocastCUDA));
    }
  }

 private:
  std::optional<AutocastScope> scope_;
  std::optional<c10::impl::ExcludeDispatchKeyGuard> off_;
};

// AutocastCacheOff (peft/core/autocast.h) keeps grad-less casts of
// trainable leaves from outliving the no-grad run (see the header).

// Sets `then` (the generators of the CPU and of `device`, peft/core/rng_state.h)
// for the scope and puts the states found at entry back on exit
// (torch.random.fork_rng): the recomputation draws the forward's numbers and
// the training stream goes on as if it had not run.
class RngFork {
 public:
  RngFork(const RngState& then, const at::Device& device) : device_(device), now_(capture_rng_state(device)) {
    restore_rng_state(then, device_);
  }
  ~RngFork() { restore_rng_state(now_, device_); }
  RngFork(const RngFork&) = delete;
  RngFork& operator=(const RngFork&) = delete;

 private:
  const at::Device device_;
  const RngState now_;
};

// What backward needs besides the saved input; travels in ctx->saved_data as
// a capsule.
struct CheckpointState final : torch::CustomClassHolder {
  BlockFn fn;
  at::Device device = at::kCPU;  // the input's: its generator is replayed with the CPU's
  RngState rng;
  DeviceAutocast cpu_autocast, cuda_autocast;
};

struct CheckpointFunction : torch::autograd::Function<CheckpointFunction> {
  // `anchor`: a zero-size tensor that requires grad, passed when x does not
  // (see the header); never read.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const c10::optional<at::Tensor>& anchor,
                            c10::intrusive_ptr<CheckpointState> state) {
    state->device = x.device();
    state->rng = capture_rng_state(state->device);
    state->cpu_autocast = autocast_now(at::kCPU);
    state->cuda_autocast = autocast_now(at::kCUDA);
    at::Tensor y;
    {
      at::NoGradGuard no_grad;
      AutocastCacheOff no_cast_cache;
      y = state->fn(x);
    }
    ctx->save_for_backward({x});
    ctx->saved_data["state"] = c10::IValue::make_capsule(std::move(state));
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const c10::intrusive_ptr<CheckpointState> state =
        c10::static_intrusive_pointer_cast<CheckpointState>(ctx->saved_data["state"].toCapsule());
    const at::Tensor x = ctx->get_saved_variables()[0];
    const bool want_x = ctx->needs_input_grad(0);
    at::Tensor x_copy = x.detach().requires_grad_(want_x);
    at::Tensor y;
    {
      RngFork rng(state->rng, state->device);
      at::AutoGradMode grad_on(true);
      AutocastReentry cpu(at::kCPU, state->cpu_autocast);
      AutocastReentry cuda(at::kCUDA, state->cuda_autocast);
      y = state->fn(x_copy);
    }
    // Accumulates into the parameters' .grad and x_copy.grad.
    if (y.requires_grad()) torch::autograd::backward({y}, {grad_out[0]});
    return {want_x ? x_copy.grad() : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor checkpoint_block(BlockFn fn, const at::Tensor& x, bool params_need_grad) {
  if (!at::GradMode::is_enabled() || (!x.requires_grad() && !params_need_grad)) return fn(x);
  c10::optional<at::Tensor> anchor;
  if (!x.requires_grad()) anchor = at::empty({0}, x.options().dtype(at::kFloat)).requires_grad_(true);
  auto state = c10::make_intrusive<CheckpointState>();
  state->fn = std::move(fn);
  return CheckpointFunction::apply(x, anchor, std::move(state));
}

bool any_requires_grad(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    if (t.requires_grad()) return true;
  }
  return false;
}

}  // namespace peft::models
