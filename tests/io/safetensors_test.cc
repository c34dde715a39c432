// Round trips, header layout and the view/load/release contracts of
// peft/io/safetensors.h.
#include "peft/io/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tests/testing/assets.h"

namespace peft::io {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint64_t header_len(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return n;
}

// Bitwise equality (NaN-safe, exact for floats).
void expect_bit_identical(const at::Tensor& a, const at::Tensor& b, const std::string& name) {
  ASSERT_EQ(a.scalar_type(), b.scalar_type()) << name;
  ASSERT_EQ(a.sizes(), b.sizes()) << name;
  at::Tensor ca = a.contiguous(), cb = b.contiguous();
  ASSERT_EQ(ca.nbytes(), cb.nbytes()) << name;
  if (ca.nbytes() > 0) {
    EXPECT_EQ(std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()), 0) << name;
  }
}

at::Tensor random_tensor(at::ScalarType t, at::IntArrayRef shape) {
  if (t == at::kBool) return at::randint(0, 2, shape).to(at::kBool);
  if (at::isFloatingType(t)) return at::randn(shape).to(t);
  if (t == at::kByte) return at::randint(0, 256, shape).to(t);
  if (t == at::kChar) return at::randint(-128, 128, shape).to(t);
  return at::randint(-30000, 30000, shape).to(t);
}

struct DtypeCase {
  at::ScalarType type;
  const char* name;
};

// In the reference writer's order: alignment descending.
const std::vector<DtypeCase> kSupported = {
    {at::kLong, "I64"}, {at::kDouble, "F64"}, {at::kFloat, "F32"}, {at::kInt, "I32"}, {at::kBFloat16, "BF16"},
    {at::kHalf, "F16"}, {at::kShort, "I16"},  {at::kChar, "I8"},   {at::kByte, "U8"}, {at::kBool, "BOOL"},
};

TEST(SafetensorsDtypeTest, NamesMapBothWays) {
  for (const DtypeCase& c : kSupported) {
    EXPECT_EQ(safetensors_dtype_name(c.type).value(), c.name);
    EXPECT_EQ(scalar_type_from_safetensors(c.name).value(), c.type);
  }
  EXPECT_EQ(scalar_type_from_safetensors("F8_E4M3").status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(scalar_type_from_safetensors("F12").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(safetensors_dtype_name(at::kComplexFloat).ok());
  EXPECT_EQ(safetensors_dtype_bits("F4").value(), 4);
  EXPECT_EQ(safetensors_dtype_bits("F6_E3M2").value(), 6);
  EXPECT_EQ(safetensors_dtype_bits("C64").value(), 64);
}

TEST(SafetensorsTest, RoundTripEveryDtypeScalarAndEmpty) {
  at::manual_seed(0);
  std::vector<NamedTensor> tensors;
  for (const DtypeCase& c : kSupported) {
    std::string base = std::string("t_") + c.name;
    tensors.push_back({base + "_matrix", random_tensor(c.type, {3, 5})});
    tensors.push_back({base + "_scalar", random_tensor(c.type, {})});
    tensors.push_back({base + "_empty", random_tensor(c.type, {0, 4})});
  }
  std::string dir = testing::make_temp_dir("st_roundtrip");
  std::string path = dir + "/all.safetensors";
  ASSERT_TRUE(save_safetensors(path, tensors).ok());

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), tensors.size());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  for (const NamedTensor& t : tensors) {
    const TensorInfo* info = (*file)->find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->shape, t.tensor.sizes().vec()) << t.name;
    auto loaded = (*file)->load(t.name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    expect_bit_identical(*loaded, t.tensor, t.name);
    auto viewed = (*file)->view(t.name);
    ASSERT_TRUE(viewed.ok()) << viewed.status();
    expect_bit_identical(*viewed, t.tensor, t.name);
  }
}

