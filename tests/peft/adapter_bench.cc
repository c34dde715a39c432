// Benchmark for the adapter methods (prints numbers, asserts nothing): on a
// LLaMA with hidden 512, 8 layers, 8 heads, FFN 1376, vocab 32000, sequence
// 256, batch 1, each method's trainable parameters, forward+backward time per
// step and peak RSS, next to full fine-tuning and the frozen model's forward.
// Each configuration runs in a fresh process (this binary re-executed) so
// that peak RSS belongs to it alone.
//
//   bazel build //tests/peft:adapter_bench && bazel-bin/tests/peft/adapter_bench [--threads=2] [--steps=3]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <google/protobuf/text_format.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/model_io.h"
#include "peft/peft_model.h"
#include "trainers/process_stats.h"

namespace {

// Adapter configs for the benchmark (all linear projections where it applies).
const std::map<std::string, std::string>& configs() {
  static const std::map<std::string, std::string> m = {
      {"lora", R"(lora { r: 8 alpha: 16 } target { preset: "all_linear" })"},
      {"nora", R"(nora { r: 32 r_inner: 8 } target { preset: "all_linear" })"},
      {"sorsa", R"(sorsa { r: 8 gamma: 0.0004 } target { preset: "all_linear" })"},
      {"bone", R"(bone { r: 32 } target { preset: "all_linear" })"},
      {"bone_miss", R"(bone { r: 32 variant: MISS } target { preset: "all_linear" })"},
      {"compacter", R"(compacter { phm_dim: 4 reduction_factor: 32 })"},
      {"compacter++", R"(compacter { phm_dim: 4 reduction_factor: 32 plus_plus: true })"},
      {"hsm", R"(hsm { target_hidden: 384 bottleneck: 64 global_step: 100 })"},
  };
  return m;
}

int run_one(const std::string& name, int threads, int steps) {
  at::set_num_threads(threads);
  peft::models::ModelConfig c;
  c.arch = peft::models::Architecture::kLlama;
  c.llama.vocab_size = 32000;
  c.llama.hidden_size = 512;
  c.llama.intermediate_size = 1376;
  c.llama.num_hidden_layers = 8;
  c.llama.num_attention_heads = 8;
  c.llama.num_key_value_heads = 8;
  c.llama.head_dim = 64;
  c.llama.max_position_embeddings = 512;
  auto lm = peft::models::create_model(c);
  peft::models::init_weights_(**lm, 1);
  peft::PeftModel pm(*lm);
  if (configs().count(name)) {
    peft::proto::AdapterConfig ac;
    if (!google::protobuf::TextFormat::ParseFromString(configs().at(name), &ac)) return 2;
    absl::Status st = pm.add_adapter(ac, 0);
    if (!st.ok()) {
      std::printf("{\"method\":\"%s\",\"error\":\"%s\"}\n", name.c_str(), std::string(st.message()).c_str());
      return 0;
    }
    pm.freeze_base_();
  } else if (name == "frozen_forward") {
    for (auto& p : pm.model().module().parameters()) p.set_requires_grad(false);
  }  // "full": every parameter trains
  const int64_t trainable = name == "frozen_forward" ? 0 : pm.num_trainable();
  at::Tensor ids = at::randint(32000, {1, 257}, at::kLong);
  at::Tensor x = ids.narrow(1, 0, 256), y = ids.narrow(1, 1, 256);
  auto step = [&] {
    if (name == "frozen_forward") {
      torch::NoGradGuard ng;
      (void)pm.model().forward(x, nullptr);
      return;
    }
    at::Tensor logits = pm.model().forward(x, nullptr);
    at::Tensor loss = at::nll_loss(at::log_softmax(logits, -1).view({-1, 32000}), y.reshape({-1})) + pm.aux_loss();
    loss.backward();
    for (auto& p : pm.model().module().parameters()) {
      if (p.grad().defined()) p.mutable_grad() = at::Tensor();
    }
  };
  step();  // warm-up
  const double t0 = peft::trainers::now_seconds();
  for (int i = 0; i < steps; ++i) step();
  const double per_step = (peft::trainers::now_seconds() - t0) / steps;
  std::printf(
      "{\"method\":\"%s\",\"trainable\":%lld,\"trainable_pct\":%.4f,\"seconds_per_step\":%.3f,"
      "\"tokens_per_s\":%.0f,\"peak_rss_mb\":%.0f,\"threads\":%d}\n",
      name.c_str(), static_cast<long long>(trainable), 100.0 * trainable / pm.num_parameters(), per_step,
      256.0 / per_step, peft::trainers::peak_rss_mb(), threads);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int steps = 3;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0) threads = std::atoi(a.c_str() + 10);
    if (a.rfind("--steps=", 0) == 0) steps = std::atoi(a.c_str() + 8);
    if (a.rfind("--only=", 0) == 0) only = a.substr(7);
  }
  if (!only.empty()) return run_one(only, threads, steps);
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<std::string> names = {"frozen_forward", "full"};
  for (const auto& [n, cfg] : configs()) names.push_back(n);
  int rc = 0;
  for (const std::string& n : names) {
    rc |= std::system(
        (self + " --only=" + n + " --threads=" + std::to_string(threads) + " --steps=" + std::to_string(steps))
            .c_str());
  }
  return rc == 0 ? 0 : 1;
}
