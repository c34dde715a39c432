#include "peft/io/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

// The format is little-endian; tensors are written and mapped as raw bytes.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "peft::io safetensors support assumes a little-endian host");

namespace peft::io {
namespace {

using Json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// One row per spec dtype. `rank` is the position in the reference `Dtype`
// enum, which is declared in increasing alignment order; the writer sorts by
// it descending (so e.g. I64 precedes F64, as in the reference).
struct DtypeSpec {
  const char* name;
  int bits;
  int rank;
  c10::ScalarType type;  // Undefined: valid but not loadable here
};

constexpr c10::ScalarType kNone = c10::ScalarType::Undefined;
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", 8, 0, c10::ScalarType::Bool},
    {"F4", 4, 1, kNone},
    {"F6_E2M3", 6, 2, kNone},
    {"F6_E3M2", 6, 3, kNone},
    {"U8", 8, 4, c10::ScalarType::Byte},
    {"I8", 8, 5, c10::ScalarType::Char},
    {"F8_E5M2", 8, 6, kNone},
    {"F8_E4M3", 8, 7, kNone},
    {"F8_E8M0", 8, 8, kNone},
    {"F8_E4M3FNUZ", 8, 9, kNone},
    {"F8_E5M2FNUZ", 8, 10, kNone},
    {"I16", 16, 11, c10::ScalarType::Short},
    {"U16", 16, 12, kNone},
    {"F16", 16, 13, c10::ScalarType::Half},
    {"BF16", 16, 14, c10::ScalarType::BFloat16},
    {"I32", 32, 15, c10::ScalarType::Int},
    {"U32", 32, 16, kNone},
    {"F32", 32, 17, c10::ScalarType::Float},
    {"C64", 64, 18, kNone},
    {"F64", 64, 19, c10::ScalarType::Double},
    {"I64", 64, 20, c10::ScalarType::Long},
    {"U64", 64, 21, kNone},
};

const DtypeSpec* find_dtype(std::string_view name) {
  for (const DtypeSpec& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeSpec* find_dtype(c10::ScalarType t) {
  for (const DtypeSpec& d : kDtypes) {
    if (d.type != kNone && d.type == t) return &d;
  }
  return nullptr;
}

// RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
// Returns the offset of the first bad byte, or `n` when all is valid.
size_t first_invalid_utf8(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
    }
    i += len;
  }
  return n;
}

// Parses JSON text, rejecting duplicate keys in any object (nlohmann keeps
// one silently). `what` prefixes error messages.
absl::StatusOr<Json> parse_json_strict(const char* begin, const char* end, const std::string& what) {
  // nlohmann's lexer takes a NUL byte for the end of input and would ignore
  // everything after it; valid JSON never contains a raw NUL.
  if (const void* nul = std::memchr(begin, '\0', end - begin)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not valid JSON: raw NUL byte at offset ", static_cast<const char*>(nul) - begin));
  }
  std::vector<std::set<std::string>> keys;  // one key set per open object
  std::string duplicate;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) -> bool {
    switch (event) {
      case Json::parse_event_t::object_start: keys.emplace_back(); break;
      case Json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!keys.empty() && duplicate.empty() && !keys.back().insert(parsed.get<std::string>()).second) {
          duplicate = parsed.get<std::string>();
        }
        break;
      default: break;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(begin, end, callback, /*allow_exceptions=*/true,
                    /*ignore_comments=*/false);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is not valid JSON: ", e.what()));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has a duplicate key '", duplicate, "' (duplicate tensor names are not allowed)"));
  }
  return j;
}

// Reads a non-negative JSON integer that fits in `max`.
bool get_uint(const Json& v, uint64_t max, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;
  uint64_t x = v.get<uint64_t>();
  if (x > max) return false;
  *out = x;
  return true;
}

std::string escape_json(const std::string& s) {
  // Same escaping as serde_json: only '"', '\\' and control characters;
  // throws Json::type_error on invalid UTF-8.
  return Json(s).dump();
}

absl::Status invalid(const std::string& path, const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat("invalid safetensors file '", path, "': ", msg));
}

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

// ---------------------------------------------------------------------------
// dtype helpers

