// peft bench: benchmark suites. `--suite=methods` (the default) trains every
// PEFT method, and full fine-tuning as the baseline, each with and without
// loss-based sample reweighting, on the same built-in base and task
// (examples/bench_task.h: string reversal, greedy exact match) with the same
// steps, batch and schedule, and writes bench.md and bench.json.
//
// Each variant runs in a child process (this binary, `peft bench
// --internal_variant=NAME` with the parent's flags) so that its peak RSS is
// its own; the child writes <run>/result.json and the parent collects them.
// A suite is one entry of suites() below.
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/cuda.h>
#include <torch/version.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "examples/bench_task.h"
#include "examples/cli/command.h"
#include "models/generate.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/hsm/prune.h"
#include "peft/peft_model.h"
#include "trainers/perf_bench.h"
#include "trainers/process_stats.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft::cli {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
namespace task = bench_task;
using trainers::now_seconds;

void say(const std::string& s) {
  std::fprintf(stdout, "%s\n", s.c_str());
  std::fflush(stdout);
}

// ---- The methods suite: what runs --------------------------------------------------

// One row of the methods suite. `adapters` is recipe text (zero or more
// `adapters { ... }`; none = full fine-tuning) in which {steps} stands for
// training.steps and {keep} for 3/4 of the base's hidden size (HSM's D).
// Everything else comes from the quickstart's fine-tuning recipe
// (examples/recipes/quickstart_lora.textproto), shared by every row.
struct BenchMethod {
  std::string name;  // the --methods value
  std::string label;
  std::string adapters;
  double lr;
  std::string lr_note;  // why the lr differs from LoRA's, if it does
};

const std::vector<BenchMethod>& bench_methods() {
  static const std::vector<BenchMethod> m = {
      {"full", "full fine-tuning", "", 1e-3, "full fine-tuning moves every weight: 10x lower lr"},
      {"lora", "LoRA r=8", R"(adapters { name: "default" lora { r: 8 alpha: 16 } target { preset: "all_linear" } })",
       1e-2, ""},
      {"nora", "NoRA r=32, r'=8",
       R"(adapters { name: "default" nora { r: 32 r_inner: 8 } target { preset: "all_linear" } })", 1e-2, ""},
      {"sorsa", "SORSA r=8",
       R"(adapters { name: "default" sorsa { r: 8 gamma: 4e-4 } target { preset: "all_linear" } })", 1e-2, ""},
      {"bone", "Bone (Bat) r=32", R"(adapters { name: "default" bone { r: 32 } target { preset: "all_linear" } })",
       1e-2, ""},
      {"compacter", "Compacter n=4, k=d/8",
       R"(adapters { name: "default" compacter { phm_dim: 4 reduction_factor: 8 } })", 1e-2, ""},
      {"compacter++", "Compacter++ n=4, k=d/8",
       R"(adapters { name: "default" compacter { phm_dim: 4 reduction_factor: 8 plus_plus: true } })", 1e-2, ""},
      {"hsm", "HSM (PAT) D=3H/4 + LoRA r=8",
       R"(adapters { name: "hsm" hsm { target_hidden: {keep} bottleneck: 16 global_step: {steps} } }
          adapters { name: "lora" lora { r: 8 alpha: 16 } target { preset: "all_linear" } })",
       1e-2, ""},
  };
  return m;
}

// LinUpper (Sow et al. 2025; docs/methods.md §8), the paper's recommended
// strategy, at a temperature inside its range for small models.
constexpr const char* kReweighting = "reweighting { strategy: LIN_UPPER temperature: 0.5 warmup_steps: 0 }";
constexpr const char* kReweightSuffix = "+rw";

struct Variant {
  const BenchMethod* method = nullptr;
  bool reweighting = false;
  std::string name() const { return method->name + (reweighting ? kReweightSuffix : ""); }
};

absl::StatusOr<std::vector<Variant>> parse_variants(const std::string& methods, const std::string& reweighting) {
  std::vector<std::string> known;
  for (const BenchMethod& m : bench_methods()) known.push_back(m.name);
  std::vector<const BenchMethod*> chosen;
  if (methods == "all") {
    for (const BenchMethod& m : bench_methods()) chosen.push_back(&m);
  } else {
    for (absl::string_view name : absl::StrSplit(methods, ',')) {
      auto it = std::find_if(bench_methods().begin(), bench_methods().end(),
                             [&](const BenchMethod& m) { return m.name == name; });
      if (it == bench_methods().end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--methods: unknown method '", name, "' (known: all, ", absl::StrJoin(known, ", "), ")"));
      }
      if (std::find(chosen.begin(), chosen.end(), &*it) != chosen.end()) {
        return absl::InvalidArgumentError(absl::StrCat("--methods: '", name, "' given twice"));
      }
      chosen.push_back(&*it);
    }
  }
  std::vector<bool> rw;
  if (reweighting == "both") {
    rw = {false, true};
  } else if (reweighting == "off" || reweighting == "on") {
    rw = {reweighting == "on"};
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--reweighting must be both, off or on, not '", reweighting, "'"));
  }
  std::vector<Variant> out;
  for (const BenchMethod* m : chosen) {
    for (bool r : rw) out.push_back({m, r});
  }
  return out;
}

absl::StatusOr<Variant> find_variant(const std::string& name) {
  PEFT_ASSIGN_OR_RETURN(std::vector<Variant> all, parse_variants("all", "both"));
  for (const Variant& v : all) {
    if (v.name() == name) return v;
  }
  return absl::InvalidArgumentError(absl::StrCat("--internal_variant: unknown variant '", name, "'"));
}

