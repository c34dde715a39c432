#include "models/gguf/gguf_writer.h"

#include <sys/statvfs.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"

namespace peft::models::gguf {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "GGUF is written little-endian with plain stores");

// Bytes of output converted per write() call: large enough that syscalls do
// not matter, small enough that the buffer is noise next to the model.
constexpr size_t kChunkBytes = 4 << 20;

template <typename T>
void append_pod(std::string* out, T value) {
  out->append(reinterpret_cast<const char*>(&value), sizeof(T));
}

void append_string(std::string* out, const std::string& s) {
  append_pod<uint64_t>(out, s.size());
  out->append(s);
}

uint64_t padded(uint64_t n, uint64_t alignment) { return (n + alignment - 1) / alignment * alignment; }

int64_t element_count(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

}  // namespace

const char* tensor_type_name(TensorType type) {
  switch (type) {
    case TensorType::kF32: return "f32";
    case TensorType::kF16: return "f16";
    case TensorType::kQ8_0: return "q8_0";
    case TensorType::kBF16: return "bf16";
  }
  return "?";
}

absl::StatusOr<TensorType> tensor_type_from_name(const std::string& name) {
  for (TensorType t : {TensorType::kF32, TensorType::kF16, TensorType::kBF16, TensorType::kQ8_0}) {
    if (name == tensor_type_name(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown GGUF dtype '", name, "' (f32, f16, bf16, q8_0)"));
}

uint32_t file_type_of(TensorType type) {
  switch (type) {
    case TensorType::kF32: return 0;
    case TensorType::kF16: return 1;
    case TensorType::kQ8_0: return 7;
    case TensorType::kBF16: return 32;
  }
  return 0;
}

// ---- Metadata ----------------------------------------------------------------

void Metadata::begin(const std::string& key, ValueType type) {
  keys_.push_back(key);
  append_string(&bytes_, key);
  append_pod<uint32_t>(&bytes_, static_cast<uint32_t>(type));
}

bool Metadata::contains(const std::string& key) const {
  return std::find(keys_.begin(), keys_.end(), key) != keys_.end();
}

void Metadata::add_uint32(const std::string& key, uint32_t value) {
  begin(key, ValueType::kUint32);
  append_pod(&bytes_, value);
}

void Metadata::add_int32(const std::string& key, int32_t value) {
  begin(key, ValueType::kInt32);
  append_pod(&bytes_, value);
}

void Metadata::add_uint64(const std::string& key, uint64_t value) {
  begin(key, ValueType::kUint64);
  append_pod(&bytes_, value);
}

void Metadata::add_float32(const std::string& key, float value) {
  begin(key, ValueType::kFloat32);
  append_pod(&bytes_, value);
}

void Metadata::add_bool(const std::string& key, bool value) {
  begin(key, ValueType::kBool);
  append_pod<uint8_t>(&bytes_, value ? 1 : 0);
}

void Metadata::add_string(const std::string& key, const std::string& value) {
  begin(key, ValueType::kString);
  append_string(&bytes_, value);
}

void Metadata::add_string_array(const std::string& key, const std::vector<std::string>& values) {
  begin(key, ValueType::kArray);
  append_pod<uint32_t>(&bytes_, static_cast<uint32_t>(ValueType::kString));
  append_pod<uint64_t>(&bytes_, values.size());
  for (const std::string& v : values) append_string(&bytes_, v);
}

void Metadata::add_float32_array(const std::string& key, const std::vector<float>& values) {
  begin(key, ValueType::kArray);
  append_pod<uint32_t>(&bytes_, static_cast<uint32_t>(ValueType::kFloat32));
  append_pod<uint64_t>(&bytes_, values.size());
  bytes_.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

void Metadata::add_int32_array(const std::string& key, const std::vector<int32_t>& values) {
  begin(key, ValueType::kArray);
  append_pod<uint32_t>(&bytes_, static_cast<uint32_t>(ValueType::kInt32));
  append_pod<uint64_t>(&bytes_, values.size());
  bytes_.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(int32_t));
}

// ---- Conversions -----------------------------------------------------------------

uint64_t tensor_bytes(const std::vector<int64_t>& shape, TensorType type) {
  const uint64_t n = static_cast<uint64_t>(element_count(shape));
  switch (type) {
    case TensorType::kF32: return 4 * n;
    case TensorType::kF16:
    case TensorType::kBF16: return 2 * n;
    case TensorType::kQ8_0: return n / kQ8BlockValues * kQ8BlockBytes;
  }
  return 0;
}

uint16_t float_to_half(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) {  // inf, or NaN (kept quiet, top payload bits kept)
    return sign | (a > 0x7F800000u ? static_cast<uint16_t>(0x7E00u | ((a >> 13) & 0x3FFu)) : 0x7C00u);
  }
  // 65520 is halfway between the largest half (65504, odd mantissa) and 2^16:
  // it and everything above rounds to infinity.
  if (a >= 0x477FF000u) return sign | 0x7C00u;
  if (a < 0x38800000u) {
    // Below the smallest normal half (2^-14): a multiple of 2^-24. Scaling by
    // 2^24 is exact in double; nearbyint rounds to nearest even. 1024 comes
    // out as the smallest normal's bit pattern, which is right.
    float f;
    std::memcpy(&f, &a, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(static_cast<double>(f) * 16777216.0));
  }
  // Normal: round the 23-bit mantissa to 10 bits (nearest even; a carry
  // into the exponent is correct), then rebias the exponent from 127 to 15.
  const uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
  return sign | static_cast<uint16_t>((rounded - 0x38000000u) >> 13);
}

uint16_t float_to_bfloat16(float value) {
  uint32_t x;
  std::memcpy(&x, &value, 4);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

void quantize_q8_0(const float* values, int64_t count, uint8_t* out) {
  for (int64_t b = 0; b < count / kQ8BlockValues; ++b) {
    const float* x = values + b * kQ8BlockValues;
    float amax = 0.0f;
    for (int64_t j = 0; j < kQ8BlockValues; ++j) amax = std::max(amax, std::fabs(x[j]));
    // The same float operations as ggml's reference, so blocks match it bit
    // for bit: the quotient uses the fp32 scale, the file stores its fp16.
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = float_to_half(d);
    std::memcpy(out, &dh, 2);
    for (int64_t j = 0; j < kQ8BlockValues; ++j) {
      out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::roundf(x[j] * id)));
    }
    out += kQ8BlockBytes;
  }
}

// ---- GgufWriter ----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<GgufWriter>> GgufWriter::create(const std::string& path, const Metadata& metadata,
                                                               std::vector<TensorInfo> tensors,
                                                               const WriterOptions& options) {
  namespace fs = std::filesystem;
  if (options.alignment == 0 || (options.alignment & (options.alignment - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF alignment must be a power of two, got ", options.alignment));
  }
  // Header contents first: nothing touches the disk until they are valid.
  std::set<std::string> keys;
  for (const std::string& k : metadata.keys()) {
    if (!keys.insert(k).second) return absl::InternalError(absl::StrCat("GGUF metadata key '", k, "' added twice"));
  }
  Metadata extra;
  if (options.alignment != kDefaultAlignment) {
    if (keys.count("general.alignment")) {
      return absl::InternalError("general.alignment is set by WriterOptions, not by the metadata");
    }
    extra.add_uint32("general.alignment", static_cast<uint32_t>(options.alignment));
  }
  std::set<std::string> names;
  std::string infos;
  uint64_t offset = 0;
  for (const TensorInfo& t : tensors) {
    if (t.name.empty() || t.name.size() > kMaxTensorName) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF tensor name '", t.name, "' must have 1 to ", kMaxTensorName, " bytes"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", t.name, "' declared twice"));
    }
    if (t.shape.empty() || t.shape.size() > 4 ||
        std::any_of(t.shape.begin(), t.shape.end(), [](int64_t d) { return d <= 0; })) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF tensor '", t.name, "' has shape ", shape_str(t.shape), " (1 to 4 positive dims)"));
    }
    if (t.type == TensorType::kQ8_0 && t.shape.back() % kQ8BlockValues != 0) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", t.name, "' ", shape_str(t.shape),
                                                     ": q8_0 needs rows of a multiple of 32 values"));
    }
    append_string(&infos, t.name);
    append_pod<uint32_t>(&infos, static_cast<uint32_t>(t.shape.size()));
    for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) append_pod<uint64_t>(&infos, *it);  // ne[0] first
    append_pod<uint32_t>(&infos, static_cast<uint32_t>(t.type));
    append_pod<uint64_t>(&infos, offset);
    offset += padded(tensor_bytes(t.shape, t.type), options.alignment);
  }
  std::string header;
  append_pod<uint32_t>(&header, kMagic);
  append_pod<uint32_t>(&header, kVersion);
  append_pod<uint64_t>(&header, tensors.size());
  append_pod<uint64_t>(&header, metadata.keys().size() + extra.keys().size());
  header += extra.bytes();
  header += metadata.bytes();
  header += infos;
  const uint64_t data_offset = padded(header.size(), options.alignment);
  header.resize(data_offset, '\0');
  const uint64_t file_bytes = data_offset + offset;

  // The destination.
  std::error_code ec;
  const fs::path target(path);
  if (target.filename().empty()) return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a file path"));
  if (fs::is_directory(target, ec)) return absl::AlreadyExistsError(absl::StrCat(path, " is a directory"));
  if (fs::exists(target, ec) && !options.overwrite) {
    return absl::AlreadyExistsError(absl::StrCat(path, " already exists (use --overwrite to replace it)"));
  }
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (!fs::is_directory(dir, ec)) {
    return absl::NotFoundError(absl::StrCat("the output directory ", dir.string(), " does not exist"));
  }
  // A disk that cannot hold the file is refused before anything is written;
  // a write that fails later (the disk filled up meanwhile) is still caught.
  struct statvfs vfs;
  if (statvfs(dir.c_str(), &vfs) == 0) {
    const uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
    if (free_bytes < file_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat("not enough disk space for ", path, ": the file needs ",
                                                       (file_bytes + (1 << 20) - 1) >> 20, " MiB, ", free_bytes >> 20,
                                                       " MiB are free on ", dir.string()));
    }
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::AtomicFileWriter> out, io::AtomicFileWriter::create(path));
  std::unique_ptr<GgufWriter> w(
      new GgufWriter(std::move(out), std::move(tensors), options.alignment, data_offset, file_bytes));
  PEFT_RETURN_IF_ERROR(w->write(header.data(), header.size()));
  return w;
}

