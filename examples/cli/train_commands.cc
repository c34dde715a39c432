// peft train.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "examples/cli/command.h"
#include "peft/core/status.h"
#include "trainers/distributed.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft::cli {
namespace {

absl::Status run_train(const ParsedFlags& f) {
  std::vector<std::string> overrides = f.get_all("set");
  if (f.has("output_dir")) overrides.push_back("output_dir=" + f.get("output_dir"));
  PEFT_ASSIGN_OR_RETURN(const bool merge, f.get_bool("merge_on_finish"));
  if (merge) overrides.push_back("checkpoint.merge_on_finish=true");
  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, trainers::load_recipe(f.get("recipe"), overrides));
  trainers::TrainOptions o;
  PEFT_ASSIGN_OR_RETURN(o.resume, f.get_bool("resume"));
  PEFT_ASSIGN_OR_RETURN(o.dry_run, f.get_bool("dry_run"));
  PEFT_ASSIGN_OR_RETURN(o.ignore_memory_plan, f.get_bool("ignore_memory_plan"));
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary s, trainers::train(recipe, o));
  if (s.rank != 0) return absl::OkStatus();  // rank 0 alone reports, as it alone logs
  if (o.dry_run) {
    std::fprintf(stdout, "%s\n",
                 nlohmann::ordered_json({{"dry_run", true},
                                         {"run_dir", s.run_dir},
                                         {"trainable_parameters", s.trainable_parameters},
                                         {"planned_peak_mb", s.planned_peak_mb},
                                         {"bf16", s.bf16}})
                     .dump()
                     .c_str());
    return absl::OkStatus();
  }
  nlohmann::ordered_json j = {{"run_dir", s.run_dir},
                              {"steps", s.steps},
                              {"resumed_from_step", s.resumed_from_step},
                              {"trainable_parameters", s.trainable_parameters},
                              {"initial_eval_loss", s.initial_eval_loss},
                              {"final_eval_loss", s.final_eval_loss},
                              {"final_train_loss", s.final_train_loss},
                              {"tokens_per_second", s.tokens_per_second},
                              {"skipped_steps", s.skipped_steps},
                              {"planned_peak_mb", s.planned_peak_mb},
                              {"bf16", s.bf16}};
  std::fprintf(stdout, "%s\n", j.dump().c_str());
  return absl::OkStatus();
}

}  // namespace

int run_launch(const std::vector<std::string>& args) {
  const std::vector<FlagSpec> specs = {int_flag("nproc", "number of local processes").required(),
                                       int_flag("master_port", "TCP port of rank 0's store", 29500)};
  auto dash = std::find(args.begin(), args.end(), std::string("--"));
  const std::vector<std::string> flag_args(args.begin(), dash);
  std::vector<std::string> command(dash == args.end() ? args.end() : dash + 1, args.end());
  if (std::find(flag_args.begin(), flag_args.end(), "--help") != flag_args.end() || command.empty()) {
    std::fputs(
        usage("launch -- COMMAND...", "Run COMMAND in N local processes for data-parallel training.", specs).c_str(),
        command.empty() ? stderr : stdout);
    return command.empty() ? 2 : 0;
  }
  absl::StatusOr<ParsedFlags> f = parse_flags(flag_args, specs);
  absl::Status st = f.status();
  if (st.ok()) {
    absl::StatusOr<int64_t> n = f->get_int("nproc");
    absl::StatusOr<int64_t> port = f->get_int("master_port");
    st = !n.ok() ? n.status() : !port.ok() ? port.status() : absl::OkStatus();
    if (st.ok() && (*n < 1 || *n > 256)) st = absl::InvalidArgumentError("--nproc must be in [1, 256]");
    // `peft` as the command means this very binary.
    if (st.ok() && command[0] == "peft") command[0] = "/proc/self/exe";
    if (st.ok() && command[0] == "/proc/self/exe") {
      std::error_code ec;
      command[0] = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    }
    if (st.ok()) st = trainers::launch_local(static_cast<int>(*n), command, static_cast<int>(*port));
  }
  if (!st.ok()) {
    std::fprintf(stderr, "peft launch: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}

std::vector<Command> train_commands() {
  return {{"train",
           "Fine-tune as a recipe (protobuf text format) says; see examples/recipes/.",
           {text_flag("recipe", "the recipe file (.textproto)").required(),
            text_flag("set",
                      "override one recipe field (repeatable): --set=training.steps=200, a list "
                      "--set=adapters.0.target.modules=q_proj,v_proj, a whole message --set='reweighting={ strategy: "
                      "QUADRATIC }'")
                .repeated(),
            text_flag("output_dir", "the run directory (overrides the recipe's output_dir)"),
            bool_flag("resume", "continue from the newest checkpoint in the run directory"),
            bool_flag("dry_run",
                      "check the recipe, model, tokenizer, data and adapters, then stop without training or writing"),
            bool_flag("ignore_memory_plan",
                      "train even when the memory plan's expected peak exceeds the memory available (a warning "
                      "instead of the refusal; the plan errs on the high side)"),
            bool_flag(
                "merge_on_finish",
                "also write the merged Hugging Face model to <run>/merged (= --set=checkpoint.merge_on_finish=true)")},
           run_train}};
}

}  // namespace peft::cli
