#include "trainers/precision.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <torch/utils.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "trainers/process_stats.h"

namespace peft::trainers {
namespace {

double gflops(const c10::Device& device, at::ScalarType dtype) {
  constexpr int64_t m = 512, k = 1024, n = 1024;
  torch::NoGradGuard no_grad;
  const at::TensorOptions o = at::TensorOptions().device(device).dtype(dtype);
  const at::Tensor a = at::randn({m, k}, o), b = at::randn({k, n}, o);
  at::Tensor c = at::mm(a, b);  // warm-up (kernels, caches, CUDA context)
  c.sum().item<double>();       // waits for the device
  int64_t reps = 0;
  const double start = now_seconds();
  double elapsed = 0;
  while (reps < 3 || elapsed < 0.2) {
    at::mm_out(c, a, b);
    ++reps;
    if (!device.is_cpu()) c.sum().item<double>();
    elapsed = now_seconds() - start;
  }
  return 2.0 * m * k * n * static_cast<double>(reps) / std::max(elapsed, 1e-9) / 1e9;
}

}  // namespace

MatmulRates measure_matmul_rates(const c10::Device& device) {
  MatmulRates r;
  r.fp32_gflops = gflops(device, at::kFloat);
  r.bf16_gflops = gflops(device, at::kBFloat16);
  return r;
}

PrecisionDecision choose_precision(proto::PrecisionChoice::Precision requested, const MatmulRates& rates) {
  PrecisionDecision d;
  const std::string measured =
      absl::StrFormat("bf16 matmul %.0f GFLOP/s, float32 %.0f GFLOP/s", rates.bf16_gflops, rates.fp32_gflops);
  const bool bf16_faster = rates.bf16_gflops > rates.fp32_gflops;
  switch (requested) {
    case proto::PrecisionChoice::AUTO:
      d.bf16 = bf16_faster;
      d.reason = absl::StrCat("precision AUTO: computing in ", d.bf16 ? "bf16" : "float32", " (", measured, ")");
      break;
    case proto::PrecisionChoice::BF16:
      d.bf16 = true;
      d.reason = "precision BF16";
      if (!bf16_faster) {
        d.warning = absl::StrCat("warning: training.precision BF16 is slower than float32 on this machine (", measured,
                                 "); precision FP32 or AUTO would train faster");
      }
      break;
    default: d.bf16 = false; d.reason = "precision FP32";
  }
  return d;
}

}  // namespace peft::trainers
