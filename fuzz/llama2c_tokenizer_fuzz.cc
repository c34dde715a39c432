// libFuzzer harness: a llama2.c tokenizer.bin as Llama2cTokenizer reads it
// (create_from_bytes, the path create() takes after reading the file), then
// encode and decode with the result: a fixed text, the input's own bytes as
// text, and the input's bytes as ids (out of range and negative included).
// Any input must give a tokenizer or a Status, never a crash or a sanitizer
// report.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/llama2c_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::unique_ptr<peft::data::Llama2cTokenizer>> t =
      peft::data::Llama2cTokenizer::create_from_bytes(bytes, "fuzz.bin");
  if (!t.ok()) return 0;
  const peft::data::Llama2cTokenizer& tok = **t;
  for (std::string_view text : {std::string_view("Once upon a time, wörld 123\n\t <0x0A> \xff\xfe"),
                                bytes.substr(bytes.size() > 64 ? bytes.size() - 64 : 0)}) {
    const std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) {
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();  // encode must give ids of the vocabulary
    }
    (void)tok.decode(ids);
  }
  // The last bytes as raw int32 ids: decode and the per-id queries take any.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 4 <= size && raw.size() < 16; i += 4) {
    int32_t id;
    std::memcpy(&id, data + size - 4 - i, 4);
    raw.push_back(id);
  }
  raw.push_back(-1);
  raw.push_back(tok.vocab_size());
  (void)tok.decode(raw);
  for (int32_t id : raw) {
    (void)tok.id_to_piece(id);
    (void)tok.score(id);
  }
  return 0;
}