// ---- Settings shared by the parent and its children --------------------------------

struct Settings {
  task::TaskOptions task;
  task::BaseOptions base;
  int64_t steps = 0;  // 0: the recipe's
  int64_t threads = 1;
  std::string out_dir;
  std::string work;  // <out_dir>/work: data, base, runs/<variant>
};

absl::StatusOr<Settings> settings_from(const ParsedFlags& f) {
  Settings s;
  PEFT_ASSIGN_OR_RETURN(s.task, task::task_options_from(f));
  PEFT_ASSIGN_OR_RETURN(s.base, task::base_options_from(f));
  PEFT_ASSIGN_OR_RETURN(s.steps, f.get_int("steps"));
  if (s.steps < 0) return absl::InvalidArgumentError("--steps must be >= 0");
  PEFT_ASSIGN_OR_RETURN(s.threads, f.get_int("threads"));
  if (s.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (s.threads == 0) s.threads = std::max(1u, std::thread::hardware_concurrency());
  s.base.threads = s.threads;
  s.out_dir = f.get("out_dir");
  if (s.out_dir.empty()) return absl::InvalidArgumentError("--out_dir must not be empty");
  s.work = s.out_dir + "/work";
  return s;
}

// A method's adapter text with {steps} and {keep} filled in.
std::string method_text(const std::string& adapters, int64_t steps, int64_t hidden) {
  return absl::StrReplaceAll(adapters, {{"{steps}", absl::StrCat(steps)}, {"{keep}", absl::StrCat(hidden * 3 / 4)}});
}

// The fine-tuning recipe of one variant.
absl::StatusOr<proto::Recipe> variant_recipe(const Settings& s, const Variant& v) {
  PEFT_ASSIGN_OR_RETURN(proto::Recipe r, task::recipe_from("", task::builtin_lora_recipe()));
  if (s.steps > 0) task::set_steps(&r, s.steps);
  std::string extra = method_text(v.method->adapters, r.training().steps(), s.base.hidden_size);
  if (v.reweighting) absl::StrAppend(&extra, "\n", kReweighting);
  PEFT_ASSIGN_OR_RETURN(proto::Recipe parts, trainers::parse_recipe(extra, absl::StrCat("bench method ", v.name())));
  r.clear_adapters();
  r.MergeFrom(parts);
  r.set_model(s.work + "/base");
  r.set_output_dir(s.work + "/runs/" + v.name());
  r.mutable_data()->set_train_file(s.work + "/data/train.jsonl");
  r.mutable_optimizer()->set_lr(static_cast<float>(v.method->lr));
  r.mutable_training()->set_seed(s.task.seed);
  r.mutable_training()->set_threads(static_cast<int32_t>(s.threads));
  r.mutable_logging()->set_progress_bar(false);
  PEFT_RETURN_IF_ERROR(trainers::validate_recipe(r));
  return r;
}

// ---- Measurements --------------------------------------------------------------

// Median optimizer-step time from metrics.jsonl (tokens / tokens_per_s per
// step; evaluation is not part of a step).
double median_step_seconds(const std::string& metrics_path) {
  std::ifstream in(metrics_path);
  std::vector<double> dt;
  for (std::string line; std::getline(in, line);) {
    const json m = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!m.is_object() || !m.contains("tokens_per_s") || !m.contains("tokens")) continue;
    const double tps = m["tokens_per_s"].get<double>();
    if (tps > 0) dt.push_back(m["tokens"].get<double>() / tps);
  }
  if (dt.empty()) return 0;
  std::sort(dt.begin(), dt.end());
  return dt[dt.size() / 2];
}

absl::StatusOr<json> read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  const json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::DataLossError(absl::StrCat(path, " is not valid JSON"));
  return j;
}

// Greedy decoding speed: new tokens per second over `prompts`, 32 new tokens
// each with no stop id (the same work for every model), best of `rounds`.
absl::StatusOr<double> generation_tokens_per_second(models::CausalLm& lm,
                                                    const std::vector<std::vector<int64_t>>& prompts, int rounds) {
  torch::NoGradGuard no_grad;
  lm.module().eval();
  models::GenerateOptions o;
  o.max_new_tokens = 32;
  o.use_config_eos = false;
  double best = 0;
  for (int r = 0; r < rounds; ++r) {
    int64_t tokens = 0;
    const double t0 = now_seconds();
    for (const std::vector<int64_t>& p : prompts) {
      PEFT_ASSIGN_OR_RETURN(models::GenerateResult g, models::generate(lm, p, o));
      tokens += static_cast<int64_t>(g.generated_ids.size());
    }
    best = std::max(best, static_cast<double>(tokens) / std::max(now_seconds() - t0, 1e-9));
  }
  return best;
}

// ---- The child: one variant ------------------------------------------------------

