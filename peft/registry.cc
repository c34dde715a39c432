#include "peft/registry.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "peft/bone/bone.h"
#include "peft/compacter/compacter.h"
#include "peft/hsm/hsm.h"
#include "peft/lora/lora.h"
#include "peft/nora/nora.h"
#include "peft/sorsa/sorsa.h"

namespace peft {

const std::vector<AdapterMethod>& adapter_methods() {
  // THE list of methods. Each entry is defined in the method's own folder.
  static const std::vector<AdapterMethod> methods = {
      lora_method(), nora_method(), sorsa_method(), bone_method(), compacter_method(), hsm_method(),
  };
  return methods;
}

absl::StatusOr<const AdapterMethod*> method_of(const proto::AdapterConfig& config) {
  for (const AdapterMethod& m : adapter_methods()) {
    if (m.method_case == config.method_case()) return &m;
  }
  std::vector<std::string> names;
  for (const AdapterMethod& m : adapter_methods()) names.push_back(m.name);
  return absl::InvalidArgumentError(
      absl::StrCat("adapter '", config.name(), "' names no method (set one of: ", absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<const AdapterMethod*> find_method(const std::string& name) {
  std::vector<std::string> names;
  for (const AdapterMethod& m : adapter_methods()) {
    if (m.name == name) return &m;
    names.push_back(m.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown adapter method '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<const AdapterMethod*> method_for_peft_type(const std::string& peft_type) {
  for (const AdapterMethod& m : adapter_methods()) {
    for (const std::string& t : m.accepted_peft_types) {
      if (t == peft_type) return &m;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("adapter_config.json: peft_type '", peft_type, "' is not supported by peft-cpp"));
}

}  // namespace peft