GgufWriter::GgufWriter(std::unique_ptr<io::AtomicFileWriter> out, std::vector<TensorInfo> tensors, uint64_t alignment,
                       uint64_t data_offset, uint64_t file_bytes)
    : out_(std::move(out)),
      tensors_(std::move(tensors)),
      alignment_(alignment),
      data_offset_(data_offset),
      file_bytes_(file_bytes) {}

GgufWriter::~GgufWriter() = default;  // an uncommitted AtomicFileWriter removes its temp file

absl::Status GgufWriter::write(const void* data, size_t size) {
  if (failed_) return absl::FailedPreconditionError(absl::StrCat("GGUF writer for ", out_->path(), " has failed"));
  absl::Status st = out_->write(data, size);
  if (!st.ok()) {
    failed_ = true;
    return st;
  }
  written_ += size;
  return absl::OkStatus();
}

absl::Status GgufWriter::pad() {
  static const char zeros[256] = {};
  uint64_t n = padded(written_, alignment_) - written_;
  while (n > 0) {
    const uint64_t k = std::min<uint64_t>(n, sizeof(zeros));
    PEFT_RETURN_IF_ERROR(write(zeros, k));
    n -= k;
  }
  return absl::OkStatus();
}

std::string GgufWriter::next_tensor() const { return next_ < tensors_.size() ? tensors_[next_].name : std::string(); }

