//
// The training-speed benchmark behind `peft bench --suite=perf` and
// bazel-bin/tests/trainers/train_perf_bench: the target configuration
// (a LLaMA with hidden 512, 8 layers, 8 heads, FFN 1376, vocabulary 32000;
// sequence 256, batch 8; LoRA r=8 on every linear projection of the blocks,
// base frozen), trained with the trainer's own step (trainers/train_step.h:
// the loss under bf16 autocast or fp32, extra losses, backward, global-norm
// clipping at 1, AdamW at lr 1e-4).
//
// In the same process it measures the bf16 (or fp32) matrix-multiply rate of
// this machine on the model's own GEMM shapes and a 2048³ square, and reports
// model FLOPs utilisation against the best of them:
//
//   MFU = tokens/s × FLOPs per token / peak matmul FLOP/s
//   FLOPs per token = 4·N_proj + 4·N_head + 12·L·T·C + LoRA
//     N_proj = L·(4C² + 3·C·F) block projection weights, N_head = V·C:
//       2 per weight forward, 2 per weight for the input gradient (a frozen
//       base needs no weight gradient: none is computed);
//     attention scores and values: 2·2·T·C per layer forward, twice that
//       backward (the full T×T product, as computed);
//     LoRA: 2·r·(in+out) forward, 4·r·(in+out) backward, per adapted projection.
//
// A result also records whether any base weight received a gradient (it
// must not).
#ifndef PEFT_TRAINERS_PERF_BENCH_H_
#define PEFT_TRAINERS_PERF_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "data/dataset.h"
#include "models/config.h"
#include "peft/proto/adapter_config.pb.h"

namespace peft::trainers {

struct PerfOptions {
  int threads = 2;
  /// Warm-up and measured steps (the median step time is reported); -1 and
  /// 0 take the device's defaults: 2 and 6 on the CPU, 5 and 20 on CUDA,
  /// where a step takes milliseconds. The result holds the values used.
  int warmup_steps = -1;
  int steps = 0;
  bool bf16 = true;        ///< bf16 autocast with fp32 master weights, else fp32
  bool fused_loss = true;  ///< fused head + cross-entropy (false: logits path)
  int64_t batch = 8, seq = 256;
  int64_t hidden = 512, layers = 8, heads = 8, ffn = 1376, vocab = 32000;
  int64_t lora_r = 8;
  /// "cpu" or "cuda" (cuda:0: the model, the batch and the matmul rate run
  /// there, timed with a device synchronisation at the end of each step).
  std::string device = "cpu";
  double matmul_seconds = 0.7;  ///< timing budget of each matmul-rate shape
  /// When set, the last measured step is profiled (LibTorch's profiler) and
  /// written here as a Chrome trace (chrome://tracing, Perfetto).
  std::string trace_file;
};

struct MatmulRate {
  std::string shape;  ///< "MxKxN"
  double gflops = 0;
};

struct PerfResult {
  PerfOptions options;
  std::vector<MatmulRate> matmul;  ///< in the run's precision
  double peak_matmul_gflops = 0;   ///< the best of `matmul`
  int64_t trainable_parameters = 0;
  int64_t base_parameters = 0;
  int64_t base_parameters_with_grad = 0;  ///< must be 0
  double flops_per_token = 0;
  double step_seconds = 0;  ///< median over the measured steps
  double tokens_per_second = 0;
  double achieved_gflops = 0;
  double mfu = 0;
  double peak_rss_mb = 0;     ///< of this process (run one configuration per process)
  double peak_device_mb = 0;  ///< CUDA: the caching allocator's peak allocated bytes
  double first_loss = 0, last_loss = 0;
};

/// The benchmark's LLaMA (weights from models::init_weights_(lm, 1)), its
/// LoRA adapter and its fixed batch of random tokens (seed 0), so a test can
/// rebuild exactly what it trains.
models::ModelConfig perf_model_config(const PerfOptions& options);
proto::AdapterConfig perf_adapter(const PerfOptions& options);
data::Batch perf_batch(const PerfOptions& options, const at::Device& device);

/// Builds the model, measures the matmul rate, trains with the trainer's
/// step (trainers/train_step.h), and reports.
absl::StatusOr<PerfResult> run_perf_benchmark(PerfOptions options);

/// One JSON object (keys as in PerfResult).
std::string perf_result_json(const PerfResult& r);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_PERF_BENCH_H_
