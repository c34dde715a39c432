//
// This process's default random generators as raw bytes: the CPU one and,
// for a CUDA device, that device's. Training checkpoints save them (every
// rank's) and activation checkpointing replays them for its recomputation.
//
//   RngState s = capture_rng_state(device);
//   ... draws ...
//   restore_rng_state(s, device);  // the same draws again
#ifndef PEFT_CORE_RNG_STATE_H_
#define PEFT_CORE_RNG_STATE_H_

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace peft {

/// The random generators of one process, as raw bytes (uint8 CPU tensors).
struct RngState {
  at::Tensor cpu;   // [n] the CPU generator (dropout on the CPU)
  at::Tensor cuda;  // [m] a CUDA device's generator; undefined on the CPU
};

/// This process's generators: the CPU one and, when `device` is a CUDA
/// device, that device's. Each is read under its generator's lock.
RngState capture_rng_state(const c10::Device& device = c10::Device(c10::kCPU));

/// Sets this process's CPU generator from `rng.cpu` (when defined) and, when
/// `device` is a CUDA device and `rng.cuda` is defined, that device's.
void restore_rng_state(const RngState& rng, const c10::Device& device = c10::Device(c10::kCPU));

}  // namespace peft

#endif  // PEFT_CORE_RNG_STATE_H_