absl::StatusOr<c10::ScalarType> scalar_type_from_safetensors(std::string_view dtype) {
  const DtypeSpec* d = find_dtype(dtype);
  if (d == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype '", std::string(dtype), "'"));
  }
  if (d->type == kNone) {
    return absl::UnimplementedError(
        absl::StrCat("safetensors dtype ", std::string(dtype), " has no LibTorch equivalent here"));
  }
  return d->type;
}

absl::StatusOr<std::string> safetensors_dtype_name(c10::ScalarType t) {
  const DtypeSpec* d = find_dtype(t);
  if (d == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("torch dtype ", c10::toString(t), " cannot be stored in safetensors by peft::io"));
  }
  return std::string(d->name);
}

absl::StatusOr<int> safetensors_dtype_bits(std::string_view dtype) {
  const DtypeSpec* d = find_dtype(dtype);
  if (d == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("unknown safetensors dtype '", std::string(dtype), "'"));
  }
  return d->bits;
}

// ---------------------------------------------------------------------------
// SafetensorsFile

struct SafetensorsFile::Mapping {
  const uint8_t* base = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (base != nullptr) munmap(const_cast<uint8_t*>(base), size);
  }
};

SafetensorsFile::~SafetensorsFile() = default;

uint64_t SafetensorsFile::file_size() const { return mapping_->size; }

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::ErrnoToStatus(errno, "cannot open '" + path + "'");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int err = errno;
    close(fd);
    return absl::ErrnoToStatus(err, "cannot stat '" + path + "'");
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return absl::InvalidArgumentError("'" + path + "' is not a regular file");
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    close(fd);
    return invalid(path, absl::StrCat("file is ", file_size,
                                      " bytes, shorter than the 8-byte header "
                                      "length (HeaderTooSmall)"));
  }
  void* addr = mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  close(fd);  // the mapping keeps its own reference to the file
  if (addr == MAP_FAILED) {
    return absl::ErrnoToStatus(map_err, "cannot mmap '" + path + "'");
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->base = static_cast<const uint8_t*>(addr);
  mapping->size = file_size;
  const uint8_t* base = mapping->base;

  uint64_t n = 0;
  std::memcpy(&n, base, 8);  // little-endian host (static_assert above)
  if (n > kMaxHeaderBytes) {
    return invalid(path,
                   absl::StrCat("header length ", n, " exceeds the ", kMaxHeaderBytes, "-byte limit (HeaderTooLarge)"));
  }
  // n <= 1e8, so 8 + n cannot overflow.
  if (8 + n > file_size) {
    return invalid(path, absl::StrCat("header length ", n, " runs past the end of the ", file_size,
                                      "-byte file (InvalidHeaderLength)"));
  }
  const uint8_t* header = base + 8;
  size_t bad = first_invalid_utf8(header, n);
  if (bad != n) {
    return invalid(path, absl::StrCat("header is not valid UTF-8 at byte ", 8 + bad, " of the file (InvalidHeader)"));
  }
  if (n == 0 || header[0] != '{') {
    return invalid(path, "header does not start with '{' (InvalidHeaderStart)");
  }
  const std::string what = "header of '" + path + "'";
  absl::StatusOr<Json> parsed =
      parse_json_strict(reinterpret_cast<const char*>(header), reinterpret_cast<const char*>(header + n), what);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("invalid safetensors file: ", parsed.status().message()));
  }
  const Json& j = *parsed;
  if (!j.is_object()) {
    return invalid(path, "header is not a JSON object");
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->data_start_ = 8 + n;
  file->tensors_.reserve(j.size());
  for (const auto& [name, entry] : j.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) {
        return invalid(path, "__metadata__ is not an object of strings");
      }
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          return invalid(
              path, absl::StrCat("__metadata__ value of '", key, "' is not a string (got ", value.type_name(), ")"));
        }
        file->metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    // A named copy: C++17 lambdas cannot capture a structured binding (clang refuses).
    const std::string& tensor_name = name;
    auto bad_entry = [&](const std::string& msg) {
      return invalid(path, absl::StrCat("tensor '", tensor_name, "': ", msg));
    };
    if (!entry.is_object()) return bad_entry("entry is not a JSON object");
    // Unknown extra keys are ignored, as the reference reader does.
    auto dtype_it = entry.find("dtype");
    auto shape_it = entry.find("shape");
    auto offsets_it = entry.find("data_offsets");
    if (dtype_it == entry.end() || !dtype_it->is_string()) {
      return bad_entry("\"dtype\" missing or not a string");
    }
    if (shape_it == entry.end() || !shape_it->is_array()) {
      return bad_entry("\"shape\" missing or not an array");
    }
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
      return bad_entry("\"data_offsets\" missing or not a [begin, end] pair");
    }
    TensorInfo info;
    info.name = name;
    info.dtype = dtype_it->get<std::string>();
    const DtypeSpec* spec = find_dtype(info.dtype);
    if (spec == nullptr) {
      return bad_entry(absl::StrCat("unknown dtype '", info.dtype, "'"));
    }
    info.scalar_type = spec->type;
    // numel * bits with checked multiplication (ValidationOverflow).
    uint64_t bits = static_cast<uint64_t>(spec->bits);
    bool overflow = false;
    for (const Json& d : *shape_it) {
      uint64_t dim = 0;
      if (!get_uint(d, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), &dim)) {
        return bad_entry(absl::StrCat("shape ", shape_it->dump(),
                                      " has an entry that is not a "
                                      "non-negative 64-bit integer"));
      }
      info.shape.push_back(static_cast<int64_t>(dim));
      if (!overflow && __builtin_mul_overflow(bits, dim, &bits)) overflow = true;
    }
    if (overflow) {
      return bad_entry(
          absl::StrCat("shape ", shape_it->dump(), " x ", spec->bits, " bits overflows (ValidationOverflow)"));
    }
    if (!get_uint((*offsets_it)[0], std::numeric_limits<uint64_t>::max(), &info.begin) ||
        !get_uint((*offsets_it)[1], std::numeric_limits<uint64_t>::max(), &info.end)) {
      return bad_entry(absl::StrCat("data_offsets ", offsets_it->dump(), " are not non-negative integers"));
    }
    if (info.end < info.begin) {
      return bad_entry(absl::StrCat("data_offsets ", offsets_it->dump(), " end before they begin (InvalidOffset)"));
    }
    if (bits % 8 != 0) {
      return bad_entry(absl::StrCat("shape ", shape_it->dump(), " of ", info.dtype, " is ", bits,
                                    " bits, not a whole number of bytes (MisalignedSlice)"));
    }
    if (bits / 8 != info.end - info.begin) {
      return bad_entry(absl::StrCat("size mismatch: ", info.dtype, " ", shape_it->dump(), " needs ", bits / 8,
                                    " bytes but data_offsets ", offsets_it->dump(), " span ", info.end - info.begin,
                                    " (TensorInvalidInfo)"));
    }
    file->tensors_.push_back(std::move(info));
  }

  // The offsets, sorted, must tile [0, data length) exactly from 0: no gap
  // (a hiding place for a polyglot payload) and no overlap.
  std::vector<const TensorInfo*> by_offset;
  by_offset.reserve(file->tensors_.size());
  for (const TensorInfo& t : file->tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->begin, a->end, a->name) < std::tie(b->begin, b->end, b->name);
  });
  uint64_t expected = 0;
  for (const TensorInfo* t : by_offset) {
    if (t->begin != expected) {
      return invalid(path, absl::StrCat("tensor '", t->name, "' data_offsets [", t->begin, ", ", t->end, "] ",
                                        t->begin > expected ? "leave a gap" : "overlap",
                                        ": expected it to begin at data offset ", expected, " (InvalidOffset)"));
    }
    expected = t->end;
  }
  const uint64_t data_len = file_size - file->data_start_;
  if (expected != data_len) {
    return invalid(path, expected < data_len
                             ? absl::StrCat("tensors cover ", expected, " data bytes but the file has ", data_len,
                                            " (trailing bytes after the last tensor; "
                                            "MetadataIncompleteBuffer)")
                             : absl::StrCat("tensors need ", expected, " data bytes but the file has only ", data_len,
                                            " (truncated file; MetadataIncompleteBuffer)"));
  }
  file->data_bytes_ = data_len;
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  file->mapping_ = std::move(mapping);
  return file;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

