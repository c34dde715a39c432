//
// Which projections an adapter goes on, shared by every method: module-name
// suffixes (PEFT's list form), a full-match regular expression (PEFT's string
// form), presets, block-index filters and exclusions. A target that matches
// nothing is an error listing the module names the model has. The presets and
// each projection's block index come from the model itself
// (CausalLm::target_presets, CausalLm::adaptable_slots in models/causal_lm.h):
// nothing here knows an architecture or reads block numbers out of paths.
#ifndef PEFT_TARGET_H_
#define PEFT_TARGET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "peft/adaptable_linear.h"
#include "peft/proto/adapter_config.pb.h"

namespace peft {

/// One projection of a model: its path, block index (-1 outside the
/// blocks) and AdaptableLinear, as the model reports it.
using LinearTarget = models::AdaptableSlot;

/// Every AdaptableLinear of the model, in module order (the model's
/// adaptable_slots()).
std::vector<LinearTarget> adaptable_modules(models::CausalLm& model);

/// The projections `spec` selects. Errors name the entry that matched nothing
/// and list the available module names.
absl::StatusOr<std::vector<LinearTarget>> resolve_targets(models::CausalLm& model, const proto::TargetSpec& spec);

/// The short names targets are written with ("q_proj", "c_attn", ...), in
/// order of first appearance, for adapter_config.json.
std::vector<std::string> target_short_names(const std::vector<LinearTarget>& targets);

}  // namespace peft

#endif  // PEFT_TARGET_H_
