//
// training.precision: AUTO picks the faster of float32 and bf16 compute by
// measuring both (a matmul of a transformer layer's shape, under a second),
// because CPUs differ by more than an order of magnitude (AVX2-only: bf16
// ~30x slower than fp32 in LibTorch 1.13; AVX-512-BF16: ~2x faster; AMX:
// ~5x). An explicit BF16 that measures slower is kept, with a warning.
//
//   MatmulRates r = measure_matmul_rates(at::kCPU);
//   PrecisionDecision d = choose_precision(proto::PrecisionChoice::AUTO, r);
//   if (!d.warning.empty()) log(d.warning);  // d.bf16: compute in bf16
#ifndef PEFT_TRAINERS_PRECISION_H_
#define PEFT_TRAINERS_PRECISION_H_

#include <string>

#include <c10/core/Device.h>

#include "trainers/proto/recipe.pb.h"

namespace peft::trainers {

/// Measured matmul throughput of one device, GFLOP/s.
struct MatmulRates {
  double fp32_gflops = 0;
  double bf16_gflops = 0;
};

/// Times a [512 x 1024] x [1024 x 1024] product in float32 and in bf16 (a
/// warm-up, then repeats for about 0.2 s each) with the current thread count.
MatmulRates measure_matmul_rates(const c10::Device& device);

struct PrecisionDecision {
  bool bf16 = false;
  std::string reason;   // one line for the log: what was chosen and why
  std::string warning;  // non-empty when an explicit BF16 measures slower
};

/// The compute precision for `requested`: FP32 and BF16 are kept (BF16 that
/// is slower than fp32 is warned about with both rates); AUTO takes bf16
/// only when it measures faster than fp32.
PrecisionDecision choose_precision(proto::PrecisionChoice::Precision requested, const MatmulRates& rates);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_PRECISION_H_
