//
// Wall-clock seconds and memory figures of this process, shared by the
// trainer, the benchmarks and their programs.
//
//   const double t0 = now_seconds();
//   ... work ...
//   printf("%.3f s, peak RSS %.0f MB\n", now_seconds() - t0, peak_rss_mb());
#ifndef PEFT_TRAINERS_PROCESS_STATS_H_
#define PEFT_TRAINERS_PROCESS_STATS_H_

#include <c10/core/Device.h>

namespace peft::trainers {

/// Makes glibc return freed tensor memory to the system: a fixed mmap
/// threshold of 1 MB (M_MMAP_THRESHOLD) instead of the default that grows up
/// to 32 MB after frees, so that large blocks are always mapped and unmapped.
/// With the growing default, backward's gradients do not fit the heap holes
/// the freed activations leave, and a LoRA step's peak RSS above the model
/// was 1.8x what the forward pass keeps (1250 vs 691 MB, hidden 768, 8
/// layers, 1024 tokens; docs/benchmarks.md). Does nothing when the user set
/// MALLOC_MMAP_THRESHOLD_ in the environment, or on other C libraries.
void bound_allocator_retention();

/// A monotonic clock in seconds (steady_clock).
double now_seconds();

/// A "kB" field of /proc/self/status ("VmHWM", "VmRSS", ...) in MB; -1 when
/// the field is missing.
double proc_status_mb(const char* key);

/// The peak resident set size of this process (VmHWM) in MB.
double peak_rss_mb();

/// Starts a new peak for peak_rss_mb: VmHWM drops to the current RSS
/// (writes 5 to /proc/self/clear_refs; Linux 4.0 and later). False when the
/// kernel refused, and the old peak then stands.
bool reset_peak_rss();

/// The most memory the CUDA caching allocator has handed out on `device`
/// since the process started or the last reset_peak_cuda_mb, in MB; 0 for a
/// CPU device or a LibTorch without CUDA.
double peak_cuda_mb(const c10::Device& device);

/// Starts a new peak for peak_cuda_mb (CUDA only; nothing otherwise).
void reset_peak_cuda_mb(const c10::Device& device);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_PROCESS_STATS_H_