absl::Status GgufWriter::write_tensor(const float* values, size_t count) {
  if (next_ >= tensors_.size()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GGUF writer for ", out_->path(), ": all ", tensors_.size(), " tensors are already written"));
  }
  const TensorInfo& t = tensors_[next_];
  if (static_cast<int64_t>(count) != element_count(t.shape)) {
    failed_ = true;
    return absl::InvalidArgumentError(absl::StrCat("GGUF tensor '", t.name, "' ", shape_str(t.shape), " got ", count,
                                                   " values instead of ", element_count(t.shape)));
  }
  if (t.type == TensorType::kF32) {
    PEFT_RETURN_IF_ERROR(write(values, count * sizeof(float)));
  } else if (t.type == TensorType::kQ8_0) {
    const size_t blocks_per_chunk = kChunkBytes / kQ8BlockBytes;
    buffer_.resize(blocks_per_chunk * kQ8BlockBytes);
    const size_t blocks = count / kQ8BlockValues;
    for (size_t b = 0; b < blocks; b += blocks_per_chunk) {
      const size_t n = std::min(blocks_per_chunk, blocks - b);
      quantize_q8_0(values + b * kQ8BlockValues, static_cast<int64_t>(n * kQ8BlockValues), buffer_.data());
      PEFT_RETURN_IF_ERROR(write(buffer_.data(), n * kQ8BlockBytes));
    }
  } else {
    const bool half = t.type == TensorType::kF16;
    const size_t per_chunk = kChunkBytes / 2;
    buffer_.resize(per_chunk * 2);
    uint16_t* dst = reinterpret_cast<uint16_t*>(buffer_.data());
    for (size_t i = 0; i < count; i += per_chunk) {
      const size_t n = std::min(per_chunk, count - i);
      for (size_t j = 0; j < n; ++j) dst[j] = half ? float_to_half(values[i + j]) : float_to_bfloat16(values[i + j]);
      PEFT_RETURN_IF_ERROR(write(dst, n * 2));
    }
  }
  PEFT_RETURN_IF_ERROR(pad());
  ++next_;
  return absl::OkStatus();
}

absl::Status GgufWriter::commit() {
  if (failed_) return absl::FailedPreconditionError(absl::StrCat("GGUF writer for ", out_->path(), " has failed"));
  if (next_ != tensors_.size()) {
    return absl::FailedPreconditionError(absl::StrCat("GGUF file ", out_->path(), ": only ", next_, " of ",
                                                      tensors_.size(), " tensors were written (next: '",
                                                      tensors_[next_].name, "')"));
  }
  if (written_ != file_bytes_) {
    return absl::InternalError(
        absl::StrCat("GGUF file ", out_->path(), ": wrote ", written_, " bytes, the layout says ", file_bytes_));
  }
  return out_->commit();
}

}  // namespace peft::models::gguf