TEST(SafetensorsTest, HeaderIsPaddedWithMetadataFirstAndAlignmentOrder) {
  at::manual_seed(1);
  std::vector<NamedTensor> tensors;
  // Names deliberately in reverse order of the expected layout.
  for (auto it = kSupported.rbegin(); it != kSupported.rend(); ++it) {
    tensors.push_back({std::string("b_") + it->name, random_tensor(it->type, {3})});
    tensors.push_back({std::string("a_") + it->name, random_tensor(it->type, {2})});
  }
  std::string path = testing::make_temp_dir("st_layout") + "/x.safetensors";
  ASSERT_TRUE(save_safetensors(path, tensors).ok());

  std::string bytes = read_bytes(path);
  uint64_t n = header_len(bytes);
  EXPECT_EQ(n % 8, 0u);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind("{\"__metadata__\":{\"format\":\"pt\"},", 0), 0u) << header;
  size_t close = header.find_last_of('}');
  EXPECT_LT(header.size() - close - 1, 8u);
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);

  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<const TensorInfo*> by_offset;
  for (const TensorInfo& t : (*file)->tensors()) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(), [](auto* a, auto* b) { return a->begin < b->begin; });
  std::vector<std::string> order, expected;
  for (auto* t : by_offset) order.push_back(t->name);
  for (const DtypeCase& c : kSupported) {
    expected.push_back(std::string("a_") + c.name);
    expected.push_back(std::string("b_") + c.name);
  }
  EXPECT_EQ(order, expected);
  // Each tensor is naturally aligned in the file.
  for (auto* t : by_offset) {
    EXPECT_EQ((8 + n + t->begin) % c10::elementSize(t->scalar_type), 0u) << t->name;
  }
  // Header order matches data order (metadata, then layout order).
  size_t prev = 0;
  for (const std::string& name : expected) {
    size_t pos = header.find("\"" + name + "\":");
    ASSERT_NE(pos, std::string::npos);
    EXPECT_GT(pos, prev) << name;
    prev = pos;
  }
}

