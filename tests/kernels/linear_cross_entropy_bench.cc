// Benchmark (prints numbers, asserts nothing): the fused loss head with a
// frozen head stored narrower than the compute dtype (a bf16 base under
// float32 training), forward and backward to h, two ways side by side:
//   whole:  W.to(float32) first (what the trainer did before), then the kernel
//   blocks: W passed as bf16, the kernel converting 4096 rows at a time
// Reports the median time and the median peak RSS above the inputs of each
// (VmHWM reset before every repetition; the trainer's allocator setting, so
// freed blocks are unmapped), alternating the two ways.
//
//   bazel build -c opt //tests/kernels:linear_cross_entropy_bench
//   bazel-bin/tests/kernels/linear_cross_entropy_bench n=256 c=2048 v=128256 reps=3 threads=2
//   (defaults: Llama-3.2-1B's head, one 256-token chunk)
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>

#include "kernels/linear_cross_entropy.h"
#include "tests/testing/bench_args.h"
#include "trainers/process_stats.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::map<std::string, int64_t> a = {{"n", 256}, {"c", 2048}, {"v", 128256}, {"reps", 3}, {"threads", 2}};
  if (!peft::testing::parse_int_args(argc, argv, &a)) return 2;
  peft::trainers::bound_allocator_retention();
  at::set_num_threads(static_cast<int>(a["threads"]));
  at::manual_seed(1);
  const at::Tensor W = (at::randn({a["v"], a["c"]}) * 0.02).to(at::kBFloat16);
  const at::Tensor h0 = at::randn({a["n"], a["c"]});
  const at::Tensor labels = at::randint(a["v"], {a["n"]}, at::kLong);
  std::map<std::string, std::vector<double>> secs, peak;
  at::Tensor loss_of[2];
  for (int64_t rep = 0; rep < a["reps"]; ++rep) {
    for (int way = 0; way < 2; ++way) {
      const std::string name = way == 0 ? "whole" : "blocks";
      malloc_trim(0);
      const double rss0 = peft::trainers::proc_status_mb("VmRSS");
      peft::trainers::reset_peak_rss();
      const double t0 = peft::trainers::now_seconds();
      const at::Tensor h = h0.clone().requires_grad_(true);
      const at::Tensor loss = peft::kernels::linear_cross_entropy(h, way == 0 ? W.to(at::kFloat) : W, labels);
      const at::Tensor g = torch::autograd::grad({loss.sum()}, {h})[0];
      secs[name].push_back(peft::trainers::now_seconds() - t0);
      peak[name].push_back(peft::trainers::peak_rss_mb() - rss0);
      loss_of[way] = loss.detach();
    }
  }
  std::printf("n=%lld c=%lld v=%lld threads=%lld reps=%lld, head %.0f MB as bf16\n", (long long)a["n"],
              (long long)a["c"], (long long)a["v"], (long long)a["threads"], (long long)a["reps"],
              a["v"] * a["c"] * 2 / 1048576.0);
  for (const char* name : {"whole", "blocks"}) {
    std::printf("%-7s median %.3f s, peak above inputs %.0f MB\n", name, median(secs[name]), median(peak[name]));
  }
  std::printf("max |loss difference| %.3g\n", (loss_of[0] - loss_of[1]).abs().max().item<double>());
  return 0;
}
