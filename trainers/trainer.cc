#include "trainers/trainer.h"

#include <torch/types.h>  // first: torch/nn/utils/clip_grad.h is not self-contained

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>
#include <torch/nn/utils/clip_grad.h>  // needs torch/types.h above
#include <torch/optim/adamw.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "models/model_io.h"
#include "peft/core/autocast.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "peft/io/file_lock.h"
#include "peft/peft_model.h"
#include "peft/sorsa/regularizer_step.h"
#include "trainers/checkpoint.h"
#include "trainers/distributed.h"
#include "trainers/loss.h"
#include "trainers/lr_schedule.h"
#include "trainers/memory_plan.h"
#include "trainers/precision.h"
#include "trainers/process_stats.h"
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
                                const at::Device& device, bool interruptible) {
  if (ds.size() == 0) return std::nan("");
  torch::NoGradGuard no_grad;
  pm.model().module().eval();
  double sum = 0;
  int64_t tokens = 0;
  for (int64_t start = 0, b = 0; start < ds.size() && b < max_batches; start += batch, ++b) {
    if (interruptible && StopSignals::pending() != 0) {
      pm.model().module().train();
      return absl::CancelledError("evaluation interrupted by a stop signal");
    }
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
      absl::StrAppendFormat(&p, "%.1f,%.1f ", m + (w - 2 * m) * x / xmax,
                            h - m - (h - 2 * m) * (y - ymin) / (ymax - ymin));
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
    log(absl::StrFormat("data: %s %.0f%% (%.0f of %.0f MB, %.1f MB/s, ETA %s)", name, 100.0 * done / total, done / 1e6,
                        total / 1e6, rate / 1e6, clock_text(static_cast<double>(total - done) / rate)));
  };
}

// Whether a model directory holds weights (a safetensors file or index).
bool holds_weights(const std::string& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) return true;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0) return true;
  }
  return false;
}

c10::ScalarType storage_dtype(proto::StorageDtype::Dtype d) {
  switch (d) {
    case proto::StorageDtype::BF16: return at::kBFloat16;
    case proto::StorageDtype::FP16: return at::kHalf;
    default: return at::kFloat;
  }
}

// One run of `peft train`, in the order of its lifecycle (the shape of
// torchtune's recipe classes): processes, resume decision, setup, the
// optimizer and its state, the steps, the outputs. train() calls the
// stages in turn; each returns the first error.
class TrainingRun {
 public:
  TrainingRun(const proto::Recipe& recipe, const TrainOptions& options)
      : recipe_(recipe),
        options_(options),
        tc_(recipe.training()),
        bf16_(tc_.precision() == proto::PrecisionChoice::BF16),
        base_dtype_(storage_dtype(tc_.base_dtype())),
        tty_(isatty(2) && recipe.logging().progress_bar() && !options.log),
        run_(recipe.output_dir()),
        log_(options.log ? options.log : [](const std::string& s) { std::fprintf(stderr, "%s\n", s.c_str()); }) {
    summary_.run_dir = run_;
  }

  // A run that ends before its first step (an error, a stop signal) leaves
  // nothing behind: what it wrote is removed, and the directory when nothing
  // else is in it, so the next run starts as if this one never did.
  ~TrainingRun() {
    if (!completed_ && !resumed_ && !stepped_) discard_unstarted();
  }

  const TrainSummary& summary() const { return summary_; }
  // train() returned the run's result: keep everything.
  void complete() { completed_ = true; }

  // Threads, seed, the torchrun environment, the device (cuda:LOCAL_RANK or
  // the CPU) and the process group (one process when the environment has
  // no ranks; only trainable gradients are all-reduced).
  absl::Status start_processes() {
    // SIGINT/SIGTERM from here on stop the run cleanly (before the first
    // step: with nothing left behind; after it: with a checkpoint).
    PEFT_ASSIGN_OR_RETURN(env_, distributed_env_from_environ());
    stop_.emplace(/*announce=*/env_.rank == 0, /*repeat_kills=*/true);
    bound_allocator_retention();  // freed activations go back to the system (process_stats.h)
    at::set_num_threads(tc_.threads() > 0 ? tc_.threads()
                                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    at::manual_seed(tc_.seed());
    if (resolved_device(recipe_) == proto::TrainingConfig::CUDA) {
      const int64_t gpus = static_cast<int64_t>(torch::cuda::device_count());
      // Without LOCAL_RANK (one process per Kubernetes pod, or RANK set by
      // hand) ranks take the visible GPUs in turn.
      if (!env_.local_rank_given && gpus > 0) env_.local_rank = static_cast<int>(env_.rank % gpus);
      if (env_.local_rank >= gpus) {
        return absl::FailedPreconditionError(
            absl::StrCat("training.device: CUDA needs one GPU per rank, but LOCAL_RANK=", env_.local_rank, " and this ",
                         "machine has ", gpus, " CUDA device(s); start at most ", gpus, " ranks per node"));
      }
      device_ = at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(env_.local_rank));
      device_guard_.emplace(device_);
    }
    backend_ = resolved_backend(recipe_) == proto::DistributedConfig::NCCL ? Backend::kNccl : Backend::kGloo;
    PEFT_ASSIGN_OR_RETURN(
        pg_, ProcessGroup::create(env_, backend_, std::chrono::seconds(recipe_.distributed().timeout_s())));
    summary_.rank = env_.rank;
    if (!main_rank()) log_ = [](const std::string&) {};
    return resolve_precision();
  }

