#include "trainers/process_stats.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(PEFT_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace peft::trainers {

void bound_allocator_retention() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double proc_status_mb(const char* key) {
  std::ifstream in("/proc/self/status");
  const size_t n = std::strlen(key);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > n && line.compare(0, n, key) == 0 && line[n] == ':') {
      return std::atof(line.c_str() + n + 1) / 1024.0;
    }
  }
  return -1;
}

double peak_rss_mb() { return proc_status_mb("VmHWM"); }

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

double peak_cuda_mb(const c10::Device& device) {
#if defined(PEFT_WITH_CUDA)
  if (device.is_cuda()) {
    // allocated_bytes[0] is StatType::AGGREGATE (all pools) in 1.13 and 2.x;
    // the enum's namespace moved, the index did not.
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return static_cast<double>(stats.allocated_bytes[0].peak) / (1024.0 * 1024.0);
  }
#endif
  (void)device;
  return 0;
}

void reset_peak_cuda_mb(const c10::Device& device) {
#if defined(PEFT_WITH_CUDA)
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
  (void)device;
}

}  // namespace peft::trainers
