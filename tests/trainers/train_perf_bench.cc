// Training-speed benchmark (prints numbers, asserts nothing): one
// configuration per process, one JSON line (trainers/perf_bench.h).
// `peft bench --suite=perf` runs it for bf16 and fp32 with the eager PyTorch
// reference beside it; this binary is the same measurement alone.
//
//   bazel build //tests/trainers:train_perf_bench &&
//   bazel-bin/tests/trainers/train_perf_bench [--precision=bf16|fp32] [--threads=2] [--steps=N] [--warmup=N]
//   [--unfused] [--device=cpu|cuda]
//       [--trace=FILE.json]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "trainers/perf_bench.h"

int main(int argc, char** argv) {
  peft::trainers::PerfOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--precision=fp32") {
      o.bf16 = false;
    } else if (a == "--precision=bf16") {
      o.bf16 = true;
    } else if (a.rfind("--threads=", 0) == 0) {
      o.threads = std::atoi(a.c_str() + 10);
    } else if (a.rfind("--steps=", 0) == 0) {
      o.steps = std::atoi(a.c_str() + 8);
    } else if (a.rfind("--warmup=", 0) == 0) {
      o.warmup_steps = std::atoi(a.c_str() + 9);
    } else if (a.rfind("--trace=", 0) == 0) {
      o.trace_file = a.substr(8);
    } else if (a.rfind("--device=", 0) == 0) {
      o.device = a.substr(9);
    } else if (a == "--unfused") {
      o.fused_loss = false;
    } else {
      std::fprintf(stderr, "train_perf_bench: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  auto r = peft::trainers::run_perf_benchmark(o);
  if (!r.ok()) {
    std::fprintf(stderr, "train_perf_bench: %s\n", std::string(r.status().message()).c_str());
    return 1;
  }
  std::printf("%s\n", peft::trainers::perf_result_json(*r).c_str());
  return 0;
}