  // training.precision: AUTO measures fp32 and bf16 matmuls (under a second)
  // and takes the faster; an explicit BF16 that measures slower is warned
  // about. Every rank follows rank 0's measurement.
  absl::Status resolve_precision() {
    if (tc_.precision() == proto::PrecisionChoice::FP32) return absl::OkStatus();
    const MatmulRates rates = options_.matmul_rates ? *options_.matmul_rates : measure_matmul_rates(device_);
    const PrecisionDecision d = choose_precision(tc_.precision(), rates);
    bf16_ = d.bf16;
    if (env_.world_size > 1) {
      at::Tensor mine = at::tensor({int64_t{bf16_}}, at::kLong);
      if (backend_ == Backend::kNccl) mine = mine.to(device_);
      PEFT_ASSIGN_OR_RETURN(at::Tensor all, pg_->all_gather(mine));
      bf16_ = all.to(at::kCPU).view({-1})[0].item<int64_t>() != 0;
    }
    if (tc_.precision() == proto::PrecisionChoice::AUTO) log_(d.reason);
    if (!d.warning.empty()) log_(d.warning);
    summary_.bf16 = bf16_;
    return absl::OkStatus();
  }

  // The run directory decides: refuse to mix two runs, resume from the
  // newest checkpoint, or report a finished run as it is (returns true: the
  // summary is the finished run's and there is nothing to do).
  absl::StatusOr<bool> plan_resume() {
    PEFT_RETURN_IF_ERROR(lock_run_directory());
    PEFT_ASSIGN_OR_RETURN(latest_, latest_checkpoint(run_));
    const int64_t latest_step = latest_ ? checkpoint_step(*latest_) : -1;
    std::error_code exists_ec;
    const bool finished = fs::exists(run_ + "/summary.json", exists_ec);
    const bool started = finished || fs::exists(run_ + "/metrics.jsonl", exists_ec);
    // Every rank must see the same run directory (one filesystem shared by
    // the job): else some would resume and others start afresh.
    if (env_.world_size > 1) {
      at::Tensor mine = at::tensor({latest_step, int64_t{finished}, int64_t{started}}, at::kLong);
      if (backend_ == Backend::kNccl) mine = mine.to(device_);
      PEFT_ASSIGN_OR_RETURN(at::Tensor all, pg_->all_gather(mine));
      all = all.to(at::kCPU).view({env_.world_size, 3});
      if (!all.eq(all[0]).all().item<bool>()) {
        std::vector<std::string> seen;
        for (int r = 0; r < env_.world_size; ++r) {
          const int64_t s = all[r][0].item<int64_t>();
          seen.push_back(absl::StrCat("rank ", r, ": ", s < 0 ? std::string("no checkpoint") : absl::StrCat("step ", s),
                                      all[r][1].item<int64_t>() ? ", finished" : ""));
        }
        return absl::FailedPreconditionError(
            absl::StrCat("the ranks see different run directories at ", run_, " (", absl::StrJoin(seen, "; "),
                         "): every rank must see the same output_dir, on a filesystem the job shares"));
      }
    }
    if (latest_ && !options_.resume) {
      return absl::FailedPreconditionError(absl::StrCat(
          run_, " already holds checkpoints of a run: pass --resume to continue it, or another output_dir"));
    }
    // A run directory with another run's outputs but no checkpoint: never
    // overwrite it silently (checkpoint.every_steps = 0 keeps none). Every
    // rank sees the same files here (checked above; rank 0 writes
    // metrics.jsonl only after the initial broadcast in setup_optimizer,
    // which no rank passes before all got here).
    if (!latest_ && started && !options_.resume) {
      return absl::FailedPreconditionError(absl::StrCat(run_, " already holds the output of a run (",
                                                        finished ? "summary.json" : "metrics.jsonl",
                                                        "): pass another output_dir, or --resume to continue it"));
    }
    if (!options_.resume) return false;
    resumed_ = latest_.has_value();
    if (latest_ && latest_step > tc_.steps()) {
      return absl::InvalidArgumentError(absl::StrCat("training.steps: ", tc_.steps(), " is fewer than the ",
                                                     latest_step, " steps the run's newest checkpoint ", *latest_,
                                                     " has done"));
    }
    json saved;
    if (finished) {
      std::ifstream in(run_ + "/summary.json");
      saved = json::parse(in, nullptr, false);
    }
    const int64_t done = saved.is_object() ? saved.value("steps", int64_t{-1}) : -1;
    if (finished && !latest_ && done != tc_.steps()) {
      return absl::FailedPreconditionError(absl::StrCat(
          run_, " holds a run that finished at step ", done, " without checkpoints (checkpoint.every_steps = 0), ",
          "so it cannot be continued to training.steps = ", tc_.steps(), ": pass another output_dir"));
    }
    // A finished run (outputs written, and its newest checkpoint, if any, is
    // the last step) is left as it is.
    if (finished && done == tc_.steps() && (!latest_ || latest_step == done)) {
      log_(absl::StrCat("the run in ", run_, " is already complete at step ", done, "; nothing to do",
                        latest_ ? " (raise training.steps to train further)" : ""));
      summary_from_json(saved, &summary_);
      resumed_ = true;  // a finished run: nothing of it may be removed
      return true;
    }
    if (!latest_) log_(absl::StrCat("no checkpoint in ", run_, "; starting from step 0"));
    return false;
  }

