//
// Reading training recipes: protobuf text format (trainers/proto/recipe.proto),
// command-line overrides (`--set training.steps=200`,
// `--set adapters.0.lora.r=16`), and validation whose errors name the field.
//
//   PEFT_ASSIGN_OR_RETURN(proto::Recipe r, load_recipe("examples/recipes/lora.textproto",
//                                                      {"training.steps=50"}));
#ifndef PEFT_TRAINERS_RECIPE_H_
#define PEFT_TRAINERS_RECIPE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data/dataset.h"
#include "trainers/proto/recipe.pb.h"

namespace peft::trainers {

/// Parses recipe text; unknown fields, wrong types and bad enum names are
/// errors naming the line and the field.
absl::StatusOr<proto::Recipe> parse_recipe(const std::string& text, const std::string& source = "recipe");

/// Applies one `path.to.field=value` override (repeated message fields take
/// an index: `adapters.0.lora.r=16`).
absl::Status apply_override(proto::Recipe* recipe, const std::string& assignment);

/// Checks required fields and ranges; the error names the field and value.
/// Also checks the recipe against this build and machine: training.device
/// CUDA needs a CUDA device, distributed.backend NCCL a CUDA build and
/// training.device CUDA (or AUTO resolving to it).
absl::Status validate_recipe(const proto::Recipe& recipe);

/// What training.device means on this machine: CUDA for CUDA, and for AUTO
/// when a CUDA device is available; CPU otherwise. Never AUTO.
proto::TrainingConfig::Device resolved_device(const proto::Recipe& recipe);

/// What distributed.backend means: AUTO is GLOO on the CPU and NCCL on CUDA
/// (after resolved_device). Never AUTO.
proto::DistributedConfig::Backend resolved_backend(const proto::Recipe& recipe);

/// The recipe in file `path`, parsed but not validated (NotFoundError when
/// it cannot be opened).
absl::StatusOr<proto::Recipe> read_recipe(const std::string& path);

/// read_recipe(path) + overrides + validate_recipe.
absl::StatusOr<proto::Recipe> load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

/// The data loader's options from the recipe's `data` (and training.seed).
/// A custom prompt_template also serves records with an empty input unless
/// prompt_template_no_input is given.
data::DataOptions data_options(const proto::Recipe& recipe);

/// The effective recipe in text format (saved into the run directory).
std::string recipe_to_text(const proto::Recipe& recipe);

/// What changed from `before` to `after`, one "modified: training.steps: 40 -> 60"
/// (or added:/deleted:) line per field; empty when they are equal. The
/// trainer prints it when --resume continues a run under another recipe.
std::string recipe_differences(const proto::Recipe& before, const proto::Recipe& after);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_RECIPE_H_
