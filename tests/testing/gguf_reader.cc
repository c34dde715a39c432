#include "tests/testing/gguf_reader.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace peft::testing {
namespace {

// Bounds-checked little-endian cursor; throws on a read past the end.
struct Cursor {
  const std::string& b;
  size_t pos = 0;

  void need(uint64_t n) const {
    if (n > b.size() || pos > b.size() - n) throw std::runtime_error("truncated at byte " + std::to_string(pos));
  }
  uint64_t uint(int bytes) {
    need(bytes);
    uint64_t v = 0;
    for (int k = bytes - 1; k >= 0; --k) v = (v << 8) | static_cast<unsigned char>(b[pos + k]);
    pos += bytes;
    return v;
  }
  std::string str() {
    const uint64_t n = uint(8);
    need(n);
    std::string s = b.substr(pos, n);
    pos += n;
    return s;
  }
};

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

GgufValue read_value(Cursor& c, uint32_t type, int depth) {
  GgufValue v;
  v.type = type;
  auto sign_extend = [](uint64_t x, int bits) {
    const uint64_t m = uint64_t{1} << (bits - 1);
    return static_cast<int64_t>((x ^ m) - m);
  };
  switch (type) {
    case 0:
      v.u = c.uint(1);
      v.i = static_cast<int64_t>(v.u);
      break;                                         // uint8
    case 1: v.i = sign_extend(c.uint(1), 8); break;  // int8
    case 2:
      v.u = c.uint(2);
      v.i = static_cast<int64_t>(v.u);
      break;                                          // uint16
    case 3: v.i = sign_extend(c.uint(2), 16); break;  // int16
    case 4:
      v.u = c.uint(4);
      v.i = static_cast<int64_t>(v.u);
      break;                                          // uint32
    case 5: v.i = sign_extend(c.uint(4), 32); break;  // int32
    case 6: v.f = bits_to_float(static_cast<uint32_t>(c.uint(4))); break;
    case 7: {
      const uint64_t x = c.uint(1);
      if (x > 1) throw std::runtime_error("bool value " + std::to_string(x));
      v.b = x == 1;
      break;
    }
    case 8: v.s = c.str(); break;
    case 9: {
      if (depth > 0) throw std::runtime_error("nested array");
      v.elem_type = static_cast<uint32_t>(c.uint(4));
      const uint64_t n = c.uint(8);
      if (n > c.b.size()) throw std::runtime_error("array length " + std::to_string(n));
      v.array.reserve(n);
      for (uint64_t k = 0; k < n; ++k) v.array.push_back(read_value(c, v.elem_type, depth + 1));
      break;
    }
    case 10:
      v.u = c.uint(8);
      v.i = static_cast<int64_t>(v.u);
      break;
    case 11: v.i = static_cast<int64_t>(c.uint(8)); break;
    case 12: {
      const uint64_t u = c.uint(8);
      std::memcpy(&v.f, &u, 8);
      break;
    }
    default: throw std::runtime_error("unknown value type " + std::to_string(type));
  }
  return v;
}

uint64_t data_size(uint32_t type, uint64_t elements) {
  switch (type) {
    case 0: return 4 * elements;
    case 1:
    case 30: return 2 * elements;
    case 8:
      if (elements % 32 != 0) throw std::runtime_error("q8_0 tensor of " + std::to_string(elements) + " values");
      return elements / 32 * 34;
    default: throw std::runtime_error("tensor type " + std::to_string(type) + " not handled by the test reader");
  }
}

}  // namespace

float half_bits_to_float(uint16_t h) {
  const int sign = (h >> 15) & 1, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  float v;
  if (exp == 0) {
    v = std::ldexp(static_cast<float>(mant), -24);
  } else if (exp == 31) {
    v = mant ? std::nanf("") : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mant + 1024), exp - 25);
  }
  return sign ? -v : v;
}

float bf16_bits_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

