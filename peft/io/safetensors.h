//
// Reading and writing Hugging Face safetensors files and (sharded) checkpoint
// directories, byte-compatible with the reference `safetensors` library
// (../shared/docs/interop.md section 1).
//
// File layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
// ({"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets"}}),
// then the data buffer. Offsets are relative to the data buffer and must tile
// it exactly (no gaps, no overlaps, no trailing bytes).
//
// Reading maps the file (mmap, read-only) and validates the whole header on
// open(), so later calls only fail for unsupported dtypes or unknown names:
//
//   PEFT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> ckpt,
//                         CheckpointReader::open(model_dir));
//   for (const std::string& name : ckpt->names()) {
//     PEFT_ASSIGN_OR_RETURN(at::Tensor src, ckpt->view(name));  // no copy
//     params[name].copy_(src);     // converts dtype if needed
//     ckpt->release(name);         // drop the file pages from RSS again
//   }
//
// Writing lays tensors out the way the reference writer does (dtype alignment
// descending, then name; header padded with spaces to a multiple of 8;
// `__metadata__` first), so files are byte-identical to
// `safetensors.torch.save_file` for the same tensors and metadata:
//
//   PEFT_RETURN_IF_ERROR(save_checkpoint(out_dir, {{"lm_head.weight", w}}));
//
// Every file is written atomically (temp name + fsync + rename).
//
// dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8 and BOOL map to torch
// types. The other spec dtypes (F8_*, U16, U32, U64, C64, F4, F6_*) parse and
// validate, but view()/load() of such a tensor return kUnimplemented.
//
// Thread safety: a SafetensorsFile / CheckpointReader is immutable after
// open(); all const methods may be called concurrently.
//
// Mapped files: our writers replace files by rename(), so a reader holding the
// old file keeps a valid mapping. A file truncated *in place* by another
// program while mapped makes reads of the lost pages fault (SIGBUS), as with
// any mmap-based reader.
#ifndef PEFT_IO_SAFETENSORS_H_
#define PEFT_IO_SAFETENSORS_H_

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "peft/io/atomic_file.h"

namespace peft::io {

/// Largest header accepted on read (the reference reader's MAX_HEADER_SIZE).
inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;

/// The header entry of one tensor.
struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors string, e.g. "F32"
  /// Torch type; c10::ScalarType::Undefined for spec dtypes this library
  /// does not load (F8_*, U16, U32, U64, C64, F4, F6_*).
  c10::ScalarType scalar_type = c10::ScalarType::Undefined;
  std::vector<int64_t> shape;   // [] = scalar
  uint64_t begin = 0, end = 0;  // offsets relative to the data buffer

  /// Data bytes (end - begin).
  uint64_t nbytes() const { return end - begin; }
};

/// Read-only, mmap-backed view of one .safetensors file; validates everything
/// on open. Immutable after open().
class SafetensorsFile final {
 public:
  /// Maps and validates `path`: header length, UTF-8, JSON shape, duplicate
  /// names, dtypes, sizes, exact tiling of the data buffer, exact file length
  /// (interop.md 1.3). Errors name the file and the offending tensor or byte
  /// offset: kNotFound / kPermissionDenied etc. for I/O, kInvalidArgument for
  /// a malformed file.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  /// All tensors, sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  /// The entry named `name`, or nullptr if absent.
  const TensorInfo* find(std::string_view name) const;
  /// The `__metadata__` map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// CPU tensor over the mapped bytes: no copy, and the memory is read-only
  /// (writing through it crashes): callers copy_ from it, never write. When
  /// the offset is misaligned for the dtype (old unpadded files) an owned copy
  /// is returned instead. The tensor keeps the mapping alive, so it stays
  /// valid even after this object is destroyed.
  /// kNotFound for an unknown name; kUnimplemented (naming the tensor and the
  /// dtype) for dtypes LibTorch 1.13 lacks.
  absl::StatusOr<at::Tensor> view(std::string_view name) const;

  /// Owned, contiguous CPU copy, converted to `dtype` when given.
  absl::StatusOr<at::Tensor> load(std::string_view name, std::optional<c10::ScalarType> dtype = std::nullopt) const;

  /// Drops the pages of `name` from this process's memory (madvise
  /// MADV_DONTNEED) after the caller copied it, so loading a model never holds
  /// the file and the weights in RAM at once. Views of `name` remain valid:
  /// touching them faults the pages back in from the file. Pages shared with
  /// a neighbouring tensor are dropped too (they are re-read on demand).
  /// Unknown names are ignored.
  void release(std::string_view name) const;

  /// Drops every mapped page (see release()).
  void release_all() const;