absl::StatusOr<at::Tensor> SafetensorsFile::view(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("no tensor '", std::string(name), "' in '", path_, "'"));
  }
  if (info->scalar_type == kNone) {
    return absl::UnimplementedError(absl::StrCat("tensor '", info->name, "' in '", path_, "' has dtype ", info->dtype,
                                                 ", which peft::io cannot load"));
  }
  at::Tensor out;
  absl::Status s = status_from_torch_error("safetensors view", [&] {
    at::TensorOptions options = at::TensorOptions().dtype(info->scalar_type).device(at::kCPU);
    const uint8_t* data = mapping_->base + data_start_ + info->begin;
    const size_t itemsize = c10::elementSize(info->scalar_type);
    if (info->nbytes() == 0) {
      out = at::empty(info->shape, options);
    } else if (reinterpret_cast<uintptr_t>(data) % itemsize != 0) {
      // Old unpadded files: a typed view would be misaligned.
      out = at::empty(info->shape, options);
      std::memcpy(out.data_ptr(), data, info->nbytes());
    } else {
      // The deleter holds the mapping, so views outlive this object safely.
      std::shared_ptr<const Mapping> keep = mapping_;
      out = at::from_blob(
          const_cast<uint8_t*>(data), info->shape, [keep](void*) {}, options);
    }
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<at::Tensor> SafetensorsFile::load(std::string_view name, std::optional<c10::ScalarType> dtype) const {
  PEFT_ASSIGN_OR_RETURN(at::Tensor v, view(name));
  at::Tensor out;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("safetensors load", [&] {
    if (dtype.has_value() && *dtype != v.scalar_type()) {
      out = v.to(*dtype);
    } else {
      out = v.clone(at::MemoryFormat::Contiguous);
    }
  }));
  return out;
}

void SafetensorsFile::release(std::string_view name) const {
  const TensorInfo* info = find(name);
  if (info == nullptr || info->nbytes() == 0) return;
  const size_t page = page_size();
  uint64_t from = (data_start_ + info->begin) / page * page;
  uint64_t to = (data_start_ + info->end + page - 1) / page * page;
  to = std::min<uint64_t>(to, (mapping_->size + page - 1) / page * page);
  // Read-only private mapping with no private writes: dropped pages are
  // re-read from the file if touched again.
  madvise(const_cast<uint8_t*>(mapping_->base) + from, to - from, MADV_DONTNEED);
}

absl::Status SafetensorsFile::read_into(std::string_view name, const at::Tensor& dst) const {
  PEFT_ASSIGN_OR_RETURN(at::Tensor src, view(name));
  const TensorInfo* info = find(name);
  if (!dst.defined() || !dst.is_contiguous() || !dst.device().is_cpu() || dst.sizes() != src.sizes()) {
    return absl::InvalidArgumentError(absl::StrCat("read_into '", std::string(name),
                                                   "': destination must be a contiguous CPU tensor of "
                                                   "the tensor's shape"));
  }
  const int64_t n = src.numel();
  if (n == 0) return absl::OkStatus();
  const int64_t item = static_cast<int64_t>(src.element_size());
  const int64_t chunk = std::max<int64_t>(1, (16 << 20) / item);
  const uint64_t page = page_size();
  const uint64_t base = data_start_ + info->begin;
  return status_from_torch_error("safetensors read_into", [&] {
    at::Tensor s = src.view({n});
    at::Tensor d = dst.view({n});
    for (int64_t i = 0; i < n; i += chunk) {
      const int64_t len = std::min(chunk, n - i);
      d.narrow(0, i, len).copy_(s.narrow(0, i, len));
      // Drop only whole pages inside what has been consumed so far; a page
      // straddling the next chunk stays until that chunk is done.
      const uint64_t from = (base + static_cast<uint64_t>(i * item)) / page * page;
      const uint64_t done = base + static_cast<uint64_t>((i + len) * item);
      const uint64_t to = i + len == n ? (done + page - 1) / page * page : done / page * page;
      if (to > from) {
        madvise(const_cast<uint8_t*>(mapping_->base) + from,
                std::min<uint64_t>(to, (mapping_->size + page - 1) / page * page) - from, MADV_DONTNEED);
      }
    }
  });
}

void SafetensorsFile::release_all() const {
  madvise(const_cast<uint8_t*>(mapping_->base), mapping_->size, MADV_DONTNEED);
}

// ---------------------------------------------------------------------------
// CheckpointReader

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::open(const std::string& dir_or_file) {
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader());
  std::error_code ec;
  fs::file_status st = fs::status(dir_or_file, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError("checkpoint '" + dir_or_file + "' does not exist");
  }
  auto add_file = [&](std::unique_ptr<SafetensorsFile> f) -> absl::Status {
    for (const TensorInfo& t : f->tensors()) {
      auto [it, inserted] = reader->index_.emplace(t.name, f.get());
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", dir_or_file, "': tensor '", t.name,
                                                       "' is present in two shards, '", it->second->path(), "' and '",
                                                       f->path(), "'"));
      }
    }
    reader->files_.push_back(std::move(f));
    return absl::OkStatus();
  };

  if (!fs::is_directory(st)) {
    PEFT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::open(dir_or_file));
    PEFT_RETURN_IF_ERROR(add_file(std::move(f)));
    return reader;
  }

  const std::string index_path = dir_or_file + "/" + kIndexName;
  if (!fs::exists(index_path, ec)) {
    const std::string single = dir_or_file + "/" + kSingleName;
    if (!fs::exists(single, ec)) {
      return absl::NotFoundError(
          absl::StrCat("checkpoint directory '", dir_or_file, "' has neither ", kIndexName, " nor ", kSingleName));
    }
    PEFT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::open(single));
    PEFT_RETURN_IF_ERROR(add_file(std::move(f)));
    return reader;
  }

  PEFT_ASSIGN_OR_RETURN(std::string text, read_file(index_path));
  PEFT_ASSIGN_OR_RETURN(Json index,
                        parse_json_strict(text.data(), text.data() + text.size(), "index '" + index_path + "'"));
  auto bad_index = [&](const std::string& msg) {
    return absl::InvalidArgumentError(absl::StrCat("invalid index '", index_path, "': ", msg));
  };
  if (!index.is_object()) return bad_index("not a JSON object");
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return bad_index("\"weight_map\" missing or not an object");
  }
  std::map<std::string, std::string> weight_map;  // tensor -> shard
  std::set<std::string> shards;
  for (const auto& [name, shard] : wm->items()) {
    if (!shard.is_string()) {
      return bad_index(absl::StrCat("weight_map entry '", name, "' is not a file name string"));
    }
    const std::string file = shard.get<std::string>();
    fs::path rel(file);
    bool escapes = file.empty() || rel.is_absolute();
    for (const fs::path& part : rel) escapes |= (part == "..");
    if (escapes) {
      return bad_index(
          absl::StrCat("weight_map entry '", name, "' names shard '", file, "' outside the checkpoint directory"));
    }
    weight_map[name] = file;
    shards.insert(file);
  }
  std::map<std::string, const SafetensorsFile*> shard_files;
  for (const std::string& shard : shards) {
    const std::string shard_path = dir_or_file + "/" + shard;
    if (!fs::exists(shard_path, ec)) {
      return absl::NotFoundError(absl::StrCat("index '", index_path, "' names missing shard '", shard, "'"));
    }
    PEFT_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::open(shard_path));
    shard_files[shard] = f.get();
    PEFT_RETURN_IF_ERROR(add_file(std::move(f)));
  }
  for (const auto& [name, shard] : weight_map) {
    if (shard_files.at(shard)->find(name) == nullptr) {
      return bad_index(absl::StrCat("weight_map maps '", name, "' to '", shard, "', which has no such tensor"));
    }
  }
  return reader;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& [name, file] : index_) out.push_back(name);
  return out;
}