// Trains, scores, merges (or prunes) one variant; writes <run>/result.json.
absl::Status run_variant(const Settings& s, const Variant& v) {
  at::set_num_threads(static_cast<int>(s.threads));
  PEFT_ASSIGN_OR_RETURN(const proto::Recipe recipe, variant_recipe(s, v));
  const std::string run = recipe.output_dir();
  std::error_code ec;
  fs::remove_all(run, ec);
  fs::create_directories(run, ec);
  const task::TaskData data = task::make_data(s.task);

  const double t_train = now_seconds();
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary ts,
                        trainers::train(recipe, task::train_options(run + "/train.log", nullptr)));
  const double train_seconds = now_seconds() - t_train;
  PEFT_ASSIGN_OR_RETURN(json trainer_summary, read_json(run + "/summary.json"));

  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, data::load_tokenizer(recipe.model()));
  const bool full = recipe.adapters_size() == 0;
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm,
                        models::load_model(full ? run + "/model" : recipe.model()));
  const int64_t base_params = task::count_parameters(*lm);
  PEFT_ASSIGN_OR_RETURN(const task::Prompting prompting, task::make_prompting(recipe, *tok, lm->config()));
  PeftModel pm(lm);
  std::vector<std::pair<std::string, double>> active;
  std::string hsm_name;
  for (const proto::AdapterConfig& a : recipe.adapters()) {
    const std::string dir = recipe.adapters_size() == 1 ? run + "/adapter" : run + "/adapter_" + a.name();
    PEFT_RETURN_IF_ERROR(pm.load_adapter(dir, a.name()));
    active.emplace_back(a.name(), 1.0);
    // HSM at inference and export uses the hard 0/1 gate (PAT's rule).
    absl::StatusOr<HsmAdapterImpl*> hsm = find_hsm_adapter(pm, a.name());
    if (hsm.ok()) {
      (*hsm)->set_hard_gate_(true);
      hsm_name = a.name();
    }
  }
  if (!active.empty()) PEFT_RETURN_IF_ERROR(pm.set_active(active));
  PEFT_ASSIGN_OR_RETURN(const task::TaskScores scores, task::score_tasks(pm.model(), prompting, data.test_words));

  json merge = {{"mergeable", false}, {"seconds", nullptr}, {"note", ""}};
  json hsm = nullptr;
  if (full) {
    merge["note"] = "nothing to merge: full fine-tuning writes the whole model";
  } else if (!hsm_name.empty()) {
    // PAT's export: fold LoRA and the HSMs, drop the pruned channels.
    const double t0 = now_seconds();
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> pruned, prune_hsm(pm, hsm_name));
    merge = {{"mergeable", true}, {"seconds", now_seconds() - t0}, {"note", "HSM structural prune (peft/hsm/prune.h)"}};
    PEFT_ASSIGN_OR_RETURN(const task::TaskScores pruned_scores, task::score_tasks(*pruned, prompting, data.test_words));
    // Decoding speed: the pruned model against a plain model of the base's
    // size (what merging any other method gives), alternated, best of 3.
    std::vector<std::vector<int64_t>> prompts;
    for (size_t i = 0; i < std::min<size_t>(16, data.test_words.size()); ++i) {
      std::vector<int64_t> ids;
      for (int32_t id : tok->encode(prompting.prompt(task::kTask, data.test_words[i]))) ids.push_back(id);
      prompts.push_back(std::move(ids));
    }
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> plain, models::load_model(recipe.model()));
    double plain_tps = 0, pruned_tps = 0;
    for (int r = 0; r < 3; ++r) {
      PEFT_ASSIGN_OR_RETURN(double a, generation_tokens_per_second(*plain, prompts, 1));
      PEFT_ASSIGN_OR_RETURN(double b, generation_tokens_per_second(*pruned, prompts, 1));
      plain_tps = std::max(plain_tps, a);
      pruned_tps = std::max(pruned_tps, b);
    }
    hsm = {{"hidden_before", plain->config().hidden_size()},
           {"hidden_after", pruned->config().hidden_size()},
           {"parameters_before", task::count_parameters(*plain)},
           {"parameters_after", task::count_parameters(*pruned)},
           {"pruned_accuracy", pruned_scores.task.accuracy},
           {"pruned_control_accuracy", pruned_scores.control.accuracy},
           {"pruned_identical_answers", task::identical_answers(scores, pruned_scores)},
           {"generate_tokens_per_second_unpruned", plain_tps},
           {"generate_tokens_per_second_pruned", pruned_tps},
           {"generate_speedup", plain_tps > 0 ? pruned_tps / plain_tps : 0.0}};
  } else {
    const double t0 = now_seconds();
    absl::Status st = pm.merge_and_unload_();
    if (st.ok()) {
      merge = {{"mergeable", true}, {"seconds", now_seconds() - t0}, {"note", "merge_and_unload_"}};
    } else {
      merge["note"] = std::string(st.message());
    }
  }

  const json result = {
      {"variant", v.name()},
      {"method", v.method->name},
      {"label", v.method->label},
      {"reweighting", v.reweighting ? kReweighting : "off"},
      {"adapters", method_text(v.method->adapters, recipe.training().steps(), s.base.hidden_size)},
      {"lr", recipe.optimizer().lr()},
      {"lr_note", v.method->lr_note},
      {"trainable_parameters", ts.trainable_parameters},
      {"base_parameters", base_params},
      {"trainable_percent", 100.0 * static_cast<double>(ts.trainable_parameters) / static_cast<double>(base_params)},
      {"steps", ts.steps},
      {"skipped_steps", ts.skipped_steps},
      {"step_seconds", median_step_seconds(run + "/metrics.jsonl")},
      {"tokens_per_second", ts.tokens_per_second},
      {"peak_rss_mb", trainer_summary.value("peak_rss_mb", 0.0)},
      {"train_seconds", train_seconds},
      {"first_train_loss", ts.first_train_loss},
      {"final_train_loss", ts.final_train_loss},
      {"initial_eval_loss", ts.initial_eval_loss},
      {"final_eval_loss", ts.final_eval_loss},
      {"accuracy", scores.task.accuracy},
      {"correct", scores.task.correct},
      {"control_accuracy", scores.control.accuracy},
      {"merge", merge},
      {"hsm", hsm},
  };
  return task::write_text(run + "/result.json", result.dump(2) + "\n");
}

