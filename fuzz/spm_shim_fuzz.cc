// libFuzzer harness: the sentencepiece shim as SentencePieceTokenizer drives
// it: the C ABI of libpeft_spm_shim.so (spm_shim.cc, instrumented; Debian's
// libsentencepiece under it is not) through the loader (spm_loader.cc) and
// the tokenizer (sentencepiece_tokenizer.cc). The models are the real ones
// (Llama 2's tokenizer.model and stories260K's tok512.model from
// $PEFT_SHARED_DIR/assets); the input is what reaches them from outside:
// the first byte picks the model, the rest is text to encode (any bytes),
// and read as little-endian int32 it is ids to decode and query (negative
// and out of range included). Any input must give ids and text, never a
// crash, a leak of a shim buffer or a sanitizer report.
//
// The model bytes themselves are sentencepiece's (and its protobuf's) to
// parse, not ours: not fuzzed here.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/sentencepiece_tokenizer.h"

namespace {

std::unique_ptr<peft::data::SentencePieceTokenizer> load(const char* rel) {
  const char* shared = std::getenv("PEFT_SHARED_DIR");
  const std::string path = std::string(shared != nullptr ? shared : "../shared") + "/assets/" + rel;
  absl::StatusOr<std::unique_ptr<peft::data::SentencePieceTokenizer>> t =
      peft::data::SentencePieceTokenizer::create(path);
  if (!t.ok()) {
    std::fprintf(stderr, "spm_shim harness: %s\n", std::string(t.status().message()).c_str());
    std::abort();
  }
  return *std::move(t);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::unique_ptr<peft::data::SentencePieceTokenizer> models[] = {
      load("llama2_tokenizer/tokenizer.model"), load("llama2c_stories260K/tok512.model")};
  if (size < 1) return 0;
  const peft::data::SentencePieceTokenizer& tok = *models[data[0] & 1];
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();  // encode gives ids of the vocabulary
  }
  (void)tok.decode(ids);
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 4 <= text.size(); i += 4) {
    int32_t id;
    std::memcpy(&id, text.data() + i, 4);
    if (data[0] & 2) id = static_cast<int32_t>(static_cast<uint32_t>(id) % (tok.vocab_size() + 8)) - 4;
    raw.push_back(id);
  }
  (void)tok.decode(raw);
  for (int32_t id : raw) {
    (void)tok.id_to_piece(id);
    (void)tok.score(id);
    (void)tok.piece_type(id);
  }
  return 0;
}
