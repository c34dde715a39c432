#include "trainers/perf_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/profiler_legacy.h>
#include <torch/cuda.h>
#include <torch/optim/adamw.h>
#include <torch/types.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/peft_model.h"
#include "trainers/loss.h"
#include "trainers/process_stats.h"
#include "trainers/train_step.h"

namespace peft::trainers {
namespace {

// Waits for the device's queued work (CUDA); nothing on the CPU.
void sync(const at::Device& d) {
  if (d.is_cuda()) torch::cuda::synchronize(d.index());
}

// GFLOP/s of [m, k] x [k, n] in `dtype` on `device`, timed over about
// `seconds` (CUDA: in batches of 10 products between synchronisations).
double matmul_gflops(int64_t m, int64_t k, int64_t n, at::ScalarType dtype, const at::Device& device, double seconds) {
  const at::Tensor a = at::randn({m, k}).to(device, dtype), b = at::randn({k, n}).to(device, dtype);
  at::Tensor c = at::mm(a, b);
  sync(device);
  const int batch = device.is_cuda() ? 10 : 1;
  int64_t iters = 0;
  const double t0 = now_seconds();
  double t = t0;
  while (t - t0 < seconds || iters < 2) {
    for (int i = 0; i < batch; ++i) at::mm_out(c, a, b);
    sync(device);
    iters += batch;
    t = now_seconds();
  }
  return 2.0 * static_cast<double>(m * k * n) * static_cast<double>(iters) / (t - t0) / 1e9;
}

}  // namespace

models::ModelConfig perf_model_config(const PerfOptions& o) {
  models::ModelConfig c;
  c.arch = models::Architecture::kLlama;
  c.llama.vocab_size = o.vocab;
  c.llama.hidden_size = o.hidden;
  c.llama.intermediate_size = o.ffn;
  c.llama.num_hidden_layers = o.layers;
  c.llama.num_attention_heads = o.heads;
  c.llama.num_key_value_heads = o.heads;
  c.llama.head_dim = o.hidden / o.heads;
  c.llama.max_position_embeddings = std::max<int64_t>(o.seq, 512);
  return c;
}

proto::AdapterConfig perf_adapter(const PerfOptions& o) {
  proto::AdapterConfig ac;
  ac.set_name("default");
  ac.mutable_lora()->set_r(static_cast<int32_t>(o.lora_r));
  ac.mutable_lora()->set_alpha(static_cast<float>(2 * o.lora_r));
  ac.mutable_target()->set_preset("all_linear");
  return ac;
}

data::Batch perf_batch(const PerfOptions& o, const at::Device& device) {
  // Random tokens, a fixed batch: the data pipeline is not what is measured.
  at::manual_seed(0);
  const at::Tensor ids = at::randint(o.vocab, {o.batch, o.seq + 1}, at::kLong).to(device);
  data::Batch b;
  b.input_ids = ids.narrow(1, 0, o.seq).contiguous();
  b.labels = ids.narrow(1, 1, o.seq).contiguous();
  b.tokens = b.global_tokens = o.batch * o.seq;
  return b;
}

absl::StatusOr<PerfResult> run_perf_benchmark(PerfOptions o) {
  const bool cuda = o.device == "cuda";
  if (o.warmup_steps == -1) o.warmup_steps = cuda ? 5 : 2;
  if (o.steps == 0) o.steps = cuda ? 20 : 6;
  if (o.threads < 1 || o.steps < 1 || o.warmup_steps < 0 || o.batch < 1 || o.seq < 2 || o.hidden % o.heads != 0) {
    return absl::InvalidArgumentError("perf benchmark: need threads, steps, batch >= 1, seq >= 2, heads | hidden");
  }
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("perf benchmark: device must be cpu or cuda, got '", o.device, "'"));
  }
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError("perf benchmark: --device=cuda but no CUDA device is available");
  }
  const at::Device device(o.device == "cuda" ? at::kCUDA : at::kCPU, o.device == "cuda" ? 0 : -1);
  at::set_num_threads(o.threads);
  PerfResult r;
  r.options = o;
  const at::ScalarType dtype = o.bf16 ? at::kBFloat16 : at::kFloat;
  const int64_t rows = o.batch * o.seq;

  // 1. The machine's matmul rate: the model's GEMMs (forward x·Wᵀ and the
  // input gradient) at this batch, the head's chunks, and a square.
  const std::vector<std::array<int64_t, 3>> shapes = {{rows, o.hidden, o.hidden}, {rows, o.hidden, o.ffn},
                                                      {rows, o.ffn, o.hidden},    {256, o.hidden, o.vocab},
                                                      {256, o.vocab, o.hidden},   {2048, 2048, 2048}};
  std::vector<std::array<int64_t, 3>> all_shapes = shapes;
  if (device.is_cuda()) all_shapes.push_back({8192, 8192, 8192});  // what a GPU's peak needs
  for (const auto& s : all_shapes) {
    MatmulRate m;
    m.shape = absl::StrCat(s[0], "x", s[1], "x", s[2]);
    m.gflops = matmul_gflops(s[0], s[1], s[2], dtype, device, o.matmul_seconds);
    r.peak_matmul_gflops = std::max(r.peak_matmul_gflops, m.gflops);
    r.matmul.push_back(m);
  }

  // 2. The model: random weights, LoRA r on every linear projection.
  const models::ModelConfig c = perf_model_config(o);
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::create_model(c));
  models::init_weights_(*lm, 1);
  lm->module().to(device);  // adapters follow their base weight's device
  PeftModel pm(lm);
  r.base_parameters = pm.num_parameters();
  const proto::AdapterConfig ac = perf_adapter(o);
  PEFT_RETURN_IF_ERROR(pm.add_adapter(ac, 0));
  PEFT_RETURN_IF_ERROR(pm.set_active("default"));
  pm.freeze_base_();
  std::vector<at::Tensor> params;
  for (const auto& p : pm.trainable_parameters()) params.push_back(p.second);
  r.trainable_parameters = pm.num_trainable();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-4).weight_decay(0.0));

  // FLOPs per token (see the header).
  const double C = static_cast<double>(o.hidden), F = static_cast<double>(o.ffn), L = static_cast<double>(o.layers);
  const double T = static_cast<double>(o.seq), V = static_cast<double>(o.vocab), R = static_cast<double>(o.lora_r);
  const double n_proj = L * (4 * C * C + 3 * C * F), n_head = V * C;
  const double lora_io = L * (4 * (C + C) + 2 * (C + F) + (F + C));  // Σ (in + out) over adapted projections
  r.flops_per_token = 4 * n_proj + 4 * n_head + 12 * L * T * C + 6 * R * lora_io;

  // 3. Training steps on random tokens (a fixed batch: the data pipeline is
  // not what is measured).
  const data::Batch batch = perf_batch(o, device);
  // The trainer's own step: uniform weights, clipping at 1, no accumulation.
  StepOptions so;
  so.bf16 = o.bf16;
  so.fused_loss = o.fused_loss;
  so.max_grad_norm = 1.0;
  so.peak_lr = 1e-4;
  StepContext ctx{pm, opt, params, /*pg=*/nullptr, DataParallelGroup()};
  std::vector<double> times;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("perf benchmark step", [&] {
    for (int step = 0; step < o.warmup_steps + o.steps; ++step) {
      std::unique_ptr<torch::autograd::profiler::RecordProfile> trace;
      if (!o.trace_file.empty() && step == o.warmup_steps + o.steps - 1) {
        trace = std::make_unique<torch::autograd::profiler::RecordProfile>(o.trace_file);
      }
      if (step == o.warmup_steps) reset_peak_cuda_mb(device);
      sync(device);
      const double t0 = now_seconds();
      absl::StatusOr<StepResult> res = train_step(ctx, so, {batch}, step, 1e-4);
      TORCH_CHECK(res.ok(), std::string(res.status().message()));
      sync(device);
      const double lv = res->loss;
      if (step == 0) r.first_loss = lv;
      r.last_loss = lv;
      if (step >= o.warmup_steps) times.push_back(now_seconds() - t0);
    }
  }));
  std::sort(times.begin(), times.end());
  r.step_seconds = times[times.size() / 2];
  r.tokens_per_second = static_cast<double>(rows) / r.step_seconds;
  r.achieved_gflops = r.tokens_per_second * r.flops_per_token / 1e9;
  r.mfu = r.achieved_gflops / r.peak_matmul_gflops;
  for (const auto& item : pm.model().module().named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) continue;
    if (item.value().grad().defined()) ++r.base_parameters_with_grad;
  }
  r.peak_rss_mb = peak_rss_mb();
  r.peak_device_mb = peak_cuda_mb(device);
  return r;
}

