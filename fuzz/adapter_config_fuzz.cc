// libFuzzer harness: a Hugging Face adapter_config.json as
// parse_hf_adapter_config reads it (the shared keys, then the method's own
// parse_config_json from the registry, with the json_fields checks), then
// the config through its method's validate and config_json, as load_adapter
// and save_adapter use them. Any input must give a config or a Status, never
// a crash, an uncaught exception or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "peft/adapter_files.h"
#include "peft/registry.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<peft::proto::AdapterConfig> c = peft::parse_hf_adapter_config(text, "fuzz/adapter_config.json");
  if (!c.ok()) return 0;
  absl::StatusOr<const peft::AdapterMethod*> m = peft::method_of(*c);
  if (!m.ok()) __builtin_trap();  // a parsed config names its method
  if (!(*m)->validate(*c).ok()) return 0;
  for (bool fan_in_fan_out : {false, true}) {
    // What save_adapter writes must be JSON again.
    const std::string out = (*m)->config_json(*c, fan_in_fan_out);
    if (nlohmann::json::parse(out, nullptr, false).is_discarded()) __builtin_trap();
  }
  if ((*m)->config_for_module) (void)(*m)->config_for_module(*c, "model.layers.0.self_attn.q_proj");
  return 0;
}