// ---- The parent -------------------------------------------------------------------

// Every flag the user gave, to hand on to a child.
std::vector<std::string> given_flags(const ParsedFlags& f, const std::vector<FlagSpec>& specs) {
  std::vector<std::string> out;
  for (const FlagSpec& s : specs) {
    for (const std::string& v : f.get_all(s.name)) out.push_back(absl::StrCat("--", s.name, "=", v));
  }
  return out;
}

// Runs `args` (argv[0] = the program) with stdout and stderr to `log`;
// returns the exit status.
absl::StatusOr<int> run_child(const std::vector<std::string>& args, const std::string& log) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    execvp(argv[0], argv.data());  // a bare name (python3) is looked up in PATH
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return absl::InternalError("waitpid failed");
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string last_line(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty()) last = line;
  }
  return last;
}

std::string first_line_of_file(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? "" : std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    }
  }
  return "";
}

json machine(int64_t threads) {
  const std::time_t t = std::time(nullptr);
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%d %H:%M UTC", std::gmtime(&t));
  std::string mem = first_line_of_file("/proc/meminfo", "MemTotal");
  return {{"cpu", first_line_of_file("/proc/cpuinfo", "model name")},
          {"cores", std::thread::hardware_concurrency()},
          {"threads", threads},
          {"memory", mem},
          {"libtorch", TORCH_VERSION},
          {"date", date}};
}

std::string fmt_int(int64_t n) {
  std::string s = absl::StrCat(n < 0 ? -n : n);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return n < 0 ? "-" + s : s;
}

std::string pct(double a) { return absl::StrFormat("%.0f%%", 100.0 * a); }

// The markdown table: one row per variant, then notes for HSM and for the
// rows that cannot merge.
std::string table(const json& base, const json& rows) {
  std::string t =
      "| method | reweighting | trainable | % of base | s/step | tokens/s | peak RSS MB | final eval loss | "
      "reverse acc. | copy acc. | merge ms |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  absl::StrAppendFormat(&t, "| base, no fine-tuning | - | 0 | 0 | - | - | - | - | %s | %s | - |\n",
                        pct(base["accuracy"].get<double>()), pct(base["control_accuracy"].get<double>()));
  std::vector<std::string> notes;
  for (const json& r : rows) {
    const json& m = r["merge"];
    const std::string merge =
        m["seconds"].is_number() ? absl::StrFormat("%.1f", 1e3 * m["seconds"].get<double>()) : "n/a";
    absl::StrAppendFormat(&t, "| %s | %s | %s | %.2f | %.3f | %s | %.0f | %.4f | %s | %s | %s |\n",
                          r["label"].get<std::string>(), r["reweighting"] == "off" ? "off" : "LinUpper",
                          fmt_int(r["trainable_parameters"].get<int64_t>()), r["trainable_percent"].get<double>(),
                          r["step_seconds"].get<double>(),
                          fmt_int(static_cast<int64_t>(r["tokens_per_second"].get<double>())),
                          r["peak_rss_mb"].get<double>(), r["final_eval_loss"].get<double>(),
                          pct(r["accuracy"].get<double>()), pct(r["control_accuracy"].get<double>()), merge);
    if (!m["mergeable"].get<bool>()) {
      const std::string note =
          absl::StrCat(r["label"].get<std::string>(), ": merge n/a (", m["note"].get<std::string>(), ")");
      if (std::find(notes.begin(), notes.end(), note) == notes.end()) notes.push_back(note);
    }
    if (r["hsm"].is_object()) {
      const json& h = r["hsm"];
      notes.push_back(absl::StrFormat(
          "%s%s: pruned hidden %d -> %d, parameters %s -> %s (%.0f%%), pruned model reverse %s / copy %s "
          "(%d/%d answers identical to the hard-gated model), greedy decoding %.0f -> %.0f tok/s (%.2fx); "
          "merge ms is the prune",
          r["label"].get<std::string>(), r["reweighting"] == "off" ? "" : " + LinUpper",
          h["hidden_before"].get<int64_t>(), h["hidden_after"].get<int64_t>(),
          fmt_int(h["parameters_before"].get<int64_t>()), fmt_int(h["parameters_after"].get<int64_t>()),
          100.0 * h["parameters_after"].get<double>() / h["parameters_before"].get<double>(),
          pct(h["pruned_accuracy"].get<double>()), pct(h["pruned_control_accuracy"].get<double>()),
          h["pruned_identical_answers"].get<int64_t>(), base["test_examples"].get<int64_t>(),
          h["generate_tokens_per_second_unpruned"].get<double>(), h["generate_tokens_per_second_pruned"].get<double>(),
          h["generate_speedup"].get<double>()));
    }
  }
  if (!notes.empty()) absl::StrAppend(&t, "\n");
  for (const std::string& n : notes) absl::StrAppend(&t, "- ", n, "\n");
  return t;
}

