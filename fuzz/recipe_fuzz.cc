// libFuzzer harness: a training recipe as `peft train` reads it: the text
// format (parse_recipe), then `--set` overrides (apply_override; the input's
// text after each NUL byte is one assignment), then validate_recipe,
// data_options, the text saved into the run directory (recipe_to_text, which
// must parse again) and recipe_differences against the file's recipe. Any
// input must give a recipe or a Status, never a crash or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "trainers/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::vector<std::string> parts = absl::StrSplit(input, absl::ByChar('\0'));
  absl::StatusOr<peft::proto::Recipe> r = peft::trainers::parse_recipe(parts[0], "fuzz.textproto");
  if (!r.ok()) return 0;
  const peft::proto::Recipe from_file = *r;
  for (size_t i = 1; i < parts.size(); ++i) {
    if (!peft::trainers::apply_override(&*r, parts[i]).ok()) return 0;
  }
  (void)peft::trainers::recipe_differences(from_file, *r);
  const std::string saved = peft::trainers::recipe_to_text(*r);
  if (!peft::trainers::parse_recipe(saved, "saved").ok()) __builtin_trap();  // --resume reads it back
  if (!peft::trainers::validate_recipe(*r).ok()) return 0;
  (void)peft::trainers::data_options(*r);
  (void)peft::trainers::resolved_backend(*r);
  return 0;
}
