// libFuzzer harness: GPT-2's vocab.json + merges.txt as BpeTokenizer::create
// reads them (two files; the input is the vocabulary, a NUL byte, then the
// merges), then encode and decode with the result: a fixed text, the merges
// part as text, and raw ids (out of range and negative included). Any input
// must give a tokenizer or a Status, never a crash or a sanitizer report.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/bpe_tokenizer.h"
#include "fuzz/fuzz_files.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view vocab = input.substr(0, nul);
  const std::string_view merges = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
  const std::string vocab_path = peft::fuzz::write_scratch("vocab.json", vocab);
  const std::string merges_path = peft::fuzz::write_scratch("merges.txt", merges);
  absl::StatusOr<std::unique_ptr<peft::data::BpeTokenizer>> t =
      peft::data::BpeTokenizer::create(vocab_path, merges_path);
  if (!t.ok()) return 0;
  const peft::data::BpeTokenizer& tok = **t;
  for (std::string_view text : {std::string_view("Hello <|endoftext|> wörld 123\n\n  tabs\t's \xff\xfe"), merges}) {
    std::vector<int32_t> ids = tok.encode(text);
    for (int32_t id : ids) {
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();  // encode must give ids of the vocabulary
    }
    // A byte-level vocabulary decodes any text back to itself.
    if (tok.decode(ids) != text) __builtin_trap();
    ids.insert(ids.end(), {-1, tok.vocab_size(), tok.bos_id(), tok.eos_id(), tok.pad_id()});
    (void)tok.decode(ids);
    for (int32_t id : ids) {
      (void)tok.id_to_piece(id);
      (void)tok.is_special(id);
    }
  }
  (void)tok.merges();
  return 0;
}
