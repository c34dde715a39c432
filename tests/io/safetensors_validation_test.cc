// Hostile and malformed files: every rule of interop.md 1.3 rejects with a
// message naming the problem, and nothing crashes or reads out of bounds.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"

namespace peft::io {
namespace {

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

// A file with header `header` (its real length unless `n` overrides it) and
// `data` after it.
std::string make_file(const std::string& header, const std::string& data, std::optional<uint64_t> n = std::nullopt) {
  return le64(n.value_or(header.size())) + header + data;
}

class ValidationTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::make_temp_dir("st_bad"); }

  // Writes `bytes`, opens it, expects failure, returns the message.
  std::string open_error(const std::string& bytes) {
    std::string path = dir_ + "/f" + std::to_string(counter_++) + ".safetensors";
    std::ofstream(path, std::ios::binary) << bytes;
    auto file = SafetensorsFile::open(path);
    EXPECT_FALSE(file.ok()) << "opened: " << path;
    if (file.ok()) return "";
    EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
    std::string msg(file.status().message());
    EXPECT_NE(msg.find(path), std::string::npos) << "no file name in: " << msg;
    return msg;
  }

  bool opens(const std::string& bytes) {
    std::string path = dir_ + "/g" + std::to_string(counter_++) + ".safetensors";
    std::ofstream(path, std::ios::binary) << bytes;
    return SafetensorsFile::open(path).ok();
  }

  std::string dir_;
  int counter_ = 0;
};

::testing::AssertionResult mentions(const std::string& msg, const std::string& needle) {
  if (msg.find(needle) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "'" << needle << "' not in error message: " << msg;
}

const std::string kTwoF32 =
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}";

TEST_F(ValidationTest, WellFormedBaselineOpens) {
  EXPECT_TRUE(opens(make_file(kTwoF32, std::string(16, '\0'))));
  EXPECT_TRUE(opens(make_file("{}", "")));
  EXPECT_TRUE(opens(make_file("{\"__metadata__\":null}  ", "")));
  // Zero-size tensors share an offset with their neighbour.
  EXPECT_TRUE(
      opens(make_file("{\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                      "\"s\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}",
                      std::string(4, '\0'))));
}

TEST_F(ValidationTest, FileShorterThan8Bytes) {
  EXPECT_TRUE(mentions(open_error(std::string(5, '\0')), "HeaderTooSmall"));
  EXPECT_TRUE(mentions(open_error(""), "shorter than the 8-byte"));
}

TEST_F(ValidationTest, HeaderTooLarge) {
  std::string msg = open_error(le64(100'000'001) + "{}");
  EXPECT_TRUE(mentions(msg, "HeaderTooLarge"));
  EXPECT_TRUE(mentions(msg, "100000001"));
  EXPECT_TRUE(mentions(open_error(le64(~uint64_t{0}) + "{}"), "HeaderTooLarge"));
}

TEST_F(ValidationTest, HeaderLengthPastEndOfFile) {
  std::string msg = open_error(make_file("{}", "", 1000));
  EXPECT_TRUE(mentions(msg, "runs past the end"));
  EXPECT_TRUE(mentions(msg, "1000"));
}

TEST_F(ValidationTest, TruncatedData) {
  std::string msg = open_error(make_file(kTwoF32, std::string(12, '\0')));
  EXPECT_TRUE(mentions(msg, "truncated"));
  EXPECT_TRUE(mentions(msg, "16"));
}

TEST_F(ValidationTest, TrailingBytes) {
  EXPECT_TRUE(mentions(open_error(make_file(kTwoF32, std::string(17, '\0'))), "trailing bytes"));
}

TEST_F(ValidationTest, OverlappingOffsets) {
  std::string msg =
      open_error(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                           std::string(12, '\0')));
  EXPECT_TRUE(mentions(msg, "overlap"));
  EXPECT_TRUE(mentions(msg, "'b'"));
}

TEST_F(ValidationTest, GappedOffsets) {
  std::string msg =
      open_error(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                           std::string(20, '\0')));
  EXPECT_TRUE(mentions(msg, "gap"));
  EXPECT_TRUE(mentions(msg, "'b'"));
  // A first tensor not at 0 is a gap too.
  EXPECT_TRUE(mentions(
      open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", std::string(4, '\0'))),
      "gap"));
}

TEST_F(ValidationTest, SizeMismatchForDtype) {
  std::string msg =
      open_error(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", std::string(8, '\0')));
  EXPECT_TRUE(mentions(msg, "size mismatch"));
  EXPECT_TRUE(mentions(msg, "'a'"));
  EXPECT_TRUE(mentions(msg, "12 bytes"));
}

TEST_F(ValidationTest, EndBeforeBegin) {
  EXPECT_TRUE(mentions(
      open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}}", std::string(4, '\0'))),
      "end before"));
}

TEST_F(ValidationTest, SubByteDtypeMustFillWholeBytes) {
  EXPECT_TRUE(mentions(
      open_error(make_file("{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,2]}}", std::string(2, '\0'))),
      "MisalignedSlice"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":["
                                            "3],\"data_offsets\":[0,3]}}",
                                            std::string(3, '\0'))),
                       "whole number of bytes"));
  // 4 x 6 bits = 3 bytes is fine.
  EXPECT_TRUE(
      opens(make_file("{\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":[4],\"data_offsets\":[0,3]}}", std::string(3, '\0'))));
}