const SafetensorsFile* CheckpointReader::file_of(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

const TensorInfo* CheckpointReader::find(std::string_view name) const {
  const SafetensorsFile* f = file_of(name);
  return f == nullptr ? nullptr : f->find(name);
}

absl::StatusOr<at::Tensor> CheckpointReader::view(std::string_view name) const {
  const SafetensorsFile* f = file_of(name);
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("no tensor '", std::string(name), "' in the checkpoint"));
  }
  return f->view(name);
}

absl::StatusOr<at::Tensor> CheckpointReader::load(std::string_view name, std::optional<c10::ScalarType> dtype) const {
  const SafetensorsFile* f = file_of(name);
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("no tensor '", std::string(name), "' in the checkpoint"));
  }
  return f->load(name, dtype);
}

absl::Status CheckpointReader::read_into(std::string_view name, const at::Tensor& dst) const {
  const SafetensorsFile* f = file_of(name);
  if (f == nullptr) {
    return absl::NotFoundError(absl::StrCat("no tensor named '", std::string(name), "'"));
  }
  return f->read_into(name, dst);
}

void CheckpointReader::release(std::string_view name) const {
  const SafetensorsFile* f = file_of(name);
  if (f != nullptr) f->release(name);
}

uint64_t CheckpointReader::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_) total += f->data_bytes();
  return total;
}

