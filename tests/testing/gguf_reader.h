//
// A small GGUF reader for tests, written from ggml's docs/gguf.md and
// independent of models/gguf: it parses the header, every metadata value
// type, the tensor infos, and checks the layout rules (version 3, offsets
// aligned to general.alignment or 32, tensors inside the file and not
// overlapping, data sizes by type). It decodes f32, f16, bf16 and q8_0 with
// its own bit-level conversions.
//
//   GgufFile f = read_gguf(path);   // f.error non-empty on a malformed file
//   EXPECT_EQ(f.get("llama.block_count")->u, 2u);
//   std::vector<float> w = f.values("blk.0.attn_q.weight");
#ifndef PEFT_TESTS_TESTING_GGUF_READER_H_
#define PEFT_TESTS_TESTING_GGUF_READER_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace peft::testing {

/// One metadata value. `type` is the gguf_type number (4 uint32, 5 int32,
/// 6 float32, 7 bool, 8 string, 9 array, ...); integers land in u / i,
/// floats in f, arrays in `array` with `elem_type`.
struct GgufValue {
  uint32_t type = 0;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  uint32_t elem_type = 0;
  std::vector<GgufValue> array;
};

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> ne;  // ggml order: ne[0] is the contiguous dimension
  uint32_t type = 0;         // ggml_type: 0 f32, 1 f16, 8 q8_0, 30 bf16
  uint64_t offset = 0;       // relative to data_offset
  uint64_t nbytes = 0;
};

struct GgufFile {
  std::string error;  // empty when the file parsed and passed every check
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;
  std::vector<std::pair<std::string, GgufValue>> kv;
  std::vector<GgufTensor> tensors;
  std::string bytes;  // the whole file

  /// nullptr when absent.
  const GgufValue* get(const std::string& key) const;
  const GgufTensor* tensor(const std::string& name) const;
  /// The raw data bytes of a tensor.
  std::string data(const std::string& name) const;
  /// A tensor's values decoded to float, in storage order (ne[0] fastest).
  std::vector<float> values(const std::string& name) const;
  /// The strings of a string-array value (empty when absent).
  std::vector<std::string> strings(const std::string& key) const;
};

GgufFile read_gguf(const std::string& path);
GgufFile parse_gguf(std::string bytes);

/// IEEE half / bfloat16 bits -> float (the reader's own decoders).
float half_bits_to_float(uint16_t h);
float bf16_bits_to_float(uint16_t h);

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_GGUF_READER_H_