TEST_F(ValidationTest, ShapeOverflow) {
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,"
                                            "4294967296],\"data_offsets\":[0,0]}}",
                                            "")),
                       "ValidationOverflow"));
  // Fits in uint64 elements but not in bits.
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"I64\",\"shape\":[1152921504606846976],"
                                            "\"data_offsets\":[0,0]}}",
                                            "")),
                       "overflows"));
  // Beyond int64 dims are rejected as shape entries.
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615,"
                                            "0],\"data_offsets\":[0,0]}}",
                                            "")),
                       "non-negative 64-bit"));
}

TEST_F(ValidationTest, UnknownDtype) {
  std::string msg =
      open_error(make_file("{\"a\":{\"dtype\":\"F12\",\"shape\":[2],\"data_offsets\":[0,8]}}", std::string(8, '\0')));
  EXPECT_TRUE(mentions(msg, "unknown dtype 'F12'"));
  EXPECT_TRUE(mentions(msg, "'a'"));
}

TEST_F(ValidationTest, DuplicateTensorNames) {
  std::string msg =
      open_error(make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                           "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                           std::string(16, '\0')));
  EXPECT_TRUE(mentions(msg, "duplicate"));
  EXPECT_TRUE(mentions(msg, "'a'"));
  // Duplicates inside an entry are ambiguous too.
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"U8\","
                                            "\"shape\":[2],\"data_offsets\":[0,8]}}",
                                            std::string(8, '\0'))),
                       "duplicate key 'dtype'"));
}

TEST_F(ValidationTest, NonUtf8Header) {
  std::string msg = open_error(
      make_file("{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", std::string(1, '\0')));
  EXPECT_TRUE(mentions(msg, "UTF-8"));
  EXPECT_TRUE(mentions(msg, "byte 11"));
  // Overlong NUL, an encoded surrogate, and a code point above U+10FFFF.
  for (const char* bad : {"\xc0\x80", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"}) {
    EXPECT_TRUE(mentions(open_error(make_file(std::string("{\"__metadata__\":{\"k\":\"") + bad + "\"}}", "")), "UTF-8"))
        << "sequence " << bad;
  }
  // Valid multi-byte names open.
  EXPECT_TRUE(
      opens(make_file("{\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\":{\"dtype\":"
                      "\"U8\",\"shape\":[1],"
                      "\"data_offsets\":[0,1]}}",
                      std::string(1, '\0'))));
}

TEST_F(ValidationTest, MetadataMustBeStringToString) {
  std::string msg = open_error(make_file("{\"__metadata__\":{\"format\":1}}", ""));
  EXPECT_TRUE(mentions(msg, "__metadata__"));
  EXPECT_TRUE(mentions(msg, "'format' is not a string"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", "")), "not a string"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"__metadata__\":[\"pt\"]}", "")), "__metadata__"));
}

TEST_F(ValidationTest, NegativeShape) {
  std::string msg = open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", ""));
  EXPECT_TRUE(mentions(msg, "non-negative"));
  EXPECT_TRUE(mentions(msg, "'a'"));
}

TEST_F(ValidationTest, MalformedEntries) {
  EXPECT_TRUE(mentions(open_error(make_file("[]", "")), "'{'"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":", "")), "not valid JSON"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":3}", "")), "not a JSON object"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"shape\":[],\"data_offsets\":[0,1]}}", "")), "\"dtype\""));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":3,\"data_offsets\":[0,1]}}", "x")),
                       "\"shape\""));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", "x")),
                       "non-negative"));
  EXPECT_TRUE(mentions(open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", "x")),
                       "data_offsets"));
  EXPECT_TRUE(
      mentions(open_error(make_file("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,\"1\"]}}", "x")),
               "data_offsets"));
  EXPECT_TRUE(
      mentions(open_error(make_file("{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,1]}}", "x")), "\"dtype\""));
  EXPECT_TRUE(mentions(open_error(make_file("", "")), "'{'"));
  EXPECT_TRUE(mentions(open_error(make_file(std::string("{}\0\0", 4), "")), "not valid JSON"));
}

TEST_F(ValidationTest, DeeplyNestedJsonDoesNotCrash) {
  std::string deep = "{\"a\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
  EXPECT_TRUE(mentions(open_error(make_file(deep, "")), "not a JSON object"));
}

// Truncations at every length and random byte flips of a valid file either
// open or fail cleanly (run under ASan to check for out-of-bounds reads).
TEST_F(ValidationTest, FuzzedFilesNeverCrash) {
  std::string valid = make_file(
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
      "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
      "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[22,24]}}",
      std::string(24, '\x3f'));
  ASSERT_TRUE(opens(valid));
  for (size_t len = 0; len < valid.size(); ++len) {
    EXPECT_FALSE(opens(valid.substr(0, len))) << len;
  }
  std::mt19937 rng(12345);
  int opened = 0;
  for (int i = 0; i < 1500; ++i) {
    std::string mutated = valid;
    int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) {
      mutated[rng() % mutated.size()] = static_cast<char>(rng() % 256);
    }
    std::string path = dir_ + "/fuzz.safetensors";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << mutated;
    auto file = SafetensorsFile::open(path);
    if (!file.ok()) continue;
    ++opened;
    for (const TensorInfo& t : (*file)->tensors()) {
      auto v = (*file)->load(t.name);
      if (v.ok()) {
        EXPECT_EQ(static_cast<uint64_t>(v->nbytes()), t.nbytes());
      }
    }
  }
  EXPECT_GT(opened, 0);  // flips in tensor data keep the file valid
}

}  // namespace
}  // namespace peft::io