  /// Copies tensor `name` into `dst` (contiguous CPU, same shape; converted
  /// to dst's dtype) in chunks of about 16 MB, dropping each chunk's mapped
  /// pages right after copying it. Peak memory is therefore `dst` plus one
  /// chunk, even for a tensor of several GB.
  absl::Status read_into(std::string_view name, const at::Tensor& dst) const;

  /// The path given to open().
  const std::string& path() const { return path_; }
  /// Total file size in bytes.
  uint64_t file_size() const;
  /// Sum of all tensors' data bytes (the data buffer length).
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  struct Mapping;
  SafetensorsFile() = default;

  std::string path_;
  std::shared_ptr<const Mapping> mapping_;
  uint64_t data_start_ = 0;  // 8 + N
  uint64_t data_bytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

/// A checkpoint directory: model.safetensors.index.json (sharded) if present,
/// else model.safetensors. Also accepts a path to a single .safetensors file.
/// Rejects a tensor name present in two shards and an index naming a missing
/// shard or a tensor the shard lacks. Tensors a shard holds beyond its
/// weight_map entries are kept (as transformers does). Immutable after open().
class CheckpointReader final {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> open(const std::string& dir_or_file);

  /// All tensor names, sorted.
  std::vector<std::string> names() const;
  /// The entry named `name`, or nullptr if absent.
  const TensorInfo* find(std::string_view name) const;
  /// See SafetensorsFile::view().
  absl::StatusOr<at::Tensor> view(std::string_view name) const;
  /// See SafetensorsFile::load().
  absl::StatusOr<at::Tensor> load(std::string_view name, std::optional<c10::ScalarType> dtype = std::nullopt) const;
  /// See SafetensorsFile::release().
  void release(std::string_view name) const;
  /// See SafetensorsFile::read_into().
  absl::Status read_into(std::string_view name, const at::Tensor& dst) const;
  /// Sum of tensor data bytes over all shards.
  uint64_t total_bytes() const;

  /// The opened files (one, or one per shard in file-name order).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  /// The file holding `name`, or nullptr.
  const SafetensorsFile* file_of(std::string_view name) const;

 private:
  CheckpointReader() = default;

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*, std::less<>> index_;
};

/// A tensor to save under `name`.
struct NamedTensor {
  std::string name;
  at::Tensor tensor;
};

/// Writes one file atomically (temp name in the same dir + fsync + rename).
/// Header: `__metadata__` first (omitted when `metadata` is empty), tensors
/// laid out by dtype alignment descending then name (the reference writer's
/// order), compact JSON padded with spaces to a multiple of 8. Non-contiguous
/// tensors are made contiguous and non-CPU tensors copied to the CPU, one at a
/// time. Tensors sharing storage are fine (their data is written twice); a
/// duplicate *name*, the name "__metadata__", an undefined tensor, a dtype
/// with no safetensors name or a name/metadata string that is not valid UTF-8
/// is kInvalidArgument and leaves `path` untouched.
absl::Status save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

/// Writes `model.safetensors`, or, when the data exceeds `max_shard_bytes`,
/// shards `model-00001-of-0000N.safetensors` plus
/// `model.safetensors.index.json`
/// ({"metadata":{"total_size":N},"weight_map":{name: shard}}, total_size =
/// sum of data bytes). Shards are filled in the given tensor order, starting a
/// new shard when the next tensor would overflow the current one; a tensor
/// larger than the limit gets a shard of its own (huggingface_hub's
/// algorithm). `dir` is created if missing. Every file is atomic, the index is
/// written after all shards, and stale model*.safetensors / index files of a
/// previous save in `dir` (matching `model(-\d{5}-of-\d{5})?.safetensors
/// (.index.json)?`) are removed only after the new files are complete, index
/// first.
absl::Status save_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors,
                             uint64_t max_shard_bytes = 5ull << 30,
                             const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

/// "F32" -> at::kFloat etc. kUnimplemented for a valid spec dtype without a
/// LibTorch 1.13 equivalent; kInvalidArgument for an unknown string.
absl::StatusOr<c10::ScalarType> scalar_type_from_safetensors(std::string_view dtype);

/// at::kFloat -> "F32" etc. kInvalidArgument for types safetensors (or this
/// library) cannot store (quantized, complex, ...).
absl::StatusOr<std::string> safetensors_dtype_name(c10::ScalarType t);

/// Bits per element of a spec dtype (F4 = 4, F6_* = 6, BOOL = 8, ...), or
/// kInvalidArgument for an unknown string.
absl::StatusOr<int> safetensors_dtype_bits(std::string_view dtype);

// write_file_atomically(path, contents) is declared in peft/io/atomic_file.h,
// included above.

}  // namespace peft::io

#endif  // PEFT_IO_SAFETENSORS_H_
