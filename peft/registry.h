//
// The single list of PEFT methods. Each AdapterMethod says how to validate
// its options, build its adapter for one projection (LinearAdapter methods)
// or for the whole model (StreamAdapter methods), which base parameters train
// alongside it, and how its adapter_config.json looks. Adding a method means
// one folder under peft/ plus one entry in registry.cc.
#ifndef PEFT_REGISTRY_H_
#define PEFT_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/target.h"

namespace peft {

struct AdapterMethod {
  /// Lower-case name used in recipes and on the command line ("lora").
  std::string name;
  /// The oneof case of proto::AdapterConfig holding this method's options.
  proto::AdapterConfig::MethodCase method_case = proto::AdapterConfig::METHOD_NOT_SET;
  /// `peft_type` written to adapter_config.json.
  std::function<std::string(const proto::AdapterConfig&)> peft_type;
  /// Every `peft_type` this method reads back (e.g. {"BONE", "MISS"}).
  std::vector<std::string> accepted_peft_types;
  /// Checks the options alone (ranks positive, ...), naming the bad field.
  std::function<absl::Status(const proto::AdapterConfig&)> validate;
  /// Checks one target before anything is built (rank against its shape,
  /// divisibility). Null: nothing to check.
  std::function<absl::Status(const proto::AdapterConfig&, const LinearTarget&)> check_target;
  /// Builds the adapter for one projection. May rewrite the frozen base
  /// weight under NoGradGuard (PiSSA/OLoRA/SORSA residuals). Null for stream
  /// methods.
  std::function<absl::StatusOr<std::shared_ptr<LinearAdapter>>(const proto::AdapterConfig&, const LinearTarget&,
                                                               uint64_t seed)>
      make_linear;
  /// Builds the model-level adapter (stream methods); null for linear methods.
  /// For stream methods targets are still resolved (e.g. PAT's LoRA part).
  std::function<absl::StatusOr<std::shared_ptr<StreamAdapter>>(const proto::AdapterConfig&, models::CausalLm&,
                                                               uint64_t seed)>
      make_stream;
  /// True when make_linear rewrites its targets' base weights (PiSSA/OLoRA
  /// and SORSA residuals), so that a failed load must restore them. Null:
  /// never.
  std::function<bool(const proto::AdapterConfig&)> rewrites_base;
  /// Whether the adapter can be folded into the base weights.
  bool mergeable = true;
  /// Base parameters (Hugging Face names) that train with this adapter
  /// (LoRA bias="all", Compacter's layer norms). Null: none.
  std::function<bool(const proto::AdapterConfig&, const std::string& base_param,
                     const std::vector<LinearTarget>& targets)>
      trains_base_param;
  /// Method keys of adapter_config.json as a JSON object text (the core adds
  /// peft_type, target_modules, task_type, base_model_name_or_path, ...).
  std::function<std::string(const proto::AdapterConfig&, bool fan_in_fan_out)> config_json;
  /// Inverse of config_json for files written by Hugging Face PEFT: fills the
  /// method options from an adapter_config.json text. Null when only our own
  /// files are read.
  std::function<absl::Status(const std::string& json_text, proto::AdapterConfig*)> parse_config_json;
  /// Trainable parameters per adapted projection [out, in] (docs/methods.md
  /// formulas), for the contract test and the summary, given the config that
  /// applies to that projection (config_for_module). Null for stream methods.
  std::function<int64_t(const proto::AdapterConfig&, int64_t out, int64_t in)> trainable_count;
  /// The options that apply to the module at `path` when they differ per
  /// module (LoRA's rank_pattern / alpha_pattern). Null: the same everywhere.
  std::function<proto::AdapterConfig(const proto::AdapterConfig&, const std::string& path)> config_for_module;
  /// The adapter as an ordinary LoRA on the ORIGINAL base weights (PiSSA and
  /// OLoRA inits, as PEFT's path_initial_model_for_weight_conversion): the
  /// config to write, or an error saying why this config has no such form.
  /// Null: the method has none.
  std::function<absl::StatusOr<proto::AdapterConfig>(const proto::AdapterConfig&)> plain_lora_config;
  /// The tensors of one projection's adapter in that form (keys as state()).
  /// Set exactly when plain_lora_config is.
  std::function<std::vector<AdapterTensor>(LinearAdapter&)> plain_lora_state;
};

/// Every method, in a fixed order.
const std::vector<AdapterMethod>& adapter_methods();

/// The method of `config` (its oneof case), or an error naming the problem.
absl::StatusOr<const AdapterMethod*> method_of(const proto::AdapterConfig& config);

/// The method called `name` ("lora", "bone", ...).
absl::StatusOr<const AdapterMethod*> find_method(const std::string& name);

/// The method whose peft_type is `peft_type` in Hugging Face adapter files.
absl::StatusOr<const AdapterMethod*> method_for_peft_type(const std::string& peft_type);

}  // namespace peft

#endif  // PEFT_REGISTRY_H_
