//
// A streaming writer of GGUF version 3 files, the format llama.cpp and ggml
// read (ggml's docs/gguf.md):
//
//   "GGUF" magic, uint32 version 3, uint64 tensor count, uint64 KV count,
//   the metadata key/value pairs, one info record per tensor (name, dims,
//   ggml type, data offset), zero padding to the alignment, then each
//   tensor's data, each padded to the alignment. Little-endian throughout.
//
// Shapes are given here in PyTorch order (outermost first, the last dimension
// contiguous); the file stores ggml's `ne`, the same dimensions reversed, so a
// PyTorch [out, in] weight is ne = {in, out}.
//
// The header is computed from shapes and types alone, so tensors are
// converted and written one at a time, in the order they were declared: at
// most one conversion buffer (a few MiB) is held besides the caller's tensor.
// The file is written under a temporary name next to the destination (see
// peft/io/atomic_file.h) and renamed into place by commit(); on any error,
// or when the writer is destroyed before commit(), no output appears.
//
//   Metadata md;
//   md.add_string("general.architecture", "llama");
//   PEFT_ASSIGN_OR_RETURN(auto w, GgufWriter::create(path, md, {{"token_embd.weight", {V, C}, TensorType::kQ8_0}}));
//   PEFT_RETURN_IF_ERROR(w->write_tensor(embedding.data(), embedding.size()));
//   PEFT_RETURN_IF_ERROR(w->commit());
#ifndef PEFT_MODELS_GGUF_GGUF_WRITER_H_
#define PEFT_MODELS_GGUF_GGUF_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace peft::io {
class AtomicFileWriter;
}  // namespace peft::io

namespace peft::models::gguf {

inline constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
inline constexpr uint32_t kVersion = 3;
inline constexpr uint64_t kDefaultAlignment = 32;
/// Values per Q8_0 block, and its bytes: an fp16 scale then 32 int8.
inline constexpr int64_t kQ8BlockValues = 32;
inline constexpr int64_t kQ8BlockBytes = 34;
/// The longest tensor name ggml accepts (GGML_MAX_NAME - 1).
inline constexpr size_t kMaxTensorName = 63;

/// ggml_type values of the tensor types written here.
enum class TensorType : uint32_t { kF32 = 0, kF16 = 1, kQ8_0 = 8, kBF16 = 30 };

/// "f32", "f16", "q8_0", "bf16".
const char* tensor_type_name(TensorType type);
/// The inverse of tensor_type_name; errors list the accepted names.
absl::StatusOr<TensorType> tensor_type_from_name(const std::string& name);
/// llama_ftype of a file whose weight matrices are `type` (general.file_type):
/// 0 all f32, 1 mostly f16, 7 mostly q8_0, 32 mostly bf16.
uint32_t file_type_of(TensorType type);

/// gguf_type values of metadata values.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

/// Metadata key/value pairs, serialized in insertion order. Adding a key that
/// is already present replaces nothing: it is a programming error caught by
/// GgufWriter::create (duplicate keys are rejected there).
class Metadata {
 public:
  void add_uint32(const std::string& key, uint32_t value);
  void add_int32(const std::string& key, int32_t value);
  void add_uint64(const std::string& key, uint64_t value);
  void add_float32(const std::string& key, float value);
  void add_bool(const std::string& key, bool value);
  void add_string(const std::string& key, const std::string& value);
  void add_string_array(const std::string& key, const std::vector<std::string>& values);
  void add_float32_array(const std::string& key, const std::vector<float>& values);
  void add_int32_array(const std::string& key, const std::vector<int32_t>& values);

  /// Keys in insertion order.
  const std::vector<std::string>& keys() const { return keys_; }
  bool contains(const std::string& key) const;
  /// The serialized pairs (key string, value type, value), back to back.
  const std::string& bytes() const { return bytes_; }

 private:
  void begin(const std::string& key, ValueType type);

  std::vector<std::string> keys_;
  std::string bytes_;
};

/// One tensor of the file.
struct TensorInfo {
  std::string name;            // e.g. "blk.0.attn_q.weight"
  std::vector<int64_t> shape;  // PyTorch order: outermost first, 1 to 4 dims
  TensorType type = TensorType::kF32;
};

/// Data bytes of a tensor (no padding). Q8_0 needs the last (contiguous)
/// dimension to be a multiple of 32.
uint64_t tensor_bytes(const std::vector<int64_t>& shape, TensorType type);

/// IEEE fp32 -> fp16 bits, round to nearest even (what ggml's F16C and
/// NumPy's astype(float16) do), with overflow to infinity and subnormals.
uint16_t float_to_half(float value);
/// fp32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN (ggml's
/// ggml_compute_fp32_to_bf16).
uint16_t float_to_bfloat16(float value);
/// ggml's quantize_row_q8_0_ref: for each block of 32 values, d = max|x| / 127
/// (stored fp16), q = roundf(x / d) (half away from zero). `count` must be a
/// multiple of 32; writes count / 32 * 34 bytes.
void quantize_q8_0(const float* values, int64_t count, uint8_t* out);

struct WriterOptions {
  /// Replace an existing file at the destination.
  bool overwrite = false;
  /// Tensor data alignment; written as general.alignment when not 32.
  uint64_t alignment = kDefaultAlignment;
};

/// One GGUF file being written. Not thread-safe; not copyable.
class GgufWriter final {
 public:
  /// Checks everything that can be checked up front - the destination (its
  /// directory exists, it is not a directory, it does not exist unless
  /// `overwrite`), the free space for the whole file, tensor names (unique,
  /// at most 63 bytes), shapes (1-4 positive dims, Q8_0 rows of whole
  /// blocks), duplicate metadata keys - then creates the temp file and
  /// writes the header, metadata and tensor infos.
  static absl::StatusOr<std::unique_ptr<GgufWriter>> create(const std::string& path, const Metadata& metadata,
                                                            std::vector<TensorInfo> tensors,
                                                            const WriterOptions& options = {});

  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  /// Writes the data of the next declared tensor from `count` fp32 values in
  /// row-major (PyTorch contiguous) order, converted to its type, then the
  /// padding. Errors: a count that does not match the shape, more tensors
  /// than declared, a write failure (disk full): the writer is then unusable
  /// and the temp file is removed.
  absl::Status write_tensor(const float* values, size_t count);

  /// Name of the tensor write_tensor() expects next ("" when all are written).
  std::string next_tensor() const;

  /// Checks that every tensor was written, then fsyncs and renames the file
  /// into place.
  absl::Status commit();

  /// The size the finished file has.
  uint64_t file_bytes() const { return file_bytes_; }
  /// Offset of the tensor data section (after the header and its padding).
  uint64_t data_offset() const { return data_offset_; }

 private:
  GgufWriter(std::unique_ptr<io::AtomicFileWriter> out, std::vector<TensorInfo> tensors, uint64_t alignment,
             uint64_t data_offset, uint64_t file_bytes);
  absl::Status write(const void* data, size_t size);
  absl::Status pad();

  std::unique_ptr<io::AtomicFileWriter> out_;
  std::vector<TensorInfo> tensors_;
  uint64_t alignment_;
  uint64_t data_offset_;
  uint64_t file_bytes_;
  size_t next_ = 0;
  uint64_t written_ = 0;
  bool failed_ = false;
  std::vector<uint8_t> buffer_;
};

}  // namespace peft::models::gguf

#endif  // PEFT_MODELS_GGUF_GGUF_WRITER_H_
