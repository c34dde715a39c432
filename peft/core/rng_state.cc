#include "peft/core/rng_state.h"

#include <mutex>

#include <ATen/Context.h>
#include <ATen/core/Generator.h>

namespace peft {
namespace {

at::Tensor state_of(at::Generator gen) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_state(at::Generator gen, const at::Tensor& state) {
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

}  // namespace

RngState capture_rng_state(const c10::Device& device) {
  RngState s;
  s.cpu = state_of(at::globalContext().defaultGenerator(at::kCPU));
  if (device.is_cuda()) s.cuda = state_of(at::globalContext().defaultGenerator(device));
  return s;
}

void restore_rng_state(const RngState& rng, const c10::Device& device) {
  if (rng.cpu.defined()) set_state(at::globalContext().defaultGenerator(at::kCPU), rng.cpu);
  if (device.is_cuda() && rng.cuda.defined()) set_state(at::globalContext().defaultGenerator(device), rng.cuda);
}

}  // namespace peft
