// peft train.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "examples/cli/command.h"
#include "peft/core/status.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft::cli {
namespace {

absl::Status run_train(const ParsedFlags& f) {
  std::vector<std::string> overrides = f.get_all("set");
  if (f.has("output_dir")) overrides.push_back("output_dir=" + f.get("output_dir"));
  PEFT_ASSIGN_OR_RETURN(proto::Recipe recipe, trainers::load_recipe(f.get("recipe"), overrides));
  trainers::TrainOptions o;
  PEFT_ASSIGN_OR_RETURN(o.resume, f.get_bool("resume"));
  PEFT_ASSIGN_OR_RETURN(trainers::TrainSummary s, trainers::train(recipe, o));
  nlohmann::ordered_json j = {{"run_dir", s.run_dir},
                              {"steps", s.steps},
                              {"resumed_from_step", s.resumed_from_step},
                              {"trainable_parameters", s.trainable_parameters},
                              {"initial_eval_loss", s.initial_eval_loss},
                              {"final_eval_loss", s.final_eval_loss},
                              {"final_train_loss", s.final_train_loss},
                              {"tokens_per_second", s.tokens_per_second},
                              {"skipped_steps", s.skipped_steps}};
  std::fprintf(stdout, "%s\n", j.dump().c_str());
  return absl::OkStatus();
}

}  // namespace

std::vector<Command> train_commands() {
  return {{"train",
           "Fine-tune as a recipe (protobuf text format) says; see examples/recipes/.",
           {{"recipe", "the recipe file (.textproto)", "", true},
            {"set", "override one recipe field: --set=training.steps=200 (repeatable)", "", false, false, true},
            {"output_dir", "the run directory (overrides the recipe's output_dir)", ""},
            {"resume", "continue from the newest checkpoint in the run directory", "false", false, true}},
           run_train}};
}

}  // namespace peft::cli
