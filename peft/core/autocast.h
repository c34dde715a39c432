//
// Device-generic autocast queries and an RAII scope over the two LibTorch
// APIs: 1.13 has one function per device (is_cpu_enabled, is_enabled for
// CUDA, get_autocast_cpu_dtype, get_autocast_gpu_dtype, ...); 2.4 and later
// take the device type (is_autocast_enabled(DeviceType), get_autocast_dtype,
// ...) and deprecate the old ones. Only autocast.cc names either API; every
// other file asks through here.
//
//   AutocastScope ac(bf16, at::kCUDA);                      // bf16 autocast on CUDA for the scope
//   std::optional<at::ScalarType> dt = autocast_dtype_for(x);  // kBFloat16 when it applies to x
#ifndef PEFT_CORE_AUTOCAST_H_
#define PEFT_CORE_AUTOCAST_H_

#include <optional>

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

namespace peft {

/// Whether autocast is on for `device` (kCPU or kCUDA; other types: false).
bool autocast_enabled(at::DeviceType device);

/// The autocast dtype set for `device`, whether autocast is on or not
/// (kCPU or kCUDA; TORCH_CHECK otherwise).
at::ScalarType autocast_dtype(at::DeviceType device);

/// The autocast dtype that applies to `t`: its device's, when autocast is on
/// for that device; nullopt when it is off (or `t` is undefined).
std::optional<at::ScalarType> autocast_dtype_for(const at::Tensor& t);

/// bf16 autocast on `device` (kCPU or kCUDA) for the scope; fp32 master
/// weights stay as they are. Does nothing when `on` is false. On exit the
/// device's previous autocast state and dtype come back and the autocast
/// cast cache is cleared.
class AutocastScope {
 public:
  explicit AutocastScope(bool on, at::DeviceType device = at::kCPU);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  const bool on_;
  const at::DeviceType device_;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

/// Switches the autocast cast cache (casts of leaf tensors that require
/// grad, kept until the outermost autocast scope ends) off for the scope and
/// restores it after. Needed where a no-grad forward under autocast must not
/// leave grad-less casts of trainable weights behind for a later forward with
/// grad (models/checkpoint.cc). The same API in LibTorch 1.13 and 2.x.
class AutocastCacheOff {
 public:
  AutocastCacheOff();
  ~AutocastCacheOff();
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  const bool was_;
};

}  // namespace peft

#endif  // PEFT_CORE_AUTOCAST_H_