// ---------------------------------------------------------------------------
// Writing

namespace {

struct PlannedTensor {
  const NamedTensor* source;
  const DtypeSpec* spec;
  uint64_t nbytes;
};

absl::StatusOr<std::vector<PlannedTensor>> plan_tensors(const std::string& path,
                                                        const std::vector<NamedTensor>& tensors) {
  std::vector<PlannedTensor> plan;
  plan.reserve(tensors.size());
  std::set<std::string_view> seen;
  for (const NamedTensor& t : tensors) {
    if (!seen.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("cannot save '", path, "': duplicate tensor name '", t.name, "'"));
    }
    if (t.name == "__metadata__") {
      return absl::InvalidArgumentError(absl::StrCat("cannot save '", path, "': '__metadata__' is reserved"));
    }
    if (!t.tensor.defined()) {
      return absl::InvalidArgumentError(absl::StrCat("cannot save '", path, "': tensor '", t.name, "' is undefined"));
    }
    const DtypeSpec* spec = find_dtype(t.tensor.scalar_type());
    if (spec == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("cannot save '", path, "': tensor '", t.name, "' has torch dtype ",
                                                     c10::toString(t.tensor.scalar_type()),
                                                     ", which has no safetensors name here"));
    }
    plan.push_back({&t, spec, static_cast<uint64_t>(t.tensor.nbytes())});
  }
  // The reference writer's order: dtype alignment descending, then name
  // (byte-wise, as std::string compares).
  std::sort(plan.begin(), plan.end(), [](const PlannedTensor& a, const PlannedTensor& b) {
    if (a.spec->rank != b.spec->rank) return a.spec->rank > b.spec->rank;
    return a.source->name < b.source->name;
  });
  return plan;
}