  // Schedule and step options; model, tokenizer, data (before the adapters:
  // bad data is reported before any work), adapters, device. Nothing is
  // written yet.
  absl::Status setup() {
    sched_ = schedule_options(recipe_);
    PEFT_RETURN_IF_ERROR(sched_.validate());
    step_opts_ = step_options(recipe_);
    step_opts_.bf16 = bf16_;
    const ReweightOptions& rw = step_opts_.reweight;
    PEFT_RETURN_IF_ERROR(rw.validate());
    if (rw.strategy != ReweightStrategy::kUniform && rw.warmup_steps >= tc_.steps()) {
      log_(absl::StrCat("note: reweighting never starts: warm-up ", rw.warmup_steps, " >= ", tc_.steps(),
                        " steps (reweighting.warmup_steps; the official default is 1000, set 0 to reweight from the "
                        "first step)"));
    }
    if (base_dtype_ != at::kFloat && recipe_.adapters_size() == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("training.base_dtype ", proto::StorageDtype::Dtype_Name(tc_.base_dtype()),
                       " stores a frozen base, but the recipe has no adapters (full fine-tuning trains every weight "
                       "in float32): add an adapter or set training.base_dtype: FP32"));
    }
    PEFT_ASSIGN_OR_RETURN(models::ModelConfig config,
                          with_context(models::read_model_config(recipe_.model()), "model"));
    PEFT_ASSIGN_OR_RETURN(
        std::unique_ptr<data::Tokenizer> tok,
        with_context(data::load_tokenizer(recipe_.has_tokenizer() ? recipe_.tokenizer() : recipe_.model()),
                     recipe_.has_tokenizer() ? "tokenizer" : "tokenizer (from model)"));
    if (tok->vocab_size() > config.vocab_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tokenizer has ", tok->vocab_size(), " ids, the model only ", config.vocab_size()));
    }
    if (recipe_.data().seq_len() > config.max_positions()) {
      return absl::InvalidArgumentError(
          absl::StrCat("data.seq_len = ", recipe_.data().seq_len(),
                       " is longer than the model's context (max_position_embeddings = ", config.max_positions(), ")"));
    }
    // The memory plan, before the model is loaded: a run that cannot fit is
    // refused here with the numbers instead of allocating until killed.
    PEFT_RETURN_IF_ERROR(check_memory_plan(config));
    if (options_.dry_run && !holds_weights(recipe_.model())) {
      // A config.json alone (a model not downloaded yet): the plan is what
      // a dry run can tell.
      log_(absl::StrCat("dry run: ", recipe_.model(),
                        " holds no weights (*.safetensors), so the plan above comes from its config.json alone; the "
                        "weights, the data and the adapters' targets were not checked"));
      plan_only_ = true;
      return absl::OkStatus();
    }
    models::LoadOptions load;
    load.dtype = base_dtype_;
    load.matrices_only = true;
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm,
                          with_context(models::load_model(recipe_.model(), load), "model"));
    data::DataOptions dopts = data_options(recipe_);
    dopts.threads = tc_.threads();  // 0: every core, as for training
    dopts.progress = data_progress(log_, recipe_.data().train_file());
    PEFT_ASSIGN_OR_RETURN(splits_, data::load_dataset(recipe_.data().train_file(), *tok, dopts));
    log_(splits_.stats.summary());
    validation_ = splits_.validation;
    if (recipe_.data().has_validation_file()) {
      dopts.progress = data_progress(log_, recipe_.data().validation_file());
      PEFT_ASSIGN_OR_RETURN(data::DataSplits v, data::load_dataset(recipe_.data().validation_file(), *tok, dopts));
      validation_ = v.train;
    }
    // Per-block activation checkpointing (models/checkpoint.h): recompute
    // each block in backward instead of keeping its activations.
    lm->set_activation_checkpointing(tc_.activation_checkpointing());
    pm_ = std::make_unique<PeftModel>(lm);
    std::vector<std::pair<std::string, double>> active;
    for (int i = 0; i < recipe_.adapters_size(); ++i) {
      const proto::AdapterConfig& a = recipe_.adapters(i);
      PEFT_RETURN_IF_ERROR(
          with_context(pm_->add_adapter(a, tc_.seed()), absl::StrCat("adapters.", i, " '", a.name(), "'")));
      active.emplace_back(a.name(), 1.0);
      has_sorsa_ = has_sorsa_ || a.has_sorsa();
    }
    if (!active.empty()) {
      PEFT_RETURN_IF_ERROR(pm_->set_active(active));
      pm_->freeze_base_();
    }
    // Adapters are built on the CPU (the same initial values on every
    // device) and move with the model.
    if (!device_.is_cpu()) {
      PEFT_RETURN_IF_ERROR(
          status_from_torch_error("moving the model to the training device", [&] { lm->module().to(device_); }));
    }
    trainable_ = pm_->trainable_parameters();
    int64_t n_trainable = 0;
    for (const auto& p : trainable_) n_trainable += p.second.numel();
    if (!active.empty()) log_(pm_->summary());
    summary_.trainable_parameters = n_trainable;
    return absl::OkStatus();
  }

  void log_dry_run() {
    if (plan_only_) return;
    log_(absl::StrCat("dry run: the recipe, model, tokenizer, data and adapters are valid (",
                      summary_.trainable_parameters, " trainable parameters, ", splits_.stats.train_examples,
                      " training examples); nothing written"));
  }

  // Creates the run directory (only now, so that a recipe that fails to
  // start leaves nothing behind) with the effective recipe. Resuming under
  // another recipe is allowed (more steps, say), but it is said: only the
  // same recipe continues exactly.
  absl::Status open_run_directory() {
    if (latest_ && options_.resume) {
      absl::StatusOr<proto::Recipe> before = read_recipe(run_ + "/recipe.textproto");
      if (!before.ok() && !absl::IsNotFound(before.status())) {
        log_(absl::StrCat("note: cannot compare with the run's saved recipe: ", before.status().message()));
      } else if (before.ok()) {
        if (std::string d = recipe_differences(*before, recipe_); !d.empty()) {
          log_(absl::StrCat("note: resuming under a recipe that differs from the run's (the new values apply; the ",
                            "run is no longer the same as one uninterrupted run):\n", d));
        }
      }
    }
    std::error_code ec;
    fs::create_directories(run_, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", run_, ": ", ec.message()));
    wrote_ = true;
    if (main_rank())
      PEFT_RETURN_IF_ERROR(io::write_file_atomically(run_ + "/recipe.textproto", recipe_to_text(recipe_)));
    return absl::OkStatus();
  }

  // AdamW (no weight decay on norms and biases: 1-D tensors), every rank
  // starting from rank 0's values; the data iterator; the checkpoint's
  // state when resuming; the metrics file and the step-0 evaluation.
  absl::Status setup_optimizer() {
    it_.emplace(splits_.train, micro() * env_.world_size, env_.rank, env_.world_size);  // each rank reads its slice
    group_.rank = env_.rank;
    group_.world_size = env_.world_size;
    group_.all_gather = [pg = pg_.get()](const at::Tensor& t) {
      absl::StatusOr<at::Tensor> g = pg->all_gather(t);
      if (!g.ok()) throw std::runtime_error(std::string(g.status().message()));
      return *g;
    };
    {
      // Adapters are seeded alike on every rank; this guards against any
      // difference.
      std::vector<at::Tensor> values;
      for (const auto& p : trainable_) values.push_back(p.second.detach());
      torch::NoGradGuard no_grad;
      PEFT_RETURN_IF_ERROR(pg_->broadcast_(values, 0));
    }
    std::vector<at::Tensor> decay, no_decay;
    for (const auto& [name, p] : trainable_) {
      (p.dim() >= 2 ? decay : no_decay).push_back(p);
      params_.push_back(p);
    }
    const proto::OptimizerConfig& oc = recipe_.optimizer();
    auto make_opts = [&](double wd) {
      return std::make_unique<torch::optim::AdamWOptions>(
          torch::optim::AdamWOptions(oc.lr()).betas({oc.beta1(), oc.beta2()}).eps(oc.eps()).weight_decay(wd));
    };
    std::vector<torch::optim::OptimizerParamGroup> groups;
    groups.emplace_back(decay, make_opts(oc.weight_decay()));
    groups.emplace_back(no_decay, make_opts(0.0));
    opt_ = std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(oc.lr()));

    state_.trainable = trainable_;
    state_.world_size = env_.world_size;
    if (latest_ && options_.resume) {
      const absl::Status loaded = load_training_state(*latest_, &state_, *opt_, env_.rank, device_);
      if (!loaded.ok()) {
        // A corrupt newest checkpoint: say which older one to continue from.
        const std::optional<std::string> older = previous_checkpoint(run_, checkpoint_step(*latest_));
        return absl::Status(
            loaded.code(),
            absl::StrCat(loaded.message(),
                         older ? absl::StrCat("; the previous checkpoint ", *older, " may be intact: move ", *latest_,
                                              " aside and --resume again to continue from it")
                               : ""));
      }
      PEFT_RETURN_IF_ERROR(it_->restore({state_.data_epoch, state_.data_index}));
      summary_.resumed_from_step = state_.step;
      log_(absl::StrCat("resumed from ", *latest_, " at step ", state_.step));
      if (state_.world_size > 0 && state_.world_size != env_.world_size) {
        log_(absl::StrCat("note: the checkpoint was written by ", state_.world_size, " ranks and this run has ",
                          env_.world_size, ": the global batch changes from ",
                          micro() * state_.world_size * tc_.grad_accum(), " to ",
                          micro() * env_.world_size * tc_.grad_accum(),
                          " examples (the run is no longer the same as one uninterrupted run)"));
      }
      state_.world_size = env_.world_size;
    }
    // Stream adapters' schedules (HSM) continue where the run stopped.
    pm_->on_step(schedule_step(state_.step));

    // Metrics: appended (a resumed run continues the same file, cut back to
    // the checkpoint's step, and its loss curve covers the whole run).
    if (main_rank() && state_.step > 0) {
      PEFT_RETURN_IF_ERROR(trim_metrics(run_ + "/metrics.jsonl", state_.step, &train_curve_, &eval_curve_));
    }
    if (main_rank()) {
      metrics_.open(run_ + "/metrics.jsonl", state_.step > 0 ? std::ios::app : std::ios::trunc);
      if (!metrics_) return metrics_error();
    }
    // A resumed run reports the whole run's first loss and step-0 eval loss.
    if (!train_curve_.empty()) summary_.first_train_loss = train_curve_.front().second;
    if (state_.step > 0 && !eval_curve_.empty() && eval_curve_.front().first == 0) {
      summary_.initial_eval_loss = eval_curve_.front().second;
    } else {
      absl::StatusOr<double> ev = evaluate_now();
      if (absl::IsCancelled(ev.status())) return stopped("during the first evaluation; nothing kept");
      PEFT_RETURN_IF_ERROR(ev.status());
      summary_.initial_eval_loss = *ev;
    }
    if (state_.step == 0 && std::isfinite(summary_.initial_eval_loss)) {
      eval_curve_.emplace_back(0, summary_.initial_eval_loss);
      PEFT_RETURN_IF_ERROR(write_metrics({{"step", 0},
                                          {"eval_loss", summary_.initial_eval_loss},
                                          {"eval_perplexity", std::exp(summary_.initial_eval_loss)}}));
    }
    // A signal during setup or the first evaluation: stop before step 1.
    if (StopSignals::pending() != 0 && !resumed_) return stopped("before the first step; nothing kept");
    return absl::OkStatus();
  }

  // The steps from the current one to training.steps: train_step, then
  // metrics, progress, periodic evaluation and checkpoints. SIGINT/SIGTERM
  // end the run after the current step, with a checkpoint.
  absl::Status train_steps() {
    pm_->model().module().train();
    StepContext ctx{*pm_, *opt_, params_, pg_.get(), group_};
    t_start_ = now_seconds();
    const int64_t total = tc_.steps();
    for (int64_t step = state_.step; step < total; ++step) {
      const double t0 = now_seconds();
      const double lr = learning_rate(sched_, step);
      std::vector<data::Batch> micro_batches;
      for (int a = 0; a < tc_.grad_accum(); ++a) {
        PEFT_ASSIGN_OR_RETURN(data::Batch b, it_->next());
        micro_batches.push_back(to_device(std::move(b), device_));
      }
      PEFT_ASSIGN_OR_RETURN(const StepResult r, train_step(ctx, step_opts_, micro_batches, step, lr));
      if (!r.applied) {
        if (tc_.on_nonfinite() == proto::TrainingConfig::STOP_RUN) {
          return absl::DataLossError(
              absl::StrCat("non-finite loss or gradient at step ", step + 1, " (training.on_nonfinite = STOP_RUN)"));
        }
        log_(absl::StrCat("warning: non-finite loss or gradient at step ", step + 1, "; step skipped"));
        ++summary_.skipped_steps;
      }
      state_.step = step + 1;
      stepped_ = true;
      tokens_seen_ += r.tokens;
      absl::Status recorded = record_step(step, lr, r, now_seconds() - t0);
      if (!recorded.ok()) {
        // The metrics file cannot be written (a full disk, say): keep what
        // can be kept, then stop with the error.
        if (!absl::IsCancelled(recorded)) {
          absl::Status saved = save_checkpoint();
          return saved.ok() ? absl::Status(recorded.code(), absl::StrCat(recorded.message(), "; checkpoint ",
                                                                         checkpoint_dir(run_, step + 1),
                                                                         " saved: continue with --resume"))
                            : recorded;
        }
        // A stop signal during this step's evaluation: stop now.
        PEFT_RETURN_IF_ERROR(save_checkpoint());
        return stopped(absl::StrCat("during the evaluation after step ", step + 1, " of ", total, "; checkpoint ",
                                    checkpoint_dir(run_, step + 1), " saved: continue with --resume"));
      }
      // Every every_steps steps and after the last one, so that --resume
      // with more training.steps continues a finished run instead of redoing
      // its tail.
      const bool stop_now = r.stop_requested && step + 1 < total;
      if (stop_now || (recipe_.checkpoint().every_steps() > 0 &&
                       ((step + 1) % recipe_.checkpoint().every_steps() == 0 || step + 1 == total))) {
        PEFT_RETURN_IF_ERROR(save_checkpoint());
      }
      if (stop_now) {
        if (tty_) std::fprintf(stderr, "\n");
        const int sig = StopSignals::pending();
        return absl::AbortedError(absl::StrCat(
            "stopped by ", sig != 0 ? StopSignals::name(sig) : std::string("a stop signal on another rank"),
            " after step ", step + 1, " of ", total, "; checkpoint ", checkpoint_dir(run_, step + 1),
            " saved: continue with --resume"));
      }
    }
    if (tty_) std::fprintf(stderr, "\n");
    summary_.steps = state_.step;
    summary_.tokens_per_second = tokens_seen_ / std::max(now_seconds() - t_start_, 1e-9);
    return absl::OkStatus();
  }

  // The final evaluation, then (rank 0) the adapters in the PEFT layout or
  // the full model, the merged model, loss.svg, summary.json and one
  // readable line.
  absl::Status write_outputs() {
    absl::StatusOr<double> final_eval = evaluate_now();
    if (absl::IsCancelled(final_eval.status())) {
      const bool saved = recipe_.checkpoint().every_steps() > 0;  // the last step's checkpoint exists
      if (!saved) PEFT_RETURN_IF_ERROR(save_checkpoint());
      return stopped(absl::StrCat("during the final evaluation; checkpoint ", checkpoint_dir(run_, state_.step),
                                  " saved: --resume writes the outputs"));
    }
    PEFT_RETURN_IF_ERROR(final_eval.status());
    summary_.final_eval_loss = *final_eval;
    PEFT_RETURN_IF_ERROR(pg_->barrier());
    if (!main_rank()) return absl::OkStatus();  // rank 0 writes the outputs
    if (std::isfinite(summary_.final_eval_loss)) {
      eval_curve_.emplace_back(state_.step, summary_.final_eval_loss);
      PEFT_RETURN_IF_ERROR(write_metrics({{"step", state_.step},
                                          {"eval_loss", summary_.final_eval_loss},
                                          {"eval_perplexity", std::exp(summary_.final_eval_loss)}}));
    }
    metrics_.close();
    if (metrics_.fail()) return metrics_error();
    PeftModel& pm = *pm_;
    for (const proto::AdapterConfig& a : recipe_.adapters()) {
      const std::string dir = recipe_.adapters_size() == 1 ? run_ + "/adapter" : run_ + "/adapter_" + a.name();
      PEFT_RETURN_IF_ERROR(pm.save_adapter(dir, a.name(), /*overwrite=*/true, recipe_.model()));
    }
    // Model directories carry the tokenizer, so `peft generate --model=DIR` works.
    models::SaveOptions so;
    so.overwrite = true;
    so.extra_files = models::export_files(recipe_.model(), recipe_.tokenizer());
    if (recipe_.adapters_size() == 0) {
      PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), run_ + "/model", so));
    } else if (recipe_.checkpoint().merge_on_finish()) {
      PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
      PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), run_ + "/merged", so));
    }
    PEFT_RETURN_IF_ERROR(io::write_file_atomically(run_ + "/loss.svg", loss_svg(train_curve_, eval_curve_)));
    const TrainSummary& s = summary_;
    json j = {{"steps", s.steps},
              {"resumed_from_step", s.resumed_from_step},
              {"trainable_parameters", s.trainable_parameters},
              {"first_train_loss", s.first_train_loss},
              {"final_train_loss", s.final_train_loss},
              {"initial_eval_loss", s.initial_eval_loss},
              {"final_eval_loss", s.final_eval_loss},
              {"tokens_per_second", s.tokens_per_second},
              {"skipped_steps", s.skipped_steps},
              {"peak_rss_mb", peak_rss_mb()},
              {"planned_peak_mb", s.planned_peak_mb},
              {"bf16", s.bf16}};
    if (device_.is_cuda()) j["peak_cuda_mb"] = peak_cuda_mb(device_);
    PEFT_RETURN_IF_ERROR(io::write_file_atomically(run_ + "/summary.json", j.dump(2) + "\n"));
    // One readable line for people (the CLI's stdout JSON is for programs).
    std::string done = absl::StrFormat("done: step %d in %s (%.0f tok/s)", s.steps,
                                       clock_text(now_seconds() - t_start_), s.tokens_per_second);
    if (std::isfinite(s.initial_eval_loss) && std::isfinite(s.final_eval_loss)) {
      absl::StrAppendFormat(&done, "; eval loss %.4f -> %.4f (perplexity %.2f -> %.2f)", s.initial_eval_loss,
                            s.final_eval_loss, std::exp(s.initial_eval_loss), std::exp(s.final_eval_loss));
    }
    std::string outputs =
        recipe_.adapters_size() == 0 ? "model/" : (recipe_.adapters_size() == 1 ? "adapter/" : "adapter_*/");
    if (recipe_.adapters_size() > 0 && recipe_.checkpoint().merge_on_finish()) outputs += ", merged/";
    log_(absl::StrCat(done, "; wrote ", outputs, ", metrics.jsonl, loss.svg, summary.json in ", run_));
    return absl::OkStatus();
  }

 private:
  bool main_rank() const { return env_.rank == 0; }
  int64_t micro() const { return tc_.micro_batch(); }

  // A stop signal interrupts an evaluation (CancelledError) in a run of one
  // process; with several ranks the evaluation completes (each rank gets the
  // signal at another batch, and the stop is agreed on at the next step).
  absl::StatusOr<double> evaluate_now() {
    return evaluate(*pm_, validation_, micro() * env_.world_size, recipe_.eval().max_batches(), bf16_, device_,
                    /*interruptible=*/env_.world_size == 1);
  }

  // The memory plan of this run (trainers/memory_plan.h), from the config
  // and the recipe alone: the adapters are counted on an unloaded copy of
  // the model (its weights never touched, so it takes no memory).
  absl::StatusOr<MemoryPlan> memory_plan(const models::ModelConfig& config) {
    MemoryPlanInput in;
    in.config = config;
    in.micro_batch = micro();
    in.seq_len = recipe_.data().seq_len();
    in.grad_accum = tc_.grad_accum();
    in.base_dtype = base_dtype_;
    in.bf16_compute = bf16_;
    in.activation_checkpointing = tc_.activation_checkpointing();
    in.process_bytes = proc_status_mb("VmRSS") * 1e6;
    std::error_code ec;
    for (const std::string& f : {recipe_.data().train_file(), recipe_.data().validation_file()}) {
      if (f.empty()) continue;
      const auto size = fs::file_size(f, ec);
      if (!ec) in.data_bytes += static_cast<double>(size);
    }
    in.full_finetune = recipe_.adapters_size() == 0;
    if (in.full_finetune) {
      in.trainable_parameters = static_cast<int64_t>(models::estimated_parameters(config));
      return plan_memory(in);
    }
    models::CreateOptions untouched;
    untouched.check_memory = false;  // its weights are never read or written
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> shape, models::create_model(config, untouched));
    PeftModel counting(shape);
    for (int i = 0; i < recipe_.adapters_size(); ++i) {
      proto::AdapterConfig a = recipe_.adapters(i);
      // Methods that initialise from the base's SVD or QR count as plain
      // LoRA of the same rank and targets (the same parameters; no
      // factorisation of weights that were never read).
      if (a.has_lora()) {
        in.adapter_rank = std::max<int64_t>(in.adapter_rank, a.lora().r());
        a.mutable_lora()->set_init(proto::LoraOptions::DEFAULT);
      } else if (a.has_sorsa()) {
        in.adapter_rank = std::max<int64_t>(in.adapter_rank, a.sorsa().r());
        const int32_t r = a.sorsa().r();
        a.mutable_lora()->set_r(r);
      } else if (a.has_nora()) {
        in.adapter_rank = std::max<int64_t>(in.adapter_rank, a.nora().r());
      }
      PEFT_RETURN_IF_ERROR(with_context(counting.add_adapter(a, tc_.seed()),
                                        absl::StrCat("adapters.", i, " '", recipe_.adapters(i).name(), "'")));
    }
    counting.freeze_base_();
    in.trainable_parameters = counting.num_trainable();
    in.head_is_plain = shape->plain_head_weight().defined();
    return plan_memory(in);
  }

  // Prints the plan on a dry run and refuses a run that does not fit the
  // memory available (MemAvailable, beyond what the process holds now).
  absl::Status check_memory_plan(const models::ModelConfig& config) {
    PEFT_ASSIGN_OR_RETURN(MemoryPlan plan, memory_plan(config));
    planned_peak_ = plan.total();
    summary_.planned_peak_mb = planned_peak_ / 1e6;
    // What a dry run of a config-only model reports; a loaded model's own
    // count replaces it.
    summary_.trainable_parameters = plan.trainable_parameters;
    if (options_.dry_run) log_(absl::StrCat("memory plan (peak resident memory of the run):\n", plan.table()));
    const int64_t avail = models::available_memory_bytes();
    const double process = plan.parts.front().second;
    if (avail <= 0 || plan.total() - process <= static_cast<double>(avail)) {
      if (!options_.dry_run) {
        log_(absl::StrFormat("memory plan: expected peak %.2f GB (%.2f GB available)", plan.total() / 1e9,
                             (static_cast<double>(avail) + process) / 1e9));
      }
      return absl::OkStatus();
    }
    if (options_.ignore_memory_plan) {
      log_(
          absl::StrFormat("warning: the memory plan's expected peak %.2f GB exceeds the %.2f GB available; going on as "
                          "--ignore_memory_plan asks (the run may be killed for memory). The plan:\n%s",
                          plan.total() / 1e9, (static_cast<double>(avail) + process) / 1e9, plan.table()));
      return absl::OkStatus();
    }
    // What to change: only the settings not already in effect.
    std::vector<std::string> remedies = {"lower training.micro_batch, data.seq_len or training.grad_accum"};
    if (base_dtype_ == at::kFloat && recipe_.adapters_size() > 0) {
      remedies.push_back("store the base in bf16 (training.base_dtype: BF16)");
    }
    if (!tc_.activation_checkpointing()) remedies.push_back("turn on training.activation_checkpointing");
    std::string what = remedies[0];
    for (size_t i = 1; i < remedies.size(); ++i) what += (i + 1 == remedies.size() ? " or " : ", ") + remedies[i];
    return absl::ResourceExhaustedError(absl::StrFormat(
        "training.micro_batch = %d x data.seq_len = %d tokens (grad_accum %d) on this model need %.1f GB at the "
        "peak, but %.1f GB of memory is available: %s (--ignore_memory_plan trains anyway: the plan errs on the "
        "high side). The plan:\n%s",
        micro(), recipe_.data().seq_len(), tc_.grad_accum(), plan.total() / 1e9,
        (static_cast<double>(avail) + process) / 1e9, what, plan.table()));
  }

  absl::Status stopped(const std::string& when) {
    if (tty_) std::fprintf(stderr, "\n");
    const int sig = StopSignals::pending();
    return absl::AbortedError(
        absl::StrCat("stopped by ", sig != 0 ? StopSignals::name(sig) : std::string("a stop signal"), " ", when));
  }

  // One line of metrics.jsonl, flushed and checked: a failed write (a full
  // disk) is an error naming the file, never a silently torn line.
  absl::Status write_metrics(const json& line) {
    if (!main_rank()) return absl::OkStatus();
    metrics_ << line.dump(-1, ' ', false, json::error_handler_t::replace) << "\n" << std::flush;
    return metrics_ ? absl::OkStatus() : metrics_error();
  }
  absl::Status metrics_error() const {
    const int err = errno;
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot write ", run_, "/metrics.jsonl", err != 0 ? absl::StrCat(": ", std::strerror(err)) : ""));
  }

  // One writer per run directory: rank 0 holds <run>/.lock until the run
  // ends (the kernel drops it when the process dies). The checks of what the
  // directory holds come after, under the lock. A dry run locks only a
  // directory that exists (it creates nothing).
  absl::Status lock_run_directory() {
    if (!main_rank()) return absl::OkStatus();
    std::error_code ec;
    if (!fs::is_directory(run_, ec)) {
      if (options_.dry_run) return absl::OkStatus();
      fs::create_directories(run_, ec);
      if (ec) {
        return absl::PermissionDeniedError(absl::StrCat("cannot create run directory ", run_, ": ", ec.message()));
      }
    }
    PEFT_ASSIGN_OR_RETURN(lock_, io::FileLock::acquire(run_ + "/.lock", absl::StrCat("run directory ", run_)));
    return absl::OkStatus();
  }

  // Removes what a run that never stepped wrote (only while it holds the
  // lock: another run's files are never touched).
  void discard_unstarted() {
    if (!lock_.held()) return;
    metrics_.close();
    std::error_code ec;
    if (wrote_) {
      for (const char* f : {"recipe.textproto", "metrics.jsonl", "loss.svg"}) fs::remove(run_ + "/" + f, ec);
    }
    lock_.release_and_remove();
    fs::remove(run_, ec);  // removes the directory only when nothing else is in it
  }

  // Every rank's generators go into rank 0's checkpoint (a collective: all
  // ranks reach it at the same step).
  absl::Status save_checkpoint() {
    const data::DataPosition pos = it_->position();
    state_.data_epoch = pos.epoch;
    state_.data_index = pos.index;
    PEFT_ASSIGN_OR_RETURN(state_.rng, gather_rng_states(*pg_, device_));
    if (main_rank()) PEFT_RETURN_IF_ERROR(save_training_state(run_, state_, *opt_, recipe_.checkpoint().keep_last()));
    return absl::OkStatus();
  }

  // Step `step`'s metrics line, curves, periodic evaluation and progress.
  absl::Status record_step(int64_t step, double lr, const StepResult& r, double seconds) {
    const int64_t total = tc_.steps();
    if (std::isnan(summary_.first_train_loss)) summary_.first_train_loss = r.loss;
    summary_.final_train_loss = r.loss;
    train_curve_.emplace_back(step + 1, r.loss);
    json m = {{"step", step + 1},
              {"loss", r.loss},
              {"lr", lr},
              {"grad_norm", r.grad_norm},
              {"tokens", r.tokens},
              {"tokens_per_s", r.tokens / std::max(seconds, 1e-9)},
              {"peak_rss_mb", peak_rss_mb()}};
    if (device_.is_cuda()) m["peak_cuda_mb"] = peak_cuda_mb(device_);
    if (has_sorsa_) m["orthonormality"] = sorsa_orthonormality(*pm_);  // calc_ortho, without gamma
    if (step_opts_.reweight.strategy != ReweightStrategy::kUniform) {
      const WeightStats& ws = r.weights;
      m["weights"] = {{"min", ws.min}, {"max", ws.max}, {"entropy", ws.entropy}, {"ess", ws.effective_sample_size}};
    }
    const bool eval_now = recipe_.eval().every_steps() > 0 && (step + 1) % recipe_.eval().every_steps() == 0;
    if (eval_now && step + 1 < total) {
      PEFT_ASSIGN_OR_RETURN(double ev, evaluate_now());  // Cancelled on a stop signal
      m["eval_loss"] = ev;
      m["eval_perplexity"] = std::exp(ev);
      eval_curve_.emplace_back(step + 1, ev);
    }
    PEFT_RETURN_IF_ERROR(write_metrics(m));
    const double elapsed = now_seconds() - t_start_;
    const double eta = elapsed / (step + 1 - summary_.resumed_from_step) * (total - step - 1);
    const std::string line = absl::StrFormat("step %d/%d | loss %.4f | lr %.2e | %.0f tok/s | ETA %s", step + 1, total,
                                             r.loss, lr, tokens_seen_ / std::max(elapsed, 1e-9), clock_text(eta));
    if (tty_) {
      std::fprintf(stderr, "\r%s %s\033[K", progress_bar(step + 1, total).c_str(), line.c_str());
    } else if ((step + 1) % recipe_.logging().every_steps() == 0 || step + 1 == total) {
      log_(line);
    }
    return absl::OkStatus();
  }

  const proto::Recipe& recipe_;
  const TrainOptions& options_;
  const proto::TrainingConfig& tc_;
  bool bf16_;  // compute in bf16 (training.precision, AUTO resolved in start_processes)
  const c10::ScalarType base_dtype_;
  const bool tty_;
  const std::string run_;
  std::function<void(const std::string&)> log_;
  TrainSummary summary_;
  // start_processes
  DistributedEnv env_;
  at::Device device_{at::kCPU};
  std::optional<c10::DeviceGuard> device_guard_;  // CUDA: the current device for the run
  Backend backend_ = Backend::kGloo;
  std::unique_ptr<ProcessGroup> pg_;
  std::optional<StopSignals> stop_;  // from start_processes to the end
  // plan_resume
  io::FileLock lock_;                  // rank 0: <run>/.lock
  bool wrote_ = false;                 // open_run_directory ran: recipe.textproto, metrics.jsonl are this run's
  bool resumed_ = false;               // continues (or reports) an earlier run: never discarded
  std::optional<std::string> latest_;  // the newest checkpoint
  // setup
  ScheduleOptions sched_;
  StepOptions step_opts_;
  data::DataSplits splits_;
  data::Dataset validation_;
  std::unique_ptr<PeftModel> pm_;
  std::vector<std::pair<std::string, at::Tensor>> trainable_;
  bool has_sorsa_ = false;
  double planned_peak_ = 0;  // bytes (check_memory_plan)
  bool plan_only_ = false;   // a dry run of a model directory without weights
  // setup_optimizer
  std::optional<data::BatchIterator> it_;
  DataParallelGroup group_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<torch::optim::AdamW> opt_;
  TrainingState state_;
  std::ofstream metrics_;
  std::vector<std::pair<int64_t, double>> train_curve_, eval_curve_;
  // train_steps
  bool stepped_ = false;    // a step completed: the run is kept whatever happens
  bool completed_ = false;  // train() finished (done, dry run, or already complete)
  double t_start_ = 0;
  int64_t tokens_seen_ = 0;
};

}  // namespace

absl::StatusOr<TrainSummary> train(const proto::Recipe& recipe, const TrainOptions& options) {
  PEFT_RETURN_IF_ERROR(validate_recipe(recipe));
  TrainingRun run(recipe, options);
  PEFT_RETURN_IF_ERROR(run.start_processes());
  PEFT_ASSIGN_OR_RETURN(const bool complete, run.plan_resume());
  if (complete) return run.summary();
  PEFT_RETURN_IF_ERROR(run.setup());
  if (options.dry_run) {
    run.log_dry_run();
    run.complete();
    return run.summary();
  }
  PEFT_RETURN_IF_ERROR(run.open_run_directory());
  PEFT_RETURN_IF_ERROR(run.setup_optimizer());
  PEFT_RETURN_IF_ERROR(run.train_steps());
  PEFT_RETURN_IF_ERROR(run.write_outputs());
  run.complete();
  return run.summary();
}

}  // namespace peft::trainers