std::string perf_result_json(const PerfResult& r) {
  nlohmann::ordered_json mm = nlohmann::ordered_json::array();
  for (const MatmulRate& m : r.matmul) mm.push_back({{"shape", m.shape}, {"gflops", m.gflops}});
  const PerfOptions& o = r.options;
  nlohmann::ordered_json j = {
      {"impl", "peft-cpp"},
      {"precision", o.bf16 ? "bf16" : "fp32"},
      {"device", o.device},
      {"fused_loss", o.fused_loss},
      {"threads", o.threads},
      {"model", {{"hidden", o.hidden}, {"layers", o.layers}, {"heads", o.heads}, {"ffn", o.ffn}, {"vocab", o.vocab}}},
      {"batch", o.batch},
      {"seq", o.seq},
      {"lora_r", o.lora_r},
      {"warmup_steps", o.warmup_steps},
      {"measured_steps", o.steps},
      {"matmul", mm},
      {"peak_matmul_gflops", r.peak_matmul_gflops},
      {"base_parameters", r.base_parameters},
      {"trainable_parameters", r.trainable_parameters},
      {"base_parameters_with_grad", r.base_parameters_with_grad},
      {"flops_per_token", r.flops_per_token},
      {"step_s_median", r.step_seconds},
      {"tokens_per_s", r.tokens_per_second},
      {"achieved_gflops", r.achieved_gflops},
      {"mfu", r.mfu},
      {"peak_rss_mb", r.peak_rss_mb},
      {"peak_device_mb", r.peak_device_mb},
      {"first_loss", r.first_loss},
      {"last_loss", r.last_loss},
  };
  return j.dump();
}

}  // namespace peft::trainers
