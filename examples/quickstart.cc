// The quickstart (scripts/quickstart.sh runs it): the whole PEFT workflow on
// a task whose success is measurable, end to end, in a few minutes on a
// laptop-class CPU and with nothing from outside the repository.
//
//   1. Base model. By default a small LLaMA (hidden 128, 4 layers, GQA 4/2
//      heads, byte-level vocabulary of 257) made here: a byte-level BPE
//      tokenizer.json is written, the model is randomly initialised and
//      pretrained by full fine-tuning through trainers::train
//      (examples/recipes/quickstart_base.textproto) on generated string tasks
//      - copy, uppercase, first/last letter, drop first/last letter - that
//      teach the "<op>: <word> -> <answer>" format but never the task below.
//      It is cached in <work_dir>/base; a second run skips pretraining.
//      `--base=DIR` uses a Hugging Face model directory instead (its own
//      tokenizer, or --tokenizer).
//   2. Task: "reverse: <word> -> <reversed word>" on random lowercase words.
//      Generated with a fixed seed: instruction-format training data and 100
//      held-out test words that appear in no training data.
//   3. Exact-match accuracy of greedy generation on the test words, before.
//   4. LoRA r=8 on all linear projections via trainers::train
//      (examples/recipes/quickstart_lora.textproto).
//   5. Accuracy of base + adapter (unmerged), then merge_and_unload_, export a
//      Hugging Face directory (<work_dir>/merged) and a GGUF file for
//      llama.cpp (<work_dir>/merged.gguf), reload the directory with
//      load_model, and check the merged model answers exactly as base +
//      adapter did.
//   6. A few generations from the merged model, a summary table on stdout and
//      <work_dir>/summary.json.
//
//   bazel-bin/examples/quickstart [--work_dir=runs/quickstart] [--base=DIR]
//       [--steps=N] [--set=training.micro_batch=16 ...] [--seed=S]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "data/tokenizer.h"
#include "examples/bench_task.h"
#include "examples/cli/flags.h"
#include "models/gguf/export.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/peft_model.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft::quickstart {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using namespace bench_task;  // NOLINT: this program is a client of the task library

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

void say(const std::string& s) {
  std::fprintf(stdout, "%s\n", s.c_str());
  std::fflush(stdout);
}

absl::Status apply_overrides(proto::Recipe* r, const std::vector<std::string>& sets) {
  for (const std::string& s : sets) PEFT_RETURN_IF_ERROR(trainers::apply_override(r, s));
  return trainers::validate_recipe(*r);
}

// ---- The run ----------------------------------------------------------------

std::string pct(double a) { return absl::StrFormat("%.0f%%", 100.0 * a); }

// What `peft export --model=<work_dir>/merged --format=gguf` writes: f32 (answers as the
// merged model does), with the tokenizer at `tokenizer` (file or directory).
absl::Status write_gguf(models::CausalLm& merged, const std::string& tokenizer, const std::string& path) {
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, data::load_tokenizer(tokenizer));
  PEFT_ASSIGN_OR_RETURN(models::gguf::Vocab vocab, models::gguf::vocab_from_tokenizer(*tok, tokenizer));
  models::gguf::ExportOptions o;
  o.overwrite = true;
  o.name = "merged";
  return models::gguf::export_model(merged, std::move(vocab), path, o).status();
}