absl::Status run_methods_suite(const ParsedFlags& f, const std::vector<FlagSpec>& specs) {
  const double t_start = now_seconds();
  PEFT_ASSIGN_OR_RETURN(const Settings s, settings_from(f));
  if (f.has("internal_variant")) {
    PEFT_ASSIGN_OR_RETURN(const Variant v, find_variant(f.get("internal_variant")));
    return run_variant(s, v);
  }
  PEFT_ASSIGN_OR_RETURN(const std::vector<Variant> variants, parse_variants(f.get("methods"), f.get("reweighting")));
  for (const Variant& v : variants) PEFT_RETURN_IF_ERROR(variant_recipe(s, v).status());
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) return absl::InternalError(absl::StrCat("cannot find this program (/proc/self/exe): ", ec.message()));
  at::set_num_threads(static_cast<int>(s.threads));

  // The task data and the built-in base (cached in <out_dir>/work/base).
  const task::TaskData data = task::make_data(s.task);
  PEFT_RETURN_IF_ERROR(task::write_text(s.work + "/data/train.jsonl", task::to_jsonl(data.train)));
  PEFT_RETURN_IF_ERROR(task::write_text(s.work + "/data/test.jsonl", task::to_jsonl(task::test_records(data))));
  say(absl::StrCat("bench: base model in ", s.work, "/base"));
  PEFT_ASSIGN_OR_RETURN(const task::Base base, task::build_base(s.work, data, s.task.seed, s.base,
                                                                [](const std::string& l) { say("  " + l); }));
  json base_j;
  {
    PEFT_ASSIGN_OR_RETURN(const proto::Recipe r, variant_recipe(s, variants[0]));
    PEFT_ASSIGN_OR_RETURN(std::unique_ptr<data::Tokenizer> tok, data::load_tokenizer(base.dir));
    PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> lm, models::load_model(base.dir));
    PEFT_ASSIGN_OR_RETURN(const task::Prompting p, task::make_prompting(r, *tok, lm->config()));
    PEFT_ASSIGN_OR_RETURN(const task::TaskScores before, task::score_tasks(*lm, p, data.test_words));
    base_j = {{"parameters", task::count_parameters(*lm)},
              {"hidden_size", lm->config().hidden_size()},
              {"cached", base.cached},
              {"accuracy", before.task.accuracy},
              {"control_accuracy", before.control.accuracy},
              {"test_examples", s.task.test_examples}};
  }

  // Each variant in a child process.
  std::vector<std::string> args = {self, "bench"};
  for (const std::string& a : given_flags(f, specs)) args.push_back(a);
  json rows = json::array();
  for (size_t i = 0; i < variants.size(); ++i) {
    const Variant& v = variants[i];
    const std::string run = s.work + "/runs/" + v.name();
    fs::remove_all(run, ec);
    fs::create_directories(run, ec);
    const std::string log = s.work + "/runs/" + v.name() + ".log";
    std::vector<std::string> child = args;
    child.push_back("--internal_variant=" + v.name());
    const double t0 = now_seconds();
    PEFT_ASSIGN_OR_RETURN(int code, run_child(child, log));
    if (code != 0) {
      return absl::InternalError(
          absl::StrCat("variant ", v.name(), " failed (exit ", code, "): ", last_line(log), " (log: ", log, ")"));
    }
    PEFT_ASSIGN_OR_RETURN(json r, read_json(run + "/result.json"));
    say(absl::StrFormat("[%d/%d] %-14s reverse %4s, copy %4s, eval loss %.4f, %.3f s/step (%.0f s)", i + 1,
                        variants.size(), v.name(), pct(r["accuracy"].get<double>()),
                        pct(r["control_accuracy"].get<double>()), r["final_eval_loss"].get<double>(),
                        r["step_seconds"].get<double>(), now_seconds() - t0));
    rows.push_back(std::move(r));
  }

  // Outputs, written whole at the end.
  PEFT_ASSIGN_OR_RETURN(const proto::Recipe shared, variant_recipe(s, variants[0]));
  const json settings = {
      {"steps", shared.training().steps()},
      {"micro_batch", shared.training().micro_batch()},
      {"schedule", shared.schedule().ShortDebugString()},
      {"optimizer", "AdamW, lr per method (see rows)"},
      {"seq_len", shared.data().seq_len()},
      {"seed", s.task.seed},
      {"threads", s.threads},
      {"train_examples", s.task.train_examples},
      {"replay", s.task.replay},
      {"test_examples", s.task.test_examples},
      {"word_length", absl::StrCat(s.task.min_len, "-", s.task.max_len)},
  };
  const json m = machine(s.threads);
  const json out = {{"suite", "methods"}, {"machine", m},     {"settings", settings},
                    {"base", base_j},     {"variants", rows}, {"total_seconds", now_seconds() - t_start}};
  const std::string tbl = table(base_j, rows);
  std::string md = absl::StrFormat(
      "# peft bench --suite=methods\n\n"
      "Machine: %s, %d cores, %d LibTorch thread(s), %s RAM; LibTorch %s; %s.\n\n"
      "Task: \"reverse: <word> -> <reversed word>\" (greedy exact match on %d held-out words of %s letters); "
      "the copy control is the base's pretraining task, replayed as %.0f%% of the %d training records. "
      "Base: the built-in byte-level LLaMA (%s parameters, hidden %d). Every row: %d steps x %d examples, %s, "
      "seed %d, fp32.\n\n%s",
      m["cpu"].get<std::string>(), m["cores"].get<int64_t>(), s.threads, m["memory"].get<std::string>(),
      m["libtorch"].get<std::string>(), m["date"].get<std::string>(), s.task.test_examples,
      settings["word_length"].get<std::string>(), 100 * s.task.replay, s.task.train_examples,
      fmt_int(base_j["parameters"].get<int64_t>()), base_j["hidden_size"].get<int64_t>(), shared.training().steps(),
      shared.training().micro_batch(), shared.schedule().ShortDebugString(), s.task.seed, tbl);
  PEFT_RETURN_IF_ERROR(task::write_text(s.out_dir + "/bench.json", out.dump(2) + "\n"));
  PEFT_RETURN_IF_ERROR(task::write_text(s.out_dir + "/bench.md", md));
  say("");
  say(tbl);
  say(absl::StrFormat("bench: %s/bench.md and bench.json (%.0f s)", s.out_dir, now_seconds() - t_start));
  return absl::OkStatus();
}

