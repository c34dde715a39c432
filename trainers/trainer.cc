#include "trainers/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>
#include <torch/types.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "models/model_io.h"
#include "peft/core/autocast.h"
#include "peft/core/process_stats.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "peft/peft_model.h"
#include "peft/sorsa/regularizer_step.h"
#include "trainers/checkpoint.h"
#include "trainers/distributed.h"
#include "trainers/loss.h"
#include "trainers/lr_schedule.h"
#include "trainers/progress.h"
#include "trainers/recipe.h"
#include "trainers/reweighting.h"
#include "trainers/stop_signal.h"
#include "trainers/train_step.h"

namespace peft::trainers {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// The batch's tensors on the training device (the loader builds them on the
// CPU); a CPU batch is returned as it is.
data::Batch to_device(data::Batch b, const at::Device& device) {
  if (device.is_cpu()) return b;
  b.input_ids = b.input_ids.to(device);
  b.labels = b.labels.to(device);
  if (b.attention_mask.defined()) b.attention_mask = b.attention_mask.to(device);
  return b;
}

// Every rank's generator states (index = rank), for the checkpoint that rank
// 0 writes: one all_gather of the raw bytes, which have the same layout on
// every rank. NCCL gathers device memory, Gloo host memory.
absl::StatusOr<std::vector<RngState>> gather_rng_states(ProcessGroup& pg, const at::Device& device) {
  const RngState mine = capture_rng_state(device);
  if (pg.world_size() == 1) return std::vector<RngState>{mine};
  const int64_t n_cpu = mine.cpu.numel(), n_cuda = mine.cuda.defined() ? mine.cuda.numel() : 0;
  at::Tensor flat = n_cuda > 0 ? at::cat({mine.cpu, mine.cuda.to(at::kCPU)}) : mine.cpu;  // [n_cpu + n_cuda] uint8
  if (pg.backend() == Backend::kNccl) flat = flat.to(device);
  PEFT_ASSIGN_OR_RETURN(at::Tensor all, pg.all_gather(flat));  // [world * (n_cpu + n_cuda)]
  all = all.to(at::kCPU);
  std::vector<RngState> out(pg.world_size());
  for (int r = 0; r < pg.world_size(); ++r) {
    const int64_t offset = r * (n_cpu + n_cuda);
    out[r].cpu = all.narrow(0, offset, n_cpu).clone();
    if (n_cuda > 0) out[r].cuda = all.narrow(0, offset + n_cpu, n_cuda).clone();
  }
  return out;
}

ScheduleOptions schedule_options(const proto::Recipe& r) {
  ScheduleOptions s;
  s.peak_lr = r.optimizer().lr();
  s.total_steps = r.training().steps();
  s.warmup_steps = r.schedule().warmup_steps();
  s.min_lr_ratio = r.schedule().min_lr_ratio();
  s.decay = r.schedule().kind() == proto::ScheduleConfig::LINEAR     ? LrDecay::kLinear
            : r.schedule().kind() == proto::ScheduleConfig::CONSTANT ? LrDecay::kConstant
                                                                      : LrDecay::kCosine;
  return s;
}

// Mean next-token NLL over up to `max_batches` batches of `ds`.
absl::StatusOr<double> evaluate(PeftModel& pm, const data::Dataset& ds, int64_t batch, int64_t max_batches, bool bf16,
                                const at::Device& device) {
  if (ds.size() == 0) return std::nan("");
  torch::NoGradGuard no_grad;
  pm.model().module().eval();
  double sum = 0;
  int64_t tokens = 0;
  for (int64_t start = 0, b = 0; start < ds.size() && b < max_batches; start += batch, ++b) {
    std::vector<int64_t> idx;
    for (int64_t i = start; i < std::min(ds.size(), start + batch); ++i) idx.push_back(i);
    PEFT_ASSIGN_OR_RETURN(data::Batch collated, ds.collate(idx));
    const data::Batch bt = to_device(std::move(collated), device);
    AutocastScope ac(bf16, device.type());
    PerSampleLoss ps = causal_lm_loss(pm.model(), bt.input_ids, bt.labels);
    sum += (ps.loss.to(at::kDouble) * ps.token_counts.to(at::kDouble)).sum().item<double>();
    tokens += ps.token_counts.sum().item<int64_t>();
  }
  pm.model().module().train();
  return tokens ? sum / static_cast<double>(tokens) : std::nan("");
}

std::string loss_svg(const std::vector<std::pair<int64_t, double>>& train,
                     const std::vector<std::pair<int64_t, double>>& eval) {
  const double w = 640, h = 360, m = 40;
  double xmax = 1, ymin = 1e30, ymax = -1e30;
  for (const auto* series : {&train, &eval}) {
    for (const auto& [s, l] : *series) {
      if (!std::isfinite(l)) continue;
      xmax = std::max(xmax, static_cast<double>(s));
      ymin = std::min(ymin, l);
      ymax = std::max(ymax, l);
    }
  }
  if (ymin > ymax) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-9) ymax = ymin + 1;
  auto pts = [&](const std::vector<std::pair<int64_t, double>>& s) {
    std::string p;
    for (const auto& [x, y] : s) {
      if (!std::isfinite(y)) continue;
      absl::StrAppendFormat(&p, "%.1f,%.1f ", m + (w - 2 * m) * x / xmax, h - m - (h - 2 * m) * (y - ymin) / (ymax - ymin));
    }
    return p;
  };
  std::string svg = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"sans-serif\" "
      "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
      "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n"
      "<text x=\"%.0f\" y=\"%.0f\">step (max %.0f)</text>\n<text x=\"4\" y=\"%.0f\">%.3f</text>\n"
      "<text x=\"4\" y=\"%.0f\">%.3f</text>\n",
      w, h, m, h - m, w - m, h - m, m, m, m, h - m, w / 2 - 30, h - 10, xmax, m, ymax, h - m, ymin);
  absl::StrAppend(&svg, "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" points=\"", pts(train),
                  "\"/>\n<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" points=\"", pts(eval),
                  "\"/>\n<text x=\"", w - 190, "\" y=\"20\" fill=\"#1f77b4\">train loss</text>\n<text x=\"", w - 110,
                  "\" y=\"20\" fill=\"#d62728\">eval loss</text>\n</svg>\n");
  return svg;
}

