// libFuzzer harness: a tokenizer.json as the tokenizer.json pipeline reads
// it, then one encode and decode of a fixed text with the result. Any input
// must give a tokenizer or a Status, never a crash or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/hf/tokenizer_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json root = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return 0;
  absl::StatusOr<std::unique_ptr<peft::data::hf::TokenizerJson>> t =
      peft::data::hf::TokenizerJson::from_json(root, "fuzz");
  if (!t.ok()) return 0;
  for (bool split : {false, true}) {
    std::vector<int32_t> ids;
    (*t)->encode("Hello <|eot_id|> wörld 123\n  tabs\t", split, &ids);
    (void)(*t)->decode(ids, [](int32_t) { return false; });
  }
  return 0;
}