GgufFile parse_gguf(std::string bytes) {
  GgufFile f;
  f.bytes = std::move(bytes);
  try {
    Cursor c{f.bytes};
    if (c.uint(4) != 0x46554747) throw std::runtime_error("bad magic");
    f.version = static_cast<uint32_t>(c.uint(4));
    if (f.version != 3) throw std::runtime_error("version " + std::to_string(f.version));
    const uint64_t n_tensors = c.uint(8), n_kv = c.uint(8);
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = c.str();
      if (key.empty()) throw std::runtime_error("empty key");
      for (const auto& e : f.kv) {
        if (e.first == key) throw std::runtime_error("duplicate key " + key);
      }
      const uint32_t type = static_cast<uint32_t>(c.uint(4));
      f.kv.emplace_back(key, read_value(c, type, 0));
    }
    if (const GgufValue* a = f.get("general.alignment")) {
      if (a->type != 4 || a->u == 0 || (a->u & (a->u - 1)) != 0) throw std::runtime_error("bad general.alignment");
      f.alignment = a->u;
    }
    for (uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensor t;
      t.name = c.str();
      if (t.name.empty() || t.name.size() > 63) throw std::runtime_error("bad tensor name '" + t.name + "'");
      const uint64_t dims = c.uint(4);
      if (dims < 1 || dims > 4) throw std::runtime_error(t.name + ": " + std::to_string(dims) + " dims");
      uint64_t elements = 1;
      for (uint64_t d = 0; d < dims; ++d) {
        t.ne.push_back(c.uint(8));
        elements *= t.ne.back();
      }
      t.type = static_cast<uint32_t>(c.uint(4));
      t.offset = c.uint(8);
      if (t.offset % f.alignment != 0) throw std::runtime_error(t.name + ": offset not aligned");
      t.nbytes = data_size(t.type, elements);
      if (t.type == 8 && t.ne[0] % 32 != 0) throw std::runtime_error(t.name + ": q8_0 row not whole blocks");
      if (f.tensor(t.name) != nullptr) throw std::runtime_error("duplicate tensor " + t.name);
      f.tensors.push_back(std::move(t));
    }
    f.data_offset = (c.pos + f.alignment - 1) / f.alignment * f.alignment;
    for (size_t p = c.pos; p < f.data_offset && p < f.bytes.size(); ++p) {
      if (f.bytes[p] != 0) throw std::runtime_error("non-zero header padding");
    }
    std::vector<std::pair<uint64_t, uint64_t>> spans;
    for (const GgufTensor& t : f.tensors) {
      if (f.data_offset + t.offset + t.nbytes > f.bytes.size()) throw std::runtime_error(t.name + ": past the end");
      spans.emplace_back(t.offset, t.offset + t.nbytes);
    }
    std::sort(spans.begin(), spans.end());
    for (size_t k = 1; k < spans.size(); ++k) {
      if (spans[k].first < spans[k - 1].second) throw std::runtime_error("tensors overlap");
    }
  } catch (const std::exception& e) {
    f.error = e.what();
  }
  return f;
}

GgufFile read_gguf(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    GgufFile f;
    f.error = "cannot open " + path;
    return f;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_gguf(ss.str());
}

const GgufValue* GgufFile::get(const std::string& key) const {
  for (const auto& e : kv) {
    if (e.first == key) return &e.second;
  }
  return nullptr;
}

const GgufTensor* GgufFile::tensor(const std::string& name) const {
  for (const GgufTensor& t : tensors) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string GgufFile::data(const std::string& name) const {
  const GgufTensor* t = tensor(name);
  if (t == nullptr) return "";
  return bytes.substr(data_offset + t->offset, t->nbytes);
}

std::vector<float> GgufFile::values(const std::string& name) const {
  const GgufTensor* t = tensor(name);
  std::vector<float> out;
  if (t == nullptr) return out;
  const std::string d = data(name);
  auto u16 = [&](size_t at) {
    return static_cast<uint16_t>(static_cast<unsigned char>(d[at]) | (static_cast<unsigned char>(d[at + 1]) << 8));
  };
  switch (t->type) {
    case 0:
      out.resize(d.size() / 4);
      std::memcpy(out.data(), d.data(), d.size());
      break;
    case 1:
      for (size_t k = 0; k < d.size(); k += 2) out.push_back(half_bits_to_float(u16(k)));
      break;
    case 30:
      for (size_t k = 0; k < d.size(); k += 2) out.push_back(bf16_bits_to_float(u16(k)));
      break;
    case 8:
      for (size_t blk = 0; blk < d.size(); blk += 34) {
        const float scale = half_bits_to_float(u16(blk));
        for (size_t j = 0; j < 32; ++j) out.push_back(scale * static_cast<float>(static_cast<int8_t>(d[blk + 2 + j])));
      }
      break;
    default: break;
  }
  return out;
}

std::vector<std::string> GgufFile::strings(const std::string& key) const {
  std::vector<std::string> out;
  const GgufValue* v = get(key);
  if (v == nullptr || v->type != 9 || v->elem_type != 8) return out;
  for (const GgufValue& e : v->array) out.push_back(e.s);
  return out;
}

}  // namespace peft::testing