// Golden bytes from the reference library's own serialization tests
// (huggingface/safetensors tensor.rs test_serialization / test_empty), which
// call serialize() with no metadata.
TEST(SafetensorsTest, MatchesReferenceBytesWithoutMetadata) {
  std::string dir = testing::make_temp_dir("st_golden");
  at::Tensor t = at::arange(6, at::kFloat).reshape({1, 2, 3});
  ASSERT_TRUE(save_safetensors(dir + "/a.safetensors", {{"attn.0", t}}, {}).ok());
  const unsigned char expected[] = {
      64,  0,  0,   0,  0,   0,  0,   0,   123, 34,  97,  116, 116, 110, 46,  48, 34, 58, 123, 34, 100, 116, 121, 112,
      101, 34, 58,  34, 70,  51, 50,  34,  44,  34,  115, 104, 97,  112, 101, 34, 58, 91, 49,  44, 50,  44,  51,  93,
      44,  34, 100, 97, 116, 97, 95,  111, 102, 102, 115, 101, 116, 115, 34,  58, 91, 48, 44,  50, 52,  93,  125, 125,
      0,   0,  0,   0,  0,   0,  128, 63,  0,   0,   0,   64,  0,   0,   64,  64, 0,  0,  128, 64, 0,   0,   160, 64};
  EXPECT_EQ(read_bytes(dir + "/a.safetensors"), std::string(reinterpret_cast<const char*>(expected), sizeof(expected)));

  ASSERT_TRUE(save_safetensors(dir + "/empty.safetensors", {}, {}).ok());
  EXPECT_EQ(read_bytes(dir + "/empty.safetensors"), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
  auto f = SafetensorsFile::open(dir + "/empty.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE((*f)->tensors().empty());
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST(SafetensorsTest, NonContiguousSharedAndGradTensorsAreCopied) {
  at::manual_seed(2);
  at::Tensor base = at::randn({4, 6});
  at::Tensor transposed = base.t();             // non-contiguous
  at::Tensor strided = base.slice(1, 0, 6, 2);  // shares storage
  at::Tensor expanded = at::randn({1, 3}).expand({5, 3});
  at::Tensor grad = at::randn({3}).set_requires_grad(true);
  std::string path = testing::make_temp_dir("st_noncontig") + "/x.safetensors";
  ASSERT_TRUE(
      save_safetensors(
          path,
          {{"base", base}, {"transposed", transposed}, {"strided", strided}, {"expanded", expanded}, {"grad", grad}})
          .ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  expect_bit_identical((*file)->load("transposed").value(), transposed, "t");
  expect_bit_identical((*file)->load("strided").value(), strided, "s");
  expect_bit_identical((*file)->load("expanded").value(), expanded, "e");
  expect_bit_identical((*file)->load("grad").value(), grad.detach(), "g");
  EXPECT_EQ((*file)->data_bytes(), (24 + 24 + 12 + 15 + 3) * 4u);
}

TEST(SafetensorsTest, SaveRejectsBadInputAndLeavesNoFile) {
  std::string dir = testing::make_temp_dir("st_savebad");
  std::string path = dir + "/x.safetensors";
  at::Tensor t = at::ones({2});
  absl::Status dup = save_safetensors(path, {{"a", t}, {"b", t}, {"a", t}});
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(dup.message().find("duplicate tensor name 'a'"), std::string::npos) << dup;
  EXPECT_FALSE(save_safetensors(path, {{"__metadata__", t}}).ok());
  EXPECT_FALSE(save_safetensors(path, {{"u", at::Tensor()}}).ok());
  EXPECT_FALSE(save_safetensors(path, {{"c", at::ones({2}, at::kComplexFloat)}}).ok());
  absl::Status utf8 = save_safetensors(path, {{"bad\xff", t}});
  EXPECT_FALSE(utf8.ok());
  EXPECT_NE(utf8.message().find("UTF-8"), std::string::npos) << utf8;
  EXPECT_FALSE(save_safetensors(path, {{"a", t}}, {{"k", "\xc3"}}).ok());
  // Nothing was written, not even a temp file.
  EXPECT_TRUE(std::filesystem::is_empty(dir));
}

TEST(SafetensorsTest, CustomMetadataAndEscapedNames) {
  std::string path = testing::make_temp_dir("st_meta") + "/x.safetensors";
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "quote \" backslash \\ newline \n é"}};
  std::string name = "weird \"name\"\t\xc3\xa9";
  ASSERT_TRUE(save_safetensors(path, {{name, at::ones({2})}}, meta).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), meta);
  ASSERT_NE((*file)->find(name), nullptr);
  EXPECT_TRUE(at::equal((*file)->load(name).value(), at::ones({2})));
}

TEST(SafetensorsTest, LoadConvertsDtypeAndViewIsZeroCopy) {
  std::string path = testing::make_temp_dir("st_conv") + "/x.safetensors";
  at::Tensor w = at::arange(12, at::kFloat).reshape({3, 4});
  ASSERT_TRUE(save_safetensors(path, {{"w", w}}).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok());
  at::Tensor bf = (*file)->load("w", at::kBFloat16).value();
  EXPECT_EQ(bf.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(bf, w.to(at::kBFloat16)));
  at::Tensor v1 = (*file)->view("w").value();
  at::Tensor v2 = (*file)->view("w").value();
  EXPECT_EQ(v1.data_ptr(), v2.data_ptr());  // both point into the mapping
  at::Tensor owned = (*file)->load("w").value();
  EXPECT_NE(owned.data_ptr(), v1.data_ptr());
  owned.add_(1);  // owned copies are writable
  EXPECT_EQ((*file)->view("missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*file)->find("missing"), nullptr);
}

TEST(SafetensorsTest, ViewOutlivesTheFileObject) {
  std::string path = testing::make_temp_dir("st_life") + "/x.safetensors";
  at::Tensor w = at::arange(1000, at::kFloat);
  ASSERT_TRUE(save_safetensors(path, {{"w", w}}).ok());
  at::Tensor v;
  {
    auto file = SafetensorsFile::open(path);
    ASSERT_TRUE(file.ok());
    v = (*file)->view("w").value();
  }
  EXPECT_TRUE(at::equal(v, w));
}

// Reads VmRSS-like fields ("RssFile:") from /proc/self/status in kB.
int64_t proc_status_kb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(field.size()));
  }
  return -1;
}

TEST(SafetensorsTest, ReleaseDropsPagesAndViewsStayValid) {
  at::manual_seed(3);
  // 16 MiB each, so the RSS drop is far above noise.
  at::Tensor a = at::randn({4 << 20});
  at::Tensor b = at::randn({4 << 20});
  std::string path = testing::make_temp_dir("st_release") + "/x.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"a", a}, {"b", b}}).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok());
  at::Tensor dst = at::empty({4 << 20});
  at::Tensor va = (*file)->view("a").value();
  dst.copy_(va);
  int64_t before = proc_status_kb("RssFile:");
  (*file)->release("a");
  int64_t after = proc_status_kb("RssFile:");
  if (before >= 0 && after >= 0) {
    EXPECT_GE(before - after, 12 * 1024) << "RssFile " << before << " -> " << after;
  }
  EXPECT_TRUE(at::equal(dst, a));
  EXPECT_TRUE(at::equal(va, a));  // re-faulted from the file
  (*file)->release("missing");    // ignored
  (*file)->release_all();
  EXPECT_TRUE(at::equal((*file)->view("b").value(), b));
}

