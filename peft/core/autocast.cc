#include "peft/core/autocast.h"

#include <ATen/autocast_mode.h>
#include <c10/util/Exception.h>
#include <torch/version.h>

// LibTorch >= 2.4 takes the device type; the per-device functions of 1.13
// are deprecated there.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define PEFT_AUTOCAST_BY_DEVICE_TYPE 1
#else
#define PEFT_AUTOCAST_BY_DEVICE_TYPE 0
#endif

namespace peft {
namespace {

void check_supported(at::DeviceType device) {
  TORCH_CHECK(device == at::kCPU || device == at::kCUDA, "autocast: only CPU and CUDA are supported, got ",
              c10::DeviceTypeName(device));
}

void set_enabled(at::DeviceType device, bool on) {
#if PEFT_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_enabled(device, on);
#else
  if (device == at::kCPU) {
    at::autocast::set_cpu_enabled(on);
  } else {
    at::autocast::set_enabled(on);
  }
#endif
}

void set_dtype(at::DeviceType device, at::ScalarType dtype) {
#if PEFT_AUTOCAST_BY_DEVICE_TYPE
  at::autocast::set_autocast_dtype(device, dtype);
#else
  if (device == at::kCPU) {
    at::autocast::set_autocast_cpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_gpu_dtype(dtype);
  }
#endif
}

}  // namespace

bool autocast_enabled(at::DeviceType device) {
  if (device != at::kCPU && device != at::kCUDA) return false;
#if PEFT_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::is_autocast_enabled(device);
#else
  return device == at::kCPU ? at::autocast::is_cpu_enabled() : at::autocast::is_enabled();
#endif
}

at::ScalarType autocast_dtype(at::DeviceType device) {
  check_supported(device);
#if PEFT_AUTOCAST_BY_DEVICE_TYPE
  return at::autocast::get_autocast_dtype(device);
#else
  return device == at::kCPU ? at::autocast::get_autocast_cpu_dtype() : at::autocast::get_autocast_gpu_dtype();
#endif
}

std::optional<at::ScalarType> autocast_dtype_for(const at::Tensor& t) {
  if (!t.defined()) return std::nullopt;
  const at::DeviceType device = t.device().type();
  if (!autocast_enabled(device)) return std::nullopt;
  return autocast_dtype(device);
}

AutocastScope::AutocastScope(bool on, at::DeviceType device) : on_(on), device_(device) {
  if (!on_) return;
  check_supported(device_);
  was_enabled_ = autocast_enabled(device_);
  previous_dtype_ = autocast_dtype(device_);
  set_dtype(device_, at::kBFloat16);
  set_enabled(device_, true);
}

AutocastScope::~AutocastScope() {
  if (!on_) return;
  set_enabled(device_, was_enabled_);
  set_dtype(device_, previous_dtype_);
  at::autocast::clear_cache();
}

AutocastCacheOff::AutocastCacheOff() : was_(at::autocast::is_autocast_cache_enabled()) {
  at::autocast::set_autocast_cache_enabled(false);
}

AutocastCacheOff::~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(was_); }

}  // namespace peft