// A finished run's summary.json back into a TrainSummary (losses absent or
// null read as NaN).
void summary_from_json(const json& saved, TrainSummary* summary) {
  auto number = [&saved](const char* key) {
    return saved.contains(key) && saved[key].is_number() ? saved[key].get<double>() : std::nan("");
  };
  summary->steps = saved.value("steps", int64_t{0});
  summary->resumed_from_step = summary->steps;
  summary->trainable_parameters = saved.value("trainable_parameters", int64_t{0});
  summary->first_train_loss = number("first_train_loss");
  summary->final_train_loss = number("final_train_loss");
  summary->initial_eval_loss = number("initial_eval_loss");
  summary->final_eval_loss = number("final_eval_loss");
  summary->tokens_per_second = number("tokens_per_second");
  summary->skipped_steps = saved.value("skipped_steps", int64_t{0});
}

// A resumed run's metrics.jsonl: keeps the lines up to the checkpoint's
// `step` (later ones belong to steps that run again, and a killed run may
// have left a torn last line), rewritten atomically, and returns the loss
// curves they hold.
absl::Status trim_metrics(const std::string& path, int64_t step, std::vector<std::pair<int64_t, double>>* train,
                          std::vector<std::pair<int64_t, double>>* eval) {
  std::ifstream in(path);
  if (!in) return absl::OkStatus();
  std::string kept, line;
  while (std::getline(in, line)) {
    const json m = json::parse(line, nullptr, false);
    if (!m.is_object() || !m.contains("step") || !m["step"].is_number_integer()) continue;
    const int64_t s = m["step"].get<int64_t>();
    if (s > step) continue;
    kept += line + "\n";
    if (m.contains("loss") && m["loss"].is_number()) train->emplace_back(s, m["loss"].get<double>());
    if (m.contains("eval_loss") && m["eval_loss"].is_number()) eval->emplace_back(s, m["eval_loss"].get<double>());
  }
  in.close();
  return io::write_file_atomically(path, kept);
}