TEST(SafetensorsTest, SpecDtypesWithoutTorchTypeOpenButDoNotLoad) {
  // Hand-written file with F8_E4M3, U16 and an F4 pair.
  std::string header =
      "{\"f4\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]},"
      "\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[1,4]},"
      "\"u16\":{\"dtype\":\"U16\",\"shape\":[2],\"data_offsets\":[4,8]}}";
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header + std::string(8, '\x11');
  std::string path = testing::make_temp_dir("st_f8") + "/x.safetensors";
  std::ofstream(path, std::ios::binary) << bytes;
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->find("f8")->scalar_type, c10::ScalarType::Undefined);
  auto v = (*file)->view("f8");
  EXPECT_EQ(v.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(v.status().message().find("'f8'"), std::string::npos) << v.status();
  EXPECT_NE(v.status().message().find("F8_E4M3"), std::string::npos);
  EXPECT_EQ((*file)->load("u16").status().code(), absl::StatusCode::kUnimplemented);
}

TEST(SafetensorsTest, MisalignedOffsetsAreCopied) {
  // Unpadded header (odd length) and a U8 before an F32: the F32 data sits at
  // an odd address in the mapping.
  std::string header =
      "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]}}";
  if (header.size() % 2 == 0) header += ' ';
  std::string bytes(8, '\0');
  uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  float vals[2] = {1.5f, -2.25f};
  bytes += header + std::string("\x07") + std::string(reinterpret_cast<const char*>(vals), 8);
  std::string path = testing::make_temp_dir("st_misaligned") + "/x.safetensors";
  std::ofstream(path, std::ios::binary) << bytes;
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  at::Tensor b = (*file)->view("b").value();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data_ptr()) % 4, 0u);
  EXPECT_EQ(b[0].item<float>(), 1.5f);
  EXPECT_EQ(b[1].item<float>(), -2.25f);
  EXPECT_EQ((*file)->load("a").value().item<uint8_t>(), 7);
}

TEST(SafetensorsTest, SaveReplacesAtomicallyAndLeavesNoTempFiles) {
  std::string dir = testing::make_temp_dir("st_atomic");
  std::string path = dir + "/x.safetensors";
  ASSERT_TRUE(save_safetensors(path, {{"a", at::ones({2})}}).ok());
  ASSERT_TRUE(save_safetensors(path, {{"b", at::zeros({3})}}).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->find("a"), nullptr);
  EXPECT_NE((*file)->find("b"), nullptr);
  int entries = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(SafetensorsReadInto, ChunkedCopyConvertsAndMatchesLoad) {
  const std::string path = testing::make_temp_dir("st_readinto") + "/x.safetensors";
  // 5M floats = 20 MB: more than one 16 MB chunk, and an odd tail.
  at::Tensor big = at::randn({5000001}, at::TensorOptions().dtype(at::kFloat));
  at::Tensor half = at::randn({1023, 7}).to(at::kBFloat16);
  ASSERT_TRUE(save_safetensors(path, {{"big", big}, {"half", half}}).ok());
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  at::Tensor dst = at::empty({5000001});
  ASSERT_TRUE((*file)->read_into("big", dst).ok());
  EXPECT_TRUE(at::equal(dst, big));
  at::Tensor up = at::empty({1023, 7});  // BF16 file, fp32 destination
  ASSERT_TRUE((*file)->read_into("half", up).ok());
  EXPECT_TRUE(at::equal(up, half.to(at::kFloat)));
  // Wrong shape and unknown names are errors, not crashes.
  EXPECT_FALSE((*file)->read_into("half", at::empty({7, 1023})).ok());
  EXPECT_FALSE((*file)->read_into("nope", dst).ok());
  // The tensor is still readable after its pages were dropped.
  EXPECT_TRUE(at::equal(*(*file)->load("big"), big));
}

}  // namespace
}  // namespace peft::io