// ---- The perf suite: the training speed and memory targets --------------------------

// One configuration of trainers/perf_bench.h per child process (so that each
// peak RSS is its own), then the eager PyTorch reference
// (scripts/eager_reference.py, the same model and step) per precision when a
// python3 with torch is found; bench.md states each target and whether it is
// met.
struct PerfRun {
  std::string precision;
  json ours, eager;  // eager: null when not run
  std::string eager_note;
};

absl::StatusOr<std::vector<std::string>> perf_precisions(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view p : absl::StrSplit(list, ',', absl::SkipEmpty())) {
    if (p != "bf16" && p != "fp32") {
      return absl::InvalidArgumentError(absl::StrCat("--precisions: '", p, "' is not bf16 or fp32"));
    }
    out.emplace_back(p);
  }
  if (out.empty()) return absl::InvalidArgumentError("--precisions is empty");
  return out;
}

absl::StatusOr<trainers::PerfOptions> perf_options(const ParsedFlags& f, int64_t threads) {
  trainers::PerfOptions o;
  o.threads = static_cast<int>(threads);
  PEFT_ASSIGN_OR_RETURN(int64_t steps, f.get_int("steps"));
  if (steps > 0) o.steps = static_cast<int>(steps);
  if (f.get("perf_model") == "tiny") {
    // A smoke-test size (tests/examples/bench_test.cc): same code, seconds.
    o.hidden = 64, o.layers = 2, o.heads = 4, o.ffn = 172, o.vocab = 512, o.batch = 2, o.seq = 32;
    o.warmup_steps = 1;
    o.matmul_seconds = 0.05;
  } else if (f.get("perf_model") != "target") {
    return absl::InvalidArgumentError(
        absl::StrCat("--perf_model must be target or tiny, got '", f.get("perf_model"), "'"));
  }
  o.device = f.get("device");
  if (o.device != "cpu" && o.device != "cuda") {
    return absl::InvalidArgumentError(absl::StrCat("--device must be cpu or cuda, got '", o.device, "'"));
  }
  return o;
}

absl::Status run_perf_child(const ParsedFlags& f, int64_t threads, const std::string& precision,
                            const std::string& out_file) {
  PEFT_ASSIGN_OR_RETURN(trainers::PerfOptions o, perf_options(f, threads));
  o.bf16 = precision == "bf16";
  PEFT_ASSIGN_OR_RETURN(const trainers::PerfResult r, trainers::run_perf_benchmark(o));
  return task::write_text(out_file, trainers::perf_result_json(r) + "\n");
}

// The first interpreter that imports torch (a quick check), else empty.
// "auto": python3 in PATH, then Debian's /usr/bin/python3 (python3-torch),
// which a pyenv or virtualenv python3 earlier in PATH would hide.
std::string python_with_torch(const std::string& python, const std::string& log) {
  const std::vector<std::string> candidates =
      python == "auto" ? std::vector<std::string>{"python3", "/usr/bin/python3"} : std::vector<std::string>{python};
  for (const std::string& p : candidates) {
    absl::StatusOr<int> code = run_child({p, "-c", "import torch"}, log);
    if (code.ok() && *code == 0) return p;
  }
  return "";
}

std::string perf_table(const std::vector<PerfRun>& runs, const std::string& device) {
  const bool cuda = device == "cuda";
  std::string t =
      absl::StrCat("| implementation | precision | tokens/s | s/step | ", cuda ? "peak CUDA MB" : "peak RSS MB",
                   " | achieved GFLOP/s | matmul peak GFLOP/s | MFU |\n|---|---|---:|---:|---:|---:|---:|---:|\n");
  for (const PerfRun& r : runs) {
    const json& o = r.ours;
    absl::StrAppendFormat(
        &t, "| peft-cpp | %s | %s | %.3f | %.0f | %.0f | %.0f | %.1f%% |\n", r.precision,
        fmt_int(static_cast<int64_t>(o["tokens_per_s"].get<double>())), o["step_s_median"].get<double>(),
        cuda ? o["peak_device_mb"].get<double>() : o["peak_rss_mb"].get<double>(), o["achieved_gflops"].get<double>(),
        o["peak_matmul_gflops"].get<double>(), 100 * o["mfu"].get<double>());
    if (r.eager.is_object()) {
      const json& e = r.eager;
      absl::StrAppendFormat(&t, "| %s | %s | %s | %.3f | %.0f | - | - | %.1f%% |\n", e["impl"].get<std::string>(),
                            r.precision, fmt_int(static_cast<int64_t>(e["tokens_per_s"].get<double>())),
                            e["step_s_median"].get<double>(),
                            cuda ? e.value("peak_cuda_mb", 0.0) : e["peak_rss_mb"].get<double>(),
                            100 * e["tokens_per_s"].get<double>() * o["flops_per_token"].get<double>() / 1e9 /
                                o["peak_matmul_gflops"].get<double>());
    }
  }
  t += "\nTargets: MFU >= 50% of the matmul rate measured in the same run; >= 2x eager PyTorch's "
       "tokens/s at <= 0.7x its peak memory (same precision).\n\n";
  for (const PerfRun& r : runs) {
    const json& o = r.ours;
    std::string line = absl::StrFormat("- %s: MFU %.1f%% (%s)", r.precision, 100 * o["mfu"].get<double>(),
                                       o["mfu"].get<double>() >= 0.5 ? "met" : "not met");
    if (r.eager.is_object()) {
      const double speed = o["tokens_per_s"].get<double>() / r.eager["tokens_per_s"].get<double>();
      const double mem = cuda ? o["peak_device_mb"].get<double>() / r.eager.value("peak_cuda_mb", 1.0)
                              : o["peak_rss_mb"].get<double>() / r.eager["peak_rss_mb"].get<double>();
      absl::StrAppendFormat(&line, "; speed %.2fx eager (%s); peak memory %.2fx eager (%s)", speed,
                            speed >= 2 ? "met" : "not met", mem, mem <= 0.7 ? "met" : "not met");
    } else {
      absl::StrAppend(&line, "; eager reference not run (", r.eager_note, ")");
    }
    absl::StrAppend(&t, line, "; frozen base weights with a gradient: ", o["base_parameters_with_grad"].get<int64_t>(),
                    "\n");
  }
  return t;
}

