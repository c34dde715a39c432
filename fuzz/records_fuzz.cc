// libFuzzer harness: a data file as the training loader's record parser
// reads it (data::read_documents), in every format, with a byte-level
// tokenizer that has special tokens and a chat template. Any input must give
// documents or a Status naming file and line, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "data/records.h"

namespace {

// Bytes are ids 3..258; 0/1/2 are pad/BOS/EOS; the Llama 3 chat markers
// are added tokens 259..262.
class ByteTokenizer : public peft::data::Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(3 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= 3 && id < 259) s.push_back(static_cast<char>(id - 3));
    }
    return s;
  }
  int32_t vocab_size() const override { return 263; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  int32_t pad_id() const override { return 0; }
  bool add_bos_by_default() const override { return true; }
  std::string id_to_piece(int32_t id) const override { return id >= 3 && id < 259 ? std::string(1, id - 3) : ""; }
  int32_t added_token_id(std::string_view text) const override {
    static const char* const kAdded[] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    for (int i = 0; i < 4; ++i) {
      if (text == kAdded[i]) return 259 + i;
    }
    return -1;
  }
  std::string kind() const override { return "fuzz_bytes"; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  // The first byte picks the options; the rest is the file.
  const uint8_t pick = data[0];
  const std::string_view content(reinterpret_cast<const char*>(data + 1), size - 1);
  static const ByteTokenizer tok;
  peft::data::DataOptions o;
  using Format = peft::data::DataOptions::Format;
  const Format formats[] = {Format::kAuto, Format::kJsonlText, Format::kPlainText, Format::kInstruction, Format::kChat};
  o.format = formats[pick % 5];
  o.seq_len = 1 + (pick >> 3) % 64;
  o.pack = (pick & 0x40) != 0;
  o.on_bad =
      (pick & 0x80) != 0 ? peft::data::DataOptions::OnBadRecord::kSkip : peft::data::DataOptions::OnBadRecord::kStop;
  o.chat_template = (pick & 0x20) != 0 ? "llama3" : "plain";
  peft::data::DataStats stats;
  (void)peft::data::read_documents(content, "fuzz.jsonl", tok, o, &stats);
  return 0;
}
