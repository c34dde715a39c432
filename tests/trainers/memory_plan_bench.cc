// Benchmark for the memory plan's activation model (prints numbers, asserts
// nothing): one LoRA training step of a LLaMA-shaped model built in-process
// through the trainer's loss (trainers/loss.h), reporting what the forward
// pass keeps for backward (RSS after the forward, with the allocator's free
// memory returned by malloc_trim) and the step's peak above the model
// (VmHWM reset after the model is built), beside trainers::activation_bytes.
// Runs with the trainer's allocator setting (bound_allocator_retention);
// glibc_default=1 keeps glibc's growing mmap threshold instead.
//
//   bazel build //tests/trainers:memory_plan_bench
//   bazel-bin/tests/trainers/memory_plan_bench hidden=768 inter=2048 layers=8 heads=12 kv=12
//       vocab=32000 seq=512 micro=2 r=16 bf16=0 ckpt=0 (any subset, these are the defaults)
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <google/protobuf/text_format.h>

#include "models/model_io.h"
#include "peft/core/autocast.h"
#include "peft/peft_model.h"
#include "tests/testing/bench_args.h"
#include "tests/testing/tiny_models.h"
#include "trainers/loss.h"
#include "trainers/memory_plan.h"
#include "trainers/process_stats.h"

int main(int argc, char** argv) {
  std::map<std::string, int64_t> a = {
      {"hidden", 768}, {"inter", 2048}, {"layers", 8}, {"heads", 12}, {"kv", 12},     {"vocab", 32000},    {"seq", 512},
      {"micro", 2},    {"r", 16},       {"bf16", 0},   {"ckpt", 0},   {"threads", 2}, {"glibc_default", 0}};
  if (!peft::testing::parse_int_args(argc, argv, &a)) return 2;
  if (a.count("glibc_default") == 0 || a["glibc_default"] == 0) peft::trainers::bound_allocator_retention();
  at::set_num_threads(static_cast<int>(a["threads"]));
  peft::models::ModelConfig c;
  c.arch = peft::models::Architecture::kLlama;
  c.llama.vocab_size = a["vocab"];
  c.llama.hidden_size = a["hidden"];
  c.llama.intermediate_size = a["inter"];
  c.llama.num_hidden_layers = a["layers"];
  c.llama.num_attention_heads = a["heads"];
  c.llama.num_key_value_heads = a["kv"];
  c.llama.head_dim = a["hidden"] / a["heads"];
  c.llama.max_position_embeddings = a["seq"];
  std::shared_ptr<peft::models::CausalLm> lm = *peft::models::create_model(c);
  peft::models::init_weights_(*lm, 1);
  lm->set_activation_checkpointing(a["ckpt"] != 0);
  peft::PeftModel pm(lm);
  peft::proto::AdapterConfig ac;
  google::protobuf::TextFormat::ParseFromString(
      "name: \"default\" lora { r: " + std::to_string(a["r"]) + " alpha: 16 } target { preset: \"all_linear\" }", &ac);
  if (!pm.add_adapter(ac, 1).ok()) return 1;
  pm.freeze_base_();
  lm->module().train();
  const at::Tensor ids = peft::testing::sample_ids(a["vocab"], a["micro"], a["seq"], 3);
  malloc_trim(0);
  const double base = peft::trainers::proc_status_mb("VmRSS");
  peft::trainers::reset_peak_rss();
  double kept = 0;
  const double t0 = peft::trainers::now_seconds();
  {
    peft::AutocastScope scope(a["bf16"] != 0);
    const peft::trainers::PerSampleLoss ps = peft::trainers::causal_lm_loss(*lm, ids, ids);
    at::Tensor loss = ps.loss.mean();
    malloc_trim(0);
    kept = peft::trainers::proc_status_mb("VmRSS") - base;
    loss.backward();
  }
  const double seconds = peft::trainers::now_seconds() - t0;
  const double peak = peft::trainers::peak_rss_mb() - base;
  peft::trainers::MemoryPlanInput in;
  in.config = c;
  in.adapter_rank = a["r"];
  in.micro_batch = a["micro"];
  in.seq_len = a["seq"];
  in.bf16_compute = a["bf16"] != 0;
  const double plan = peft::trainers::activation_bytes(in, a["ckpt"] != 0) / 1e6;
  std::printf(
      "tokens %lld: forward keeps %.0f MB, step peak above the model %.0f MB (%.2f s); plan's activations %.0f MB\n",
      static_cast<long long>(a["micro"] * a["seq"]), kept, peak, seconds, plan);
  return 0;
}