absl::Status run(const cli::ParsedFlags& f) {
  const double t_start = now();
  // Every flag and the recipe are checked before anything is written.
  PEFT_ASSIGN_OR_RETURN(int64_t threads, f.get_int("threads"));
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  PEFT_ASSIGN_OR_RETURN(const TaskOptions task, task_options_from(f));
  PEFT_ASSIGN_OR_RETURN(BaseOptions base_options, base_options_from(f));
  PEFT_ASSIGN_OR_RETURN(int64_t steps, f.get_int("steps"));
  if (steps < 0) return absl::InvalidArgumentError("--steps must be >= 0");
  const std::string work = f.get("work_dir");
  if (work.empty()) return absl::InvalidArgumentError("--work_dir must not be empty");
  std::error_code ec;
  if (f.has("base") && !fs::is_regular_file(fs::path(f.get("base")) / "config.json", ec)) {
    return absl::NotFoundError(absl::StrCat("--base=", f.get("base"), " is not a model directory (no config.json)"));
  }
  base_options.threads = f.has("threads") ? threads : 0;

  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, recipe_from(f.get("recipe"), builtin_lora_recipe()));
  if (recipe.adapters_size() == 0) return absl::InvalidArgumentError("the fine-tuning recipe has no adapters");
  const std::string base_dir = f.has("base") ? f.get("base") : work + "/base";
  const std::string data_path = work + "/data/train.jsonl";
  const std::string lora_run = work + "/lora";
  recipe.set_output_dir(lora_run);
  recipe.mutable_data()->set_train_file(data_path);
  recipe.mutable_training()->set_seed(task.seed);
  if (f.has("threads")) recipe.mutable_training()->set_threads(static_cast<int32_t>(threads));
  recipe.set_model(base_dir);
  if (f.has("tokenizer")) recipe.set_tokenizer(f.get("tokenizer"));
  if (steps > 0) set_steps(&recipe, steps);
  PEFT_RETURN_IF_ERROR(apply_overrides(&recipe, f.get_all("set")));
  if (recipe.model() != base_dir) {
    return absl::InvalidArgumentError("the recipe's model is the base: pass --base=DIR instead of --set model=...");
  }
  if (recipe.output_dir() != lora_run) {
    return absl::InvalidArgumentError("the recipe's output_dir is <work_dir>/lora: pass --work_dir instead");
  }
  if (recipe.data().has_validation_file() || recipe.data().train_file() != data_path) {
    return absl::InvalidArgumentError(
        "the quickstart generates its data: leave data.train_file and "
        "data.validation_file unset");
  }
  at::set_num_threads(static_cast<int>(threads));

  // 1. Data. A summary.json of an earlier run goes first: a failed run must
  // not leave one behind that looks like its result.
  fs::create_directories(work, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create --work_dir ", work, ": ", ec.message()));
  fs::remove(work + "/summary.json", ec);
  const TaskData data = make_data(task);
  {
    Prompting shown;
    shown.tmpl = recipe.data().has_prompt_template() ? recipe.data().prompt_template() : "{instruction}: {input} -> ";
    say(absl::StrFormat(
        "[1/6] data: \"%s\" on random lowercase words of %lld-%lld letters; %lld training "
        "records (%.0f%% of them \"%s\" replay), %lld held-out test words",
        shown.prompt(kTask, "<word>") + "<reversed word>", static_cast<long long>(task.min_len),
        static_cast<long long>(task.max_len), static_cast<long long>(task.train_examples), 100 * task.replay,
        shown.prompt(kControl, "<word>") + "<word>", static_cast<long long>(task.test_examples)));
  }
  PEFT_RETURN_IF_ERROR(write_text(data_path, to_jsonl(data.train)));
  PEFT_RETURN_IF_ERROR(write_text(work + "/data/test.jsonl", to_jsonl(test_records(data))));

  // 2. The base.
  Base base;
  base.dir = base_dir;
  const double t_base = now();
  if (f.has("base")) {
    say(absl::StrCat("[2/6] base: ", base.dir));
  } else {
    say(absl::StrCat("[2/6] base: the built-in byte-level LLaMA in ", work, "/base"));
    PEFT_ASSIGN_OR_RETURN(
        base, build_base(work, data, task.seed, base_options, [](const std::string& line) { say("      " + line); }));
    if (base.cached) say("      cached (delete it or pass --rebuild_base to pretrain again)");
  }
  const double base_seconds = now() - t_base;
  const std::string tok_path = recipe.has_tokenizer() ? recipe.tokenizer() : recipe.model();
  absl::StatusOr<std::unique_ptr<data::Tokenizer>> tok_or = data::load_tokenizer(tok_path);
  if (!tok_or.ok()) {
    return absl::Status(
        tok_or.status().code(),
        absl::StrCat("no usable tokenizer for the base (pass --tokenizer=FILE): ", tok_or.status().message()));
  }
  std::unique_ptr<data::Tokenizer> tok = std::move(*tok_or);
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> base_lm, models::load_model(recipe.model()));
  const int64_t base_params = count_parameters(*base_lm);
  PEFT_ASSIGN_OR_RETURN(const Prompting prompting, make_prompting(recipe, *tok, base_lm->config()));
  const int64_t n_test = task.test_examples;
  auto fraction = [&](const Score& s) {
    return absl::StrFormat("%s (%lld/%lld)", pct(s.accuracy), static_cast<long long>(s.correct),
                           static_cast<long long>(n_test));
  };

  // 3. Before: both tasks on the held-out words, reverse (new) and copy (the control).
  say(absl::StrFormat("[3/6] the base, greedy exact match on the %lld held-out words", static_cast<long long>(n_test)));
  PEFT_ASSIGN_OR_RETURN(const TaskScores before, score_tasks(*base_lm, prompting, data.test_words));
  say(absl::StrFormat("      %s: %s, e.g. \"%s%s\"; %s: %s", kTask, fraction(before.task),
                      prompting.prompt(kTask, data.test_words[0]), before.task.answers[0], kControl,
                      fraction(before.control)));
  base_lm.reset();

  // 4. Fine-tuning (LoRA unless the recipe says otherwise) through the trainer.
  fs::remove_all(lora_run, ec);
  fs::create_directories(lora_run, ec);
  say(absl::StrFormat("[4/6] fine-tuning: %s; %d steps x %d examples, lr %g", recipe.adapters(0).ShortDebugString(),
                      recipe.training().steps(), recipe.training().micro_batch(), recipe.optimizer().lr()));
  const double t_lora = now();
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary ts,
                        trainers::train(recipe, train_options(lora_run + "/train.log", [](const std::string& line) {
                                          say("      [tune] " + line);
                                        })));
  const double lora_seconds = now() - t_lora;
  auto adapter_dir = [&](int i) {
    return recipe.adapters_size() == 1 ? lora_run + "/adapter" : lora_run + "/adapter_" + recipe.adapters(i).name();
  };

  // 5. After: base + adapter (unmerged), then merged, exported and reloaded.
  say("[5/6] base + adapter (unmerged), then merge_and_unload, export, reload");
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::load_model(recipe.model()));
  PeftModel pm(lm);
  std::vector<std::pair<std::string, double>> active;
  for (int i = 0; i < recipe.adapters_size(); ++i) {
    PEFT_RETURN_IF_ERROR(pm.load_adapter(adapter_dir(i), recipe.adapters(i).name()));
    active.emplace_back(recipe.adapters(i).name(), 1.0);
  }
  PEFT_RETURN_IF_ERROR(pm.set_active(active));
  pm.freeze_base_();
  const int64_t trainable = pm.num_trainable();
  PEFT_ASSIGN_OR_RETURN(const TaskScores after, score_tasks(pm.model(), prompting, data.test_words));
  say(absl::StrFormat("      %s: %s; %s: %s", kTask, fraction(after.task), kControl, fraction(after.control)));
  PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());
  const std::string merged_dir = work + "/merged";
  models::SaveOptions so;
  so.overwrite = true;
  // The tokenizer travels with the export, so `peft generate --model=merged` works.
  so.extra_files = models::export_files(recipe.model(), recipe.tokenizer());
  PEFT_RETURN_IF_ERROR(models::save_model(pm.model(), merged_dir, so));
  // The same merged model for llama.cpp. A tokenizer llama.cpp has no
  // counterpart for (only possible with --base) skips the file, not the run.
  const std::string merged_gguf = work + "/merged.gguf";
  const absl::Status gguf_status = write_gguf(pm.model(), tok_path, merged_gguf);
  lm.reset();
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> merged, models::load_model(merged_dir));
  PEFT_ASSIGN_OR_RETURN(const TaskScores merged_scores, score_tasks(*merged, prompting, data.test_words));
  const int64_t same = identical_answers(after, merged_scores);
  const bool match = same == n_test;
  say(gguf_status.ok() ? absl::StrCat("      ", merged_gguf, " (GGUF for llama.cpp)")
                       : absl::StrCat("      merged.gguf not written: ", gguf_status.message()));
  say(absl::StrFormat("      %s (reloaded): %s: %s; %s: %s; identical answers to base + adapter: %lld/%lld", merged_dir,
                      kTask, fraction(merged_scores.task), kControl, fraction(merged_scores.control),
                      static_cast<long long>(same), static_cast<long long>(n_test)));

  // 6. Examples from the merged model.
  say("[6/6] generations from the merged model");
  json examples = json::array();
  for (const std::string& w : demo_words()) {
    PEFT_ASSIGN_OR_RETURN(std::string a, answer(*merged, prompting, kTask, w, reversed(w)));
    examples.push_back({{"prompt", prompting.prompt(kTask, w)},
                        {"expected", reversed(w)},
                        {"generated", a},
                        {"correct", a == reversed(w)}});
  }
  const double total = now() - t_start;

  json pretrain = json::object();
  if (!f.has("base")) {
    pretrain = {{"steps", base.pretrain.steps},
                {"seconds", base.pretrain.seconds},
                {"first_train_loss", base.pretrain.first_train_loss},
                {"final_train_loss", base.pretrain.final_train_loss},
                {"final_eval_loss", base.pretrain.final_eval_loss}};
  }
  json summary = {
      {"task", kTask},
      {"control_task", kControl},
      {"prompt_template", prompting.tmpl},
      {"test_examples", n_test},
      {"train_examples", task.train_examples},
      {"replay", task.replay},
      {"threads", threads},
      {"base",
       {{"source", f.has("base") ? base.dir : "built-in"},
        {"dir", base.dir},
        {"parameters", base_params},
        {"cached", base.cached},
        {"seconds", base_seconds},
        {"pretrain", pretrain}}},
      {"lora",
       {{"adapter", recipe.adapters(0).ShortDebugString()},
        {"adapter_dir", adapter_dir(0)},
        {"trainable_parameters", trainable},
        {"steps", ts.steps},
        {"micro_batch", recipe.training().micro_batch()},
        {"lr", recipe.optimizer().lr()},
        {"seconds", lora_seconds},
        {"first_train_loss", ts.first_train_loss},
        {"final_train_loss", ts.final_train_loss},
        {"final_eval_loss", ts.final_eval_loss}}},
      {"accuracy_before", before.task.accuracy},
      {"accuracy_after", after.task.accuracy},
      {"accuracy_merged", merged_scores.task.accuracy},
      {"control_accuracy_before", before.control.accuracy},
      {"control_accuracy_after", after.control.accuracy},
      {"control_accuracy_merged", merged_scores.control.accuracy},
      {"merged_identical_answers", same},
      {"merged_matches_unmerged", match},
      {"merged_dir", merged_dir},
      {"merged_gguf", gguf_status.ok() ? json(merged_gguf) : json(nullptr)},
      {"examples", examples},
      {"total_seconds", total},
  };
  PEFT_RETURN_IF_ERROR(write_text(work + "/summary.json", summary.dump(2) + "\n"));

  // The table.
  auto row = [](const std::string& k, const std::string& v) { say(absl::StrFormat("  %-26s %s", k, v)); };
  say("");
  say("quickstart summary");
  if (f.has("base")) {
    row("base model", absl::StrFormat("%s, %lld parameters", base.dir, static_cast<long long>(base_params)));
  } else {
    row("base model", absl::StrFormat("built-in LLaMA, %lld parameters, pretrained on copy only (%s)",
                                      static_cast<long long>(base_params),
                                      base.cached ? "cached" : absl::StrFormat("%.0f s", base_seconds)));
  }
  const proto::AdapterConfig& a0 = recipe.adapters(0);
  row("adapter", absl::StrFormat("%s on %s: %lld trainable parameters (%.1f%% of the base)",
                                 a0.has_lora() ? absl::StrCat("LoRA r=", a0.lora().r()) : a0.ShortDebugString(),
                                 a0.target().preset().empty() ? "its targets" : a0.target().preset(),
                                 static_cast<long long>(trainable),
                                 100.0 * static_cast<double>(trainable) / static_cast<double>(base_params)));
  row("fine-tuning",
      absl::StrFormat("%lld steps x %d examples in %.0f s, loss %.3f -> %.3f", static_cast<long long>(ts.steps),
                      recipe.training().micro_batch(), lora_seconds, ts.first_train_loss, ts.final_train_loss));
  row(absl::StrFormat("%s (new task)", kTask),
      absl::StrFormat("%s -> %s  (exact match, %lld held-out words)", pct(before.task.accuracy),
                      pct(after.task.accuracy), static_cast<long long>(n_test)));
  row(absl::StrFormat("%s (control)", kControl),
      absl::StrFormat("%s -> %s", pct(before.control.accuracy), pct(after.control.accuracy)));
  row("merged export, reloaded",
      match
          ? absl::StrFormat("%s; the same answers as base + adapter", pct(merged_scores.task.accuracy))
          : absl::StrFormat("%s; only %lld/%lld answers identical to base + adapter", pct(merged_scores.task.accuracy),
                            static_cast<long long>(same), static_cast<long long>(n_test)));
  for (const json& e : examples) {
    row("merged generates",
        absl::StrFormat("%s%s%s", e["prompt"].get<std::string>(), e["generated"].get<std::string>(),
                        e["correct"].get<bool>() ? "" : "  (expected " + e["expected"].get<std::string>() + ")"));
  }
  row("outputs",
      absl::StrCat(work, "/{summary.json, lora/adapter, merged", gguf_status.ok() ? ", merged.gguf" : "", "}"));
  row("total time", absl::StrFormat("%.0f s", total));
  if (!match) {
    return absl::InternalError("the merged export does not answer exactly as base + adapter (see summary.json)");
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace peft::quickstart

int main(int argc, char** argv) {
  using peft::cli::bool_flag, peft::cli::int_flag, peft::cli::text_flag;
  std::vector<peft::cli::FlagSpec> specs = {
      text_flag("work_dir", "outputs (data, base, lora, merged, summary.json)", "runs/quickstart"),
      text_flag("base", "a Hugging Face model directory to fine-tune instead of the built-in base"),
      text_flag("tokenizer", "tokenizer for --base (default: the model directory)"),
      int_flag("steps", "fine-tuning steps (0 = the recipe's training.steps)", 0),
      text_flag("recipe", "fine-tuning recipe (default: examples/recipes/quickstart_lora.textproto, built in)"),
      text_flag("set", "override a recipe field, e.g. --set=training.micro_batch=16 (repeatable)").repeated(),
      int_flag(
          "threads",
          "LibTorch threads for evaluation; when given, also for training (default: the recipes' training.threads; "
          "0 = all cores)",
          1),
  };
  for (peft::cli::FlagSpec& s : peft::bench_task::task_flags()) specs.push_back(std::move(s));
  const char* summary = "The main job: a base LLaMA, LoRA on a measurable task, merge, export, generate.";
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::fputs(peft::cli::usage("quickstart", summary, specs).c_str(), stdout);
      return 0;
    }
  }
  auto flags = peft::cli::parse_flags(args, specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "quickstart: %s (see quickstart --help)\n", std::string(flags.status().message()).c_str());
    return 2;
  }
  absl::Status st;
  try {
    st = peft::quickstart::run(*flags);
  } catch (const std::exception& e) {  // a LibTorch check that escaped a library boundary
    st = absl::InternalError(e.what());
  }
  if (!st.ok()) {
    std::string msg(st.message());
    if (size_t nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);  // one line
    std::fprintf(stderr, "quickstart: %s\n", msg.c_str());
    return 1;
  }
  return 0;
}
