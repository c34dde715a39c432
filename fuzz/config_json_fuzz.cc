// libFuzzer harness: a model's config.json as parse_model_config reads it.
// Any input must give a config that validates or a Status, never a crash,
// a sanitizer report or an unbounded allocation.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "models/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<peft::models::ModelConfig> c = peft::models::parse_model_config(text);
  if (c.ok()) {
    // A config that parses is valid, and its size estimate is finite.
    (void)peft::models::estimated_model_bytes(*c);
    (void)peft::models::model_config_to_json(*c);
  }
  return 0;
}
