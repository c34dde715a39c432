//
// Adapter directories: PeftModel::save_adapter / load_adapter are defined in
// adapter_files.cc, the one place that knows the file layout.
//
//   DIR/adapter_model.safetensors   tensors, keys "base_model.model.<path>.<key>"
//   DIR/adapter_config.json         Hugging Face PEFT's config
//   DIR/peft_cpp.json               our full typed config (authoritative when present)
//
// The keys every PEFT config shares are handled here, once, for all
// methods. Written: peft_type, task_type, base_model_name_or_path,
// inference_mode, target_modules (a list of names or a full-match regex of
// exactly the adapted paths) and fan_in_fan_out (from the adapted
// projections' own layout: GPT-2's Conv1D). Read: target_modules,
// exclude_modules, layers_to_transform. A method's registry entry
// (config_json / parse_config_json) maps only its own keys.
#ifndef PEFT_ADAPTER_FILES_H_
#define PEFT_ADAPTER_FILES_H_

#include <string>

#include "absl/status/statusor.h"
#include "peft/proto/adapter_config.pb.h"

namespace peft {

/// A Hugging Face PEFT adapter_config.json as our config: the method from
/// peft_type (its parse_config_json maps the method keys), then the shared
/// target keys: target_modules (list: name suffixes; string: a regex that
/// must match the whole path), exclude_modules (list of suffixes; a regex
/// string is refused), layers_to_transform (an int or a list). Errors name
/// the file's problem; `source` prefixes them (the file's path).
absl::StatusOr<proto::AdapterConfig> parse_hf_adapter_config(const std::string& json_text,
                                                             const std::string& source = "adapter_config.json");

}  // namespace peft

#endif  // PEFT_ADAPTER_FILES_H_