absl::Status run_perf_suite(const ParsedFlags& f, const std::vector<FlagSpec>& specs) {
  const double t_start = now_seconds();
  PEFT_ASSIGN_OR_RETURN(int64_t threads, f.get_int("threads"));
  if (threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  // The perf suite measures the whole machine unless told otherwise.
  if (threads == 0 || !f.has("threads")) threads = std::max(1u, std::thread::hardware_concurrency());
  PEFT_ASSIGN_OR_RETURN(const std::vector<std::string> precisions, perf_precisions(f.get("precisions")));
  PEFT_RETURN_IF_ERROR(perf_options(f, threads).status());
  const std::string out_dir = f.get("out_dir");
  if (out_dir.empty()) return absl::InvalidArgumentError("--out_dir must not be empty");
  if (f.get("device") == "cuda" && !torch::cuda::is_available()) {
    return absl::FailedPreconditionError("--device=cuda: no CUDA device is available to this LibTorch");
  }
  if (f.has("internal_variant")) {
    return run_perf_child(f, threads, f.get("internal_variant"),
                          out_dir + "/work/perf_" + f.get("internal_variant") + ".json");
  }
  std::error_code ec;
  const std::string self = fs::read_symlink("/proc/self/exe", ec).string();
  if (ec) return absl::InternalError(absl::StrCat("cannot find this program (/proc/self/exe): ", ec.message()));
  const std::string work = out_dir + "/work";
  fs::create_directories(work, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", work, ": ", ec.message()));
  const std::string device = f.get("device");

  std::string eager_script = f.get("eager_script");
  std::string python, eager_note;
  if (eager_script == "off") {
    eager_note = "--eager_script=off";
  } else if (f.get("perf_model") != "target") {
    eager_note = "the eager reference is the target model only";
  } else if (!fs::exists(eager_script)) {
    eager_note = absl::StrCat(eager_script, " not found (run from the repository root or set --eager_script)");
  } else {
    python = python_with_torch(f.get("python"), work + "/python_check.log");
    if (python.empty()) {
      eager_note = absl::StrCat("no python (--python=", f.get("python"),
                                ") imports torch; Debian: apt-get install python3-torch");
    }
  }

  std::vector<std::string> args = {self, "bench"};
  for (const std::string& a : given_flags(f, specs)) args.push_back(a);
  std::vector<PerfRun> runs;
  for (const std::string& p : precisions) {
    PerfRun run;
    run.precision = p;
    const std::string log = absl::StrCat(work, "/perf_", p, ".log");
    std::vector<std::string> child = args;
    child.push_back("--internal_variant=" + p);
    say(absl::StrCat("bench: peft-cpp ", p, " on ", device, " (", threads, " threads) ..."));
    PEFT_ASSIGN_OR_RETURN(int code, run_child(child, log));
    if (code != 0) {
      return absl::InternalError(
          absl::StrCat("perf ", p, " failed (exit ", code, "): ", last_line(log), " (log: ", log, ")"));
    }
    PEFT_ASSIGN_OR_RETURN(run.ours, read_json(absl::StrCat(work, "/perf_", p, ".json")));
    say(absl::StrFormat("  %.0f tokens/s, MFU %.1f%%", run.ours["tokens_per_s"].get<double>(),
                        100 * run.ours["mfu"].get<double>()));
    if (!python.empty()) {
      const std::string elog = absl::StrCat(work, "/eager_", p, ".log");
      say(absl::StrCat("bench: eager PyTorch ", p, " ..."));
      std::vector<std::string> e = {python, eager_script, "--precision=" + p, absl::StrCat("--threads=", threads),
                                    "--device=" + device};
      // The same warm-up and measured steps as the C++ run.
      e.push_back(absl::StrCat("--warmup=", run.ours["warmup_steps"].get<int64_t>()));
      e.push_back(absl::StrCat("--steps=", run.ours["measured_steps"].get<int64_t>()));
      PEFT_ASSIGN_OR_RETURN(int ecode, run_child(e, elog));
      if (ecode == 0) {
        try {
          run.eager = json::parse(last_line(elog));
          say(absl::StrFormat("  %.0f tokens/s", run.eager["tokens_per_s"].get<double>()));
        } catch (const std::exception&) {
          run.eager_note = absl::StrCat("unreadable output, see ", elog);
        }
      } else {
        run.eager_note = absl::StrCat("exit ", ecode, ": ", last_line(elog));
      }
    } else {
      run.eager_note = eager_note;
    }
    runs.push_back(std::move(run));
  }

  const json m = machine(threads);
  json rows = json::array();
  for (const PerfRun& r : runs) {
    rows.push_back(
        {{"precision", r.precision}, {"peft_cpp", r.ours}, {"eager", r.eager}, {"eager_note", r.eager_note}});
  }
  const json out = {{"suite", "perf"},
                    {"machine", m},
                    {"device", device},
                    {"runs", rows},
                    {"total_seconds", now_seconds() - t_start}};
  const json& o0 = runs[0].ours;
  const std::string tbl = perf_table(runs, device);
  const std::string md = absl::StrFormat(
      "# peft bench --suite=perf\n\n"
      "Machine: %s, %d cores, %d LibTorch thread(s), %s RAM; LibTorch %s; device %s; %s.\n\n"
      "Model: LLaMA hidden %d, %d layers, %d heads, FFN %d, vocabulary %d; batch %d x sequence %d; LoRA r=%d on "
      "every block projection, base frozen; AdamW; median of %d steps after %d warm-up steps.\n"
      "MFU = tokens/s x FLOPs per token / the best matmul rate measured in the same run (trainers/perf_bench.h: "
      "4 N_proj + 4 N_head + 12 L T C + LoRA = %.0f MFLOP per token; a frozen base needs no weight gradient).\n\n%s",
      m["cpu"].get<std::string>(), m["cores"].get<int64_t>(), threads, m["memory"].get<std::string>(),
      m["libtorch"].get<std::string>(), device, m["date"].get<std::string>(), o0["model"]["hidden"].get<int64_t>(),
      o0["model"]["layers"].get<int64_t>(), o0["model"]["heads"].get<int64_t>(), o0["model"]["ffn"].get<int64_t>(),
      o0["model"]["vocab"].get<int64_t>(), o0["batch"].get<int64_t>(), o0["seq"].get<int64_t>(),
      o0["lora_r"].get<int64_t>(), o0["measured_steps"].get<int64_t>(), o0["warmup_steps"].get<int64_t>(),
      o0["flops_per_token"].get<double>() / 1e6, tbl);
  PEFT_RETURN_IF_ERROR(task::write_text(out_dir + "/bench.json", out.dump(2) + "\n"));
  PEFT_RETURN_IF_ERROR(task::write_text(out_dir + "/bench.md", md));
  say("");
  say(tbl);
  say(absl::StrFormat("bench: %s/bench.md and bench.json (%.0f s)", out_dir, now_seconds() - t_start));
  return absl::OkStatus();
}

// ---- Suites ----------------------------------------------------------------------

struct Suite {
  std::string name;
  std::function<absl::Status(const ParsedFlags&, const std::vector<FlagSpec>&)> run;
};

const std::vector<Suite>& suites() {
  static const std::vector<Suite> s = {{"methods", run_methods_suite}, {"perf", run_perf_suite}};
  return s;
}

std::vector<FlagSpec> bench_flags() {
  std::vector<FlagSpec> specs = {
      text_flag(
          "suite",
          "which benchmark: methods (every PEFT method on the built-in task) or perf (training speed and memory of "
          "the target model beside eager PyTorch)",
          "methods"),
      text_flag("methods",
                "comma-separated subset of full, lora, nora, sorsa, bone, compacter, compacter++, hsm; or all", "all"),
      text_flag("reweighting", "both, off or on: each method without and/or with LinUpper sample reweighting", "both"),
      text_flag("out_dir", "bench.md, bench.json, and work/ (data, cached base, one run directory per variant)",
                "runs/bench"),
      int_flag("steps",
               "training steps of every variant (0 = the quickstart recipe's training.steps); perf: measured steps (0 "
               "= 6 on "
               "cpu, 20 on cuda)",
               0),
      int_flag("threads",
               "LibTorch threads (0 = all cores); the built-in model is fastest on one; perf: all cores unless given",
               1),
      text_flag("precisions", "perf: comma-separated bf16, fp32", "bf16,fp32"),
      text_flag("device", "perf: cpu or cuda", "cpu"),
      text_flag("perf_model", "perf: target (LLaMA hidden 512 x 8 layers, batch 8 x 256) or tiny (a smoke test)",
                "target"),
      text_flag("eager_script", "perf: the eager PyTorch reference, or off", "scripts/eager_reference.py"),
      text_flag("python",
                "perf: the python that runs the eager reference (needs torch); auto: python3, then /usr/bin/python3",
                "auto"),
      text_flag("internal_variant", "internal: run one variant in this process (the parent starts these)"),
  };
  for (FlagSpec& s : task::task_flags()) specs.push_back(std::move(s));
  return specs;
}

absl::Status run_bench(const ParsedFlags& f) {
  std::vector<std::string> names;
  for (const Suite& s : suites()) {
    if (s.name == f.get("suite")) return s.run(f, bench_flags());
    names.push_back(s.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--suite: unknown suite '", f.get("suite"), "' (known: ", absl::StrJoin(names, ", "), ")"));
}

}  // namespace

std::vector<Command> bench_commands() {
  return {{"bench",
           "Benchmark suites: --suite=methods trains every method on the built-in task; --suite=perf measures training "
           "speed and memory against eager PyTorch (bench.md, bench.json).",
           bench_flags(), run_bench}};
}

}  // namespace peft::cli