absl::StatusOr<std::string> build_header(const std::string& path, const std::vector<PlannedTensor>& plan,
                                         const std::map<std::string, std::string>& metadata) {
  // Written by hand (not via a Json object, which would sort the keys) so the
  // bytes match the reference: compact, __metadata__ first, and each entry as
  // {"dtype","shape","data_offsets"}.
  std::string h = "{";
  bool first = true;
  try {
    if (!metadata.empty()) {
      h += "\"__metadata__\":{";
      bool first_kv = true;
      for (const auto& [k, v] : metadata) {
        if (!first_kv) h += ',';
        first_kv = false;
        h += escape_json(k);
        h += ':';
        h += escape_json(v);
      }
      h += '}';
      first = false;
    }
    uint64_t offset = 0;
    for (const PlannedTensor& p : plan) {
      if (!first) h += ',';
      first = false;
      h += escape_json(p.source->name);
      h += ":{\"dtype\":\"";
      h += p.spec->name;
      h += "\",\"shape\":[";
      const at::IntArrayRef sizes = p.source->tensor.sizes();
      for (size_t i = 0; i < sizes.size(); ++i) {
        if (i > 0) h += ',';
        h += std::to_string(sizes[i]);
      }
      h += "],\"data_offsets\":[";
      h += std::to_string(offset);
      h += ',';
      offset += p.nbytes;
      h += std::to_string(offset);
      h += "]}";
    }
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot save '", path, "': a tensor name or metadata string is not valid UTF-8: ", e.what()));
  }
  h += '}';
  h.append((8 - h.size() % 8) % 8, ' ');
  if (h.size() > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat("cannot save '", path, "': header of ", h.size(),
                                                   " bytes exceeds the ", kMaxHeaderBytes,
                                                   "-byte limit readers accept"));
  }
  return h;
}

