// Benchmark for activation checkpointing (prints numbers, asserts nothing):
// one LLaMA training step (forward + cross-entropy + backward) with LoRA r=8
// on every linear projection, hidden 512, 8 layers, batch 8, sequence 256,
// vocab 32000, with and without CausalLm::set_activation_checkpointing, in
// fp32 and under bf16 CPU autocast. Reported per configuration: the peak RSS
// over all steps above the RSS with the model built (VmHWM after resetting it
// through /proc/self/clear_refs), the median step time, and the number of autograd
// nodes reachable from the loss. Each configuration runs in a fresh process
// (this binary re-executed) so that allocator state does not carry over.
//
//   bazel build //tests/models:checkpoint_bench && bazel-bin/tests/models/checkpoint_bench [steps]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/function.h>

#include "models/model_io.h"
#include "peft/core/autocast.h"
#include "peft/peft_model.h"
#include "tests/testing/tiny_models.h"
#include "trainers/process_stats.h"

namespace {

using peft::models::CausalLm;

int run_child(bool checkpointing, bool bf16, int steps) {
  peft::models::ModelConfig c;
  c.arch = peft::models::Architecture::kLlama;
  c.llama.vocab_size = 32000;
  c.llama.hidden_size = 512;
  c.llama.intermediate_size = 1408;
  c.llama.num_hidden_layers = 8;
  c.llama.num_attention_heads = 8;
  c.llama.num_key_value_heads = 8;
  c.llama.head_dim = 64;
  c.llama.max_position_embeddings = 256;
  std::shared_ptr<CausalLm> lm = *peft::models::create_model(c);
  peft::models::init_weights_(*lm, 1);
  peft::PeftModel pm(lm);
  peft::proto::AdapterConfig lora;
  lora.set_name("lora");
  lora.mutable_lora()->set_r(8);
  lora.mutable_lora()->set_alpha(16);
  lora.mutable_lora()->set_dropout(0.05);
  lora.mutable_target()->set_preset("all_linear");
  if (!pm.add_adapter(lora, 2).ok()) return 1;
  pm.freeze_base_();
  lm->set_activation_checkpointing(checkpointing);
  lm->module().train();

  const int64_t b = 8, t = 256;
  const at::Tensor ids = at::randint(c.llama.vocab_size, {b, t}, at::kLong);
  std::vector<double> times;
  // The peak over all steps above the RSS with the model built. (Measuring
  // each step against the RSS after the previous one undercounts: the
  // allocator keeps the previous step's freed memory resident.)
  const double before = peft::trainers::proc_status_mb("VmRSS");
  const bool reset = peft::trainers::reset_peak_rss();
  int64_t nodes = 0;
  for (int s = 0; s <= steps; ++s) {  // step 0 warms up
    for (auto& [name, p] : pm.trainable_parameters()) p.mutable_grad() = at::Tensor();
    const double t0 = peft::trainers::now_seconds();
    {
      peft::AutocastScope ac(bf16, at::kCPU);
      const at::Tensor logits = lm->forward(ids, nullptr).to(at::kFloat);  // [B, T, V]
      const at::Tensor loss = at::cross_entropy_loss(logits.narrow(1, 0, t - 1).reshape({-1, c.llama.vocab_size}),
                                                     ids.narrow(1, 1, t - 1).reshape({-1}));
      nodes = peft::testing::autograd_node_count(loss);
      loss.backward();
    }
    const double dt = peft::trainers::now_seconds() - t0;
    if (s > 0) times.push_back(dt);
  }
  const double peak = reset ? peft::trainers::proc_status_mb("VmHWM") - before : -1.0;
  std::sort(times.begin(), times.end());
  std::printf(
      "%-5s checkpointing=%-3s  peak RSS above the built model %8.1f MB   median step %6.2f s   autograd nodes %5ld\n",
      bf16 ? "bf16" : "fp32", checkpointing ? "on" : "off", peak, times[times.size() / 2], static_cast<long>(nodes));
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[1]) == "--child") {
    return run_child(std::string(argv[2]) == "on", std::string(argv[3]) == "bf16", std::atoi(argv[4]));
  }
  const int steps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 2;
  std::printf(
      "LLaMA hidden 512, 8 layers, FFN 1408, vocab 32000, batch 8 x 256 tokens, LoRA r=8 all_linear; "
      "%d timed step(s) after one warm-up, %d threads\n",
      steps, at::get_num_threads());
  std::fflush(stdout);
  char self[4096];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n <= 0) return 1;
  self[n] = '\0';
  for (const char* dtype : {"fp32", "bf16"}) {
    for (const char* mode : {"off", "on"}) {
      const std::string cmd = std::string(self) + " --child " + mode + " " + dtype + " " + std::to_string(steps);
      if (std::system(cmd.c_str()) != 0) std::printf("%s %s: failed\n", dtype, mode);
    }
  }
  return 0;
}
