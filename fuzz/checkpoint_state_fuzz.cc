// libFuzzer harness: a training checkpoint's state.json as
// load_training_state reads it (parse_training_state_json), then the step
// through checkpoint_dir and checkpoint_step, as --resume names the
// checkpoint. Any input must give the numbers or a Status, never a crash, an
// uncaught exception or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string>

#include "trainers/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  peft::trainers::TrainingState state;
  if (!peft::trainers::parse_training_state_json(text, "run/checkpoints/step-00000001/state.json", &state).ok()) {
    return 0;
  }
  const std::string dir = peft::trainers::checkpoint_dir("run", state.step);
  if (state.step >= 0 && peft::trainers::checkpoint_step(dir) != state.step) __builtin_trap();
  return 0;
}