absl::Status write_tensor_data(AtomicFileWriter& out, const PlannedTensor& p) {
  if (p.nbytes == 0) return absl::OkStatus();
  at::Tensor cpu;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("safetensors save", [&] {
    cpu = p.source->tensor.detach();
    if (!cpu.device().is_cpu()) cpu = cpu.cpu();
    cpu = cpu.contiguous();
  }));
  return out.write(cpu.data_ptr(), p.nbytes);
}

bool is_checkpoint_file_name(const std::string& name) {
  static const std::regex pattern(R"(model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)");
  return std::regex_match(name, pattern);
}

}  // namespace

absl::Status save_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  PEFT_ASSIGN_OR_RETURN(std::vector<PlannedTensor> plan, plan_tensors(path, tensors));
  PEFT_ASSIGN_OR_RETURN(std::string header, build_header(path, plan, metadata));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<AtomicFileWriter> out, AtomicFileWriter::create(path));
  const uint64_t n = header.size();
  PEFT_RETURN_IF_ERROR(out->write(&n, 8));  // little-endian host
  PEFT_RETURN_IF_ERROR(out->write(header.data(), header.size()));
  for (const PlannedTensor& p : plan) {
    PEFT_RETURN_IF_ERROR(write_tensor_data(*out, p));
  }
  return out->commit();
}

absl::Status save_checkpoint(const std::string& dir, const std::vector<NamedTensor>& tensors, uint64_t max_shard_bytes,
                             const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir)) {
    return absl::InvalidArgumentError(absl::StrCat("cannot create checkpoint directory '", dir, "': ", ec.message()));
  }
  // Validate everything (names, dtypes) before the first file is written.
  PEFT_RETURN_IF_ERROR(plan_tensors(dir, tensors).status());

  // huggingface_hub's split: in the given order, a new shard when the next
  // tensor would overflow the current one; oversized tensors alone.
  std::vector<std::vector<NamedTensor>> shards;
  std::vector<NamedTensor> current;
  uint64_t current_bytes = 0;
  uint64_t total_bytes = 0;
  for (const NamedTensor& t : tensors) {
    const uint64_t nbytes = static_cast<uint64_t>(t.tensor.nbytes());
    total_bytes += nbytes;
    if (nbytes > max_shard_bytes) {
      shards.push_back({t});
      continue;
    }
    if (current_bytes + nbytes > max_shard_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(t);
    current_bytes += nbytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));

  std::set<std::string> written;
  if (shards.size() == 1) {
    PEFT_RETURN_IF_ERROR(save_safetensors(dir + "/" + kSingleName, shards[0], metadata));
    written.insert(kSingleName);
  } else {
    Json weight_map = Json::object();
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string name = absl::StrFormat("model-%05d-of-%05d.safetensors", i + 1, shards.size());
      PEFT_RETURN_IF_ERROR(save_safetensors(dir + "/" + name, shards[i], metadata));
      written.insert(name);
      for (const NamedTensor& t : shards[i]) weight_map[t.name] = name;
    }
    Json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", std::move(weight_map)}};
    // Same shape as huggingface_hub: sorted keys, 2-space indent, newline.
    PEFT_RETURN_IF_ERROR(write_file_atomically(dir + "/" + kIndexName, index.dump(2) + "\n"));
    written.insert(kIndexName);
  }

  // Only now remove what a previous save left behind; the index goes first so
  // a concurrent reader never follows it to a deleted shard. (A shard whose
  // name is reused was already replaced atomically above.)
  std::vector<std::string> stale;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (is_checkpoint_file_name(name) && written.count(name) == 0) {
      stale.push_back(name);
    }
  }
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot list '", dir, "' to remove stale shards: ", ec.message()));
  }
  std::stable_partition(stale.begin(), stale.end(), [](const std::string& s) {
    return s.size() >= 11 && s.compare(s.size() - 11, 11, ".index.json") == 0;
  });
  for (const std::string& name : stale) {
    if (!fs::remove(dir + "/" + name, ec) && ec) {
      return absl::InternalError(absl::StrCat("cannot remove stale '", dir, "/", name, "': ", ec.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace peft::io