// Progress of reading and tokenizing a large data file: a log line every
// 5 s, none for a file that takes less.
std::function<void(int64_t, int64_t)> data_progress(const std::function<void(const std::string&)>& log,
                                                    const std::string& name) {
  const double start = now_seconds();
  auto last = std::make_shared<double>(start);
  return [log, name, start, last](int64_t done, int64_t total) {
    const double now = now_seconds();
    if (now - *last < 5.0 || done <= 0 || total <= 0) return;
    *last = now;
    const double rate = static_cast<double>(done) / std::max(now - start, 1e-9);
    log(absl::StrFormat("data: %s %.0f%% (%.0f of %.0f MB, %.1f MB/s, ETA %s)", name, 100.0 * done / total,
                        done / 1e6, total / 1e6, rate / 1e6, clock_text(static_cast<double>(total - done) / rate)));
  };
}

}  // namespace

absl::StatusOr<TrainSummary> train(const proto::Recipe& recipe, const TrainOptions& options) {
  PEFT_RETURN_IF_ERROR(validate_recipe(recipe));
  auto log = options.log ? options.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); };
  const bool tty = isatty(2) && recipe.logging().progress_bar() && !options.log;
  const proto::TrainingConfig& tc = recipe.training();
  at::set_num_threads(tc.threads() > 0 ? tc.threads() : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  at::manual_seed(tc.seed());
  const bool bf16 = tc.precision() == proto::TrainingConfig::BF16;

  // Data parallel: the torchrun environment (RANK, WORLD_SIZE, ...); one
  // process when absent. Only trainable gradients are all-reduced.
  PEFT_ASSIGN_OR_RETURN(DistributedEnv env, distributed_env_from_environ());
  // The device: cuda:LOCAL_RANK (one GPU per rank) or the CPU.
  at::Device device(at::kCPU);
  std::optional<c10::DeviceGuard> device_guard;  // CUDA: the current device for the run
  if (resolved_device(recipe) == proto::TrainingConfig::CUDA) {
    const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
    // Without LOCAL_RANK (one process per Kubernetes pod, or RANK set by
    // hand) ranks take the visible GPUs in turn.
    if (!env.local_rank_given && gpus > 0) env.local_rank = static_cast<int>(env.rank % gpus);
    if (env.local_rank >= gpus) {
      return absl::FailedPreconditionError(
          absl::StrCat("training.device: CUDA needs one GPU per rank, but LOCAL_RANK=", env.local_rank, " and this ",
                       "machine has ", gpus, " CUDA device(s); start at most ", gpus, " ranks per node"));
    }
    device = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
    device_guard.emplace(device);
  }
  const Backend backend =
      resolved_backend(recipe) == proto::DistributedConfig::NCCL ? Backend::kNccl : Backend::kGloo;
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<ProcessGroup> pg,
                        ProcessGroup::create(env, backend, std::chrono::seconds(recipe.distributed().timeout_s())));
  const bool main_rank = env.rank == 0;
  if (!main_rank) log = [](const std::string&) {};

  // The run directory: refuse to mix two runs. It is created only once the
  // model, adapters and data have loaded, so a recipe that fails to start
  // leaves nothing behind.
  const std::string run = recipe.output_dir();
  TrainSummary summary;
  summary.run_dir = run;
  summary.rank = env.rank;
  PEFT_ASSIGN_OR_RETURN(std::optional<std::string> latest, latest_checkpoint(run));
  const int64_t latest_step = latest ? checkpoint_step(*latest) : -1;
  std::error_code exists_ec;
  const bool finished = fs::exists(run + "/summary.json", exists_ec);
  const bool started = finished || fs::exists(run + "/metrics.jsonl", exists_ec);
  // Every rank must see the same run directory (one filesystem shared by the
  // job): else some would resume and others start afresh.
  if (env.world_size > 1) {
    at::Tensor mine = at::tensor({latest_step, int64_t{finished}, int64_t{started}}, at::kLong);
    if (backend == Backend::kNccl) mine = mine.to(device);
    PEFT_ASSIGN_OR_RETURN(at::Tensor all, pg->all_gather(mine));
    all = all.to(at::kCPU).view({env.world_size, 3});
    if (!all.eq(all[0]).all().item<bool>()) {
      std::vector<std::string> seen;
      for (int r = 0; r < env.world_size; ++r) {
        const int64_t s = all[r][0].item<int64_t>();
        seen.push_back(absl::StrCat("rank ", r, ": ", s < 0 ? std::string("no checkpoint") : absl::StrCat("step ", s),
                                    all[r][1].item<int64_t>() ? ", finished" : ""));
      }
      return absl::FailedPreconditionError(absl::StrCat(
          "the ranks see different run directories at ", run, " (", absl::StrJoin(seen, "; "),
          "): every rank must see the same output_dir, on a filesystem the job shares"));
    }
  }
  if (latest && !options.resume) {
    return absl::FailedPreconditionError(
        absl::StrCat(run, " already holds checkpoints of a run: pass --resume to continue it, or another output_dir"));
  }
  // A run directory with another run's outputs but no checkpoint: never
  // overwrite it silently (checkpoint.every_steps = 0 keeps none). Every rank
  // sees the same files here (checked above; rank 0 writes metrics.jsonl only
  // after the initial broadcast below, which no rank passes before all got
  // here).
  if (!latest && started && !options.resume) {
    return absl::FailedPreconditionError(absl::StrCat(run, " already holds the output of a run (",
                                                      finished ? "summary.json" : "metrics.jsonl",
                                                      "): pass another output_dir, or --resume to continue it"));
  }
  if (options.resume) {
    if (latest && latest_step > tc.steps()) {
      return absl::InvalidArgumentError(absl::StrCat("training.steps: ", tc.steps(), " is fewer than the ", latest_step,
                                                     " steps the run's newest checkpoint ", *latest, " has done"));
    }
    json saved;
    if (finished) {
      std::ifstream in(run + "/summary.json");
      saved = json::parse(in, nullptr, false);
    }
    const int64_t done = saved.is_object() ? saved.value("steps", int64_t{-1}) : -1;
    if (finished && !latest && done != tc.steps()) {
      return absl::FailedPreconditionError(absl::StrCat(
          run, " holds a run that finished at step ", done, " without checkpoints (checkpoint.every_steps = 0), ",
          "so it cannot be continued to training.steps = ", tc.steps(), ": pass another output_dir"));
    }
    // A finished run (outputs written, and its newest checkpoint, if any, is
    // the last step) is left as it is.
    if (finished && done == tc.steps() && (!latest || latest_step == done)) {
      log(absl::StrCat("the run in ", run, " is already complete at step ", done, "; nothing to do",
                       latest ? " (raise training.steps to train further)" : ""));
      summary_from_json(saved, &summary);
      return summary;
    }
    if (!latest) log(absl::StrCat("no checkpoint in ", run, "; starting from step 0"));
  }
  const ScheduleOptions sched = schedule_options(recipe);
  PEFT_RETURN_IF_ERROR(sched.validate());
  const StepOptions step_opts = step_options(recipe);
  const ReweightOptions& rw = step_opts.reweight;
  PEFT_RETURN_IF_ERROR(rw.validate());
  if (rw.strategy != ReweightStrategy::kUniform && rw.warmup_steps >= tc.steps()) {
    log(absl::StrCat("note: reweighting never starts: warm-up ", rw.warmup_steps, " >= ", tc.steps(),
                     " steps (reweighting.warmup_steps; the official default is 1000, set 0 to reweight from the "
                     "first step)"));
  }

  // Model, tokenizer, adapters.
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm,
                        with_context(models::load_model(recipe.model()), "model"));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok,
                        with_context(data::load_tokenizer(recipe.has_tokenizer() ? recipe.tokenizer() : recipe.model()),
                                     recipe.has_tokenizer() ? "tokenizer" : "tokenizer (from model)"));
  if (tok->vocab_size() > lm->config().vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer has ", tok->vocab_size(), " ids, the model only ",
                                                   lm->config().vocab_size()));
  }
  // Data (before the adapters: bad data is reported before any work).
  data::DataOptions dopts = data_options(recipe);
  dopts.threads = tc.threads();  // 0: every core, as for training
  dopts.progress = data_progress(log, recipe.data().train_file());
  PEFT_ASSIGN_OR_RETURN(data::DataSplits splits, data::load_dataset(recipe.data().train_file(), *tok, dopts));
  log(splits.stats.summary());
  data::Dataset validation = splits.validation;
  if (recipe.data().has_validation_file()) {
    dopts.progress = data_progress(log, recipe.data().validation_file());
    PEFT_ASSIGN_OR_RETURN(data::DataSplits v, data::load_dataset(recipe.data().validation_file(), *tok, dopts));
    validation = v.train;
  }
  // Per-block activation checkpointing (models/checkpoint.h): recompute each
  // block in backward instead of keeping its activations.
  lm->set_activation_checkpointing(tc.activation_checkpointing());
  PeftModel pm(lm);
  std::vector<std::pair<std::string, double>> active;
  for (int i = 0; i < recipe.adapters_size(); ++i) {
    const proto::AdapterConfig& a = recipe.adapters(i);
    PEFT_RETURN_IF_ERROR(with_context(pm.add_adapter(a, tc.seed()), absl::StrCat("adapters.", i, " '", a.name(), "'")));
    active.emplace_back(a.name(), 1.0);
  }
  if (!active.empty()) {
    PEFT_RETURN_IF_ERROR(pm.set_active(active));
    pm.freeze_base_();
  }
  // Adapters are built on the CPU (the same initial values on every device)
  // and move with the model.
  if (!device.is_cpu()) {
    PEFT_RETURN_IF_ERROR(status_from_torch_error("moving the model to the training device",
                                                 [&] { lm->module().to(device); }));
  }
  std::vector<std::pair<std::string, at::Tensor>> trainable = pm.trainable_parameters();
  int64_t n_trainable = 0;
  for (const auto& p : trainable) n_trainable += p.second.numel();
  if (!active.empty()) log(pm.summary());
  summary.trainable_parameters = n_trainable;
  if (options.dry_run) {
    log(absl::StrCat("dry run: the recipe, model, tokenizer, data and adapters are valid (", n_trainable,
                     " trainable parameters, ", splits.stats.train_examples, " training examples); nothing written"));
    return summary;
  }

  // Resuming under another recipe is allowed (more steps, say), but it is
  // said: only the same recipe continues exactly.
  if (latest && options.resume) {
    absl::StatusOr<proto::Recipe> before = read_recipe(run + "/recipe.textproto");
    if (!before.ok() && !absl::IsNotFound(before.status())) {
      log(absl::StrCat("note: cannot compare with the run's saved recipe: ", before.status().message()));
    } else if (before.ok()) {
      if (std::string d = recipe_differences(*before, recipe); !d.empty()) {
        log(absl::StrCat("note: resuming under a recipe that differs from the run's (the new values apply; the run ",
                         "is no longer the same as one uninterrupted run):\n", d));
      }
    }
  }
  std::error_code ec;
  fs::create_directories(run, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", run, ": ", ec.message()));
  if (main_rank) PEFT_RETURN_IF_ERROR(io::write_file_atomically(run + "/recipe.textproto", recipe_to_text(recipe)));
  const int64_t micro = tc.micro_batch();
  // The global batch is micro_batch x world; each rank reads its slice.
  data::BatchIterator it(splits.train, micro * env.world_size, env.rank, env.world_size);
  DataParallelGroup group;
  group.rank = env.rank;
  group.world_size = env.world_size;
  group.all_gather = [&pg](const at::Tensor& t) {
    absl::StatusOr<at::Tensor> g = pg->all_gather(t);
    if (!g.ok()) throw std::runtime_error(std::string(g.status().message()));
    return *g;
  };

  // Optimizer: no weight decay on norms and biases (1-D tensors).
  std::vector<at::Tensor> decay, no_decay, all_params;
  {
    // Every rank starts from rank 0's values (adapters are seeded alike;
    // this guards against any difference).
    std::vector<at::Tensor> values;
    for (const auto& p : trainable) values.push_back(p.second.detach());
    torch::NoGradGuard no_grad;
    PEFT_RETURN_IF_ERROR(pg->broadcast_(values, 0));
  }
  for (const auto& [name, p] : trainable) {
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
    all_params.push_back(p);
  }
  auto make_opts = [&](double wd) {
    return std::make_unique<torch::optim::AdamWOptions>(
        torch::optim::AdamWOptions(recipe.optimizer().lr())
            .betas({recipe.optimizer().beta1(), recipe.optimizer().beta2()})
            .eps(recipe.optimizer().eps())
            .weight_decay(wd));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, make_opts(recipe.optimizer().weight_decay()));
  groups.emplace_back(no_decay, make_opts(0.0));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(recipe.optimizer().lr()));

  TrainingState state;
  state.trainable = trainable;
  state.world_size = env.world_size;
  if (latest && options.resume) {
    PEFT_RETURN_IF_ERROR(load_training_state(*latest, &state, opt, env.rank, device));
    PEFT_RETURN_IF_ERROR(it.restore({state.data_epoch, state.data_index}));
    summary.resumed_from_step = state.step;
    log(absl::StrCat("resumed from ", *latest, " at step ", state.step));
    if (state.world_size > 0 && state.world_size != env.world_size) {
      log(absl::StrCat("note: the checkpoint was written by ", state.world_size, " ranks and this run has ",
                       env.world_size, ": the global batch changes from ", micro * state.world_size * tc.grad_accum(),
                       " to ", micro * env.world_size * tc.grad_accum(),
                       " examples (the run is no longer the same as one uninterrupted run)"));
    }
    state.world_size = env.world_size;
  }
  // Stream adapters' schedules (HSM) continue where the run stopped.
  pm.on_step(schedule_step(state.step));
  StepContext step_ctx{pm, opt, all_params, pg.get(), group};
  bool has_sorsa = false;
  for (const proto::AdapterConfig& a : recipe.adapters()) has_sorsa = has_sorsa || a.has_sorsa();

  // Metrics: appended (a resumed run continues the same file, cut back to
  // the checkpoint's step, and its loss curve covers the whole run).
  std::vector<std::pair<int64_t, double>> train_curve, eval_curve;
  if (main_rank && state.step > 0) {
    PEFT_RETURN_IF_ERROR(trim_metrics(run + "/metrics.jsonl", state.step, &train_curve, &eval_curve));
  }
  std::ofstream metrics;
  if (main_rank) metrics.open(run + "/metrics.jsonl", state.step > 0 ? std::ios::app : std::ios::trunc);
  // A resumed run reports the whole run's first loss and step-0 eval loss.
  if (!train_curve.empty()) summary.first_train_loss = train_curve.front().second;
  if (state.step > 0 && !eval_curve.empty() && eval_curve.front().first == 0) {
    summary.initial_eval_loss = eval_curve.front().second;
  } else {
    PEFT_ASSIGN_OR_RETURN(summary.initial_eval_loss,
                          evaluate(pm, validation, micro * env.world_size, recipe.eval().max_batches(), bf16, device));
  }
  if (state.step == 0 && std::isfinite(summary.initial_eval_loss)) {
    eval_curve.emplace_back(0, summary.initial_eval_loss);
    metrics << json{{"step", 0}, {"eval_loss", summary.initial_eval_loss},
                    {"eval_perplexity", std::exp(summary.initial_eval_loss)}}.dump() << "\n";
  }
  pm.model().module().train();
  // SIGINT/SIGTERM end the run after the current step, with a checkpoint.
  StopSignals stop_signals(/*announce=*/main_rank, /*repeat_kills=*/true);
  auto save_checkpoint = [&]() -> absl::Status {
    const data::DataPosition pos = it.position();
    state.data_epoch = pos.epoch;
    state.data_index = pos.index;
    // Every rank's generators go into rank 0's checkpoint (a collective:
    // all ranks reach it at the same step).
    PEFT_ASSIGN_OR_RETURN(state.rng, gather_rng_states(*pg, device));
    if (main_rank) PEFT_RETURN_IF_ERROR(save_training_state(run, state, opt, recipe.checkpoint().keep_last()));
    return absl::OkStatus();
  };
  const double t_start = now_seconds();
  int64_t tokens_seen = 0;
  const int64_t total = tc.steps();
  for (int64_t step = state.step; step < total; ++step) {
    const double t0 = now_seconds();
    const double lr = learning_rate(sched, step);
    std::vector<data::Batch> micro_batches;
    for (int a = 0; a < tc.grad_accum(); ++a) {
      PEFT_ASSIGN_OR_RETURN(data::Batch b, it.next());
      micro_batches.push_back(to_device(std::move(b), device));
    }
    PEFT_ASSIGN_OR_RETURN(const StepResult r, train_step(step_ctx, step_opts, micro_batches, step, lr));
    const double step_loss = r.loss, grad_norm = r.grad_norm;
    const int64_t step_tokens = r.tokens;
    const bool stop_requested = r.stop_requested;
    const WeightStats& ws = r.weights;
    if (!r.applied) {
      if (tc.on_nonfinite() == proto::TrainingConfig::STOP_RUN) {
        return absl::DataLossError(absl::StrCat("non-finite loss or gradient at step ", step + 1,
                                                " (training.on_nonfinite = STOP_RUN)"));
      }
      log(absl::StrCat("warning: non-finite loss or gradient at step ", step + 1, "; step skipped"));
      ++summary.skipped_steps;
    }
    state.step = step + 1;
    tokens_seen += step_tokens;
    const double dt = now_seconds() - t0;
    if (std::isnan(summary.first_train_loss)) summary.first_train_loss = step_loss;
    summary.final_train_loss = step_loss;
    train_curve.emplace_back(step + 1, step_loss);
    json m = {{"step", step + 1},       {"loss", step_loss},     {"lr", lr},
              {"grad_norm", grad_norm}, {"tokens", step_tokens}, {"tokens_per_s", step_tokens / std::max(dt, 1e-9)},
              {"peak_rss_mb", peak_rss_mb()}};
    if (device.is_cuda()) m["peak_cuda_mb"] = peak_cuda_mb(device);
    if (has_sorsa) m["orthonormality"] = sorsa_orthonormality(pm);  // calc_ortho, without gamma
    if (rw.strategy != ReweightStrategy::kUniform) {
      m["weights"] = {{"min", ws.min}, {"max", ws.max}, {"entropy", ws.entropy}, {"ess", ws.effective_sample_size}};
    }
    const bool eval_now = recipe.eval().every_steps() > 0 && (step + 1) % recipe.eval().every_steps() == 0;
    if (eval_now && step + 1 < total) {
      PEFT_ASSIGN_OR_RETURN(double ev, evaluate(pm, validation, micro * env.world_size, recipe.eval().max_batches(), bf16, device));
      m["eval_loss"] = ev;
      m["eval_perplexity"] = std::exp(ev);
      eval_curve.emplace_back(step + 1, ev);
    }
    if (main_rank) metrics << m.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
    const double elapsed = now_seconds() - t_start;
    const double eta = elapsed / (step + 1 - summary.resumed_from_step) * (total - step - 1);
    const std::string line = absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s", step + 1, total,
                                             step_loss, lr, tokens_seen / std::max(elapsed, 1e-9), clock_text(eta));
    if (tty) {
      std::fprintf(stderr, "\r%s %s\033[K", progress_bar(step + 1, total).c_str(), line.c_str());
    } else if ((step + 1) % recipe.logging().every_steps() == 0 || step + 1 == total) {
      log(line);
    }
    // Every every_steps steps and after the last one, so that --resume with
    // more training.steps continues a finished run instead of redoing its tail.
    const bool stop_now = stop_requested && step + 1 < total;
    if (stop_now || (recipe.checkpoint().every_steps() > 0 &&
                     ((step + 1) % recipe.checkpoint().every_steps() == 0 || step + 1 == total))) {
      PEFT_RETURN_IF_ERROR(save_checkpoint());
    }
    if (stop_now) {
      if (tty) std::fprintf(stderr, "\n");
      const int sig = StopSignals::pending();
      return absl::AbortedError(absl::StrCat(
          "stopped by ", sig != 0 ? StopSignals::name(sig) : std::string("a stop signal on another rank"),
          " after step ", step + 1, " of ", total, "; checkpoint ", checkpoint_dir(run, step + 1),
          " saved: continue with --resume"));
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  summary.steps = state.step;
  summary.tokens_per_second = tokens_seen / std::max(now_seconds() - t_start, 1e-9);
  PEFT_ASSIGN_OR_RETURN(summary.final_eval_loss, evaluate(pm, validation, micro * env.world_size, recipe.eval().max_batches(), bf16, device));
  PEFT_RETURN_IF_ERROR(pg->barrier());
  if (!main_rank) return summary;  // rank 0 writes the outputs
  if (std::isfinite(summary.final_eval_loss)) {
    eval_curve.emplace_back(state.step, summary.final_eval_loss);
    metrics << json{{"step", state.step}, {"eval_loss", summary.final_eval_loss},
                    {"eval_perplexity", std::exp(summary.final_eval_loss)}}.dump() << "\n";
  }
  metrics.close();

  // Outputs: the adapters in the PEFT layout (or the full model), merged model.
  for (const proto::AdapterConfig& a : recipe.adapters()) {
    const std::string dir = recipe.adapters_size() == 1 ? run + "/adapter" : run + "/adapter_" + a.name();
    PEFT_RETURN_IF_ERROR(pm.save_adapter(dir, a.name(), /*overwrite=*/true, recipe.model()));
  }
  // Model directories carry the tokenizer, so `peft generate --model=DIR` works.
  models::SaveOptions so;
  so.overwrite = true;
  so.extra_files = models::export_files(recipe.model(), recipe.tokenizer());
  if (recipe.adapters_size() == 0) {
    PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), run + "/model", so));
  } else if (recipe.checkpoint().merge_on_finish()) {
    PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
    PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), run + "/merged", so));
  }
  PEFT_RETURN_IF_ERROR(io::write_file_atomically(run + "/loss.svg", loss_svg(train_curve, eval_curve)));
  json s = {{"steps", summary.steps},
            {"resumed_from_step", summary.resumed_from_step},
            {"trainable_parameters", summary.trainable_parameters},
            {"first_train_loss", summary.first_train_loss},
            {"final_train_loss", summary.final_train_loss},
            {"initial_eval_loss", summary.initial_eval_loss},
            {"final_eval_loss", summary.final_eval_loss},
            {"tokens_per_second", summary.tokens_per_second},
            {"skipped_steps", summary.skipped_steps},
            {"peak_rss_mb", peak_rss_mb()}};
  if (device.is_cuda()) s["peak_cuda_mb"] = peak_cuda_mb(device);
  PEFT_RETURN_IF_ERROR(io::write_file_atomically(run + "/summary.json", s.dump(2) + "\n"));
  // One readable line for people (the CLI's stdout JSON is for programs).
  std::string done = absl::StrFormat("done: step %d in %s (%.0f tok/s)", summary.steps,
                                     clock_text(now_seconds() - t_start), summary.tokens_per_second);
  if (std::isfinite(summary.initial_eval_loss) && std::isfinite(summary.final_eval_loss)) {
    absl::StrAppendFormat(&done, "; eval loss %.4f -> %.4f (perplexity %.2f -> %.2f)", summary.initial_eval_loss,
                          summary.final_eval_loss, std::exp(summary.initial_eval_loss),
                          std::exp(summary.final_eval_loss));
  }
  std::string outputs = recipe.adapters_size() == 0 ? "model/" : (recipe.adapters_size() == 1 ? "adapter/" : "adapter_*/");
  if (recipe.adapters_size() > 0 && recipe.checkpoint().merge_on_finish()) outputs += ", merged/";
  log(absl::StrCat(done, "; wrote ", outputs, ", metrics.jsonl, loss.svg, summary.json in ", run));
  return summary;
}

}  // namespace peft::trainers
