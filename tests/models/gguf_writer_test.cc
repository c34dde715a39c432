// The GGUF writer against the format: a file built byte by byte here (which
// also checks the test reader), hand-computed q8_0 blocks and fp16 bits,
// alignment, and the failure paths (no partial file, ever).
#include "models/gguf/gguf_writer.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <gtest/gtest.h>

#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"

namespace peft::models::gguf {
namespace {

namespace fs = std::filesystem;

// Little-endian bytes, spelled out for the hand-built file.
std::string le(uint64_t v, int bytes) {
  std::string s;
  for (int k = 0; k < bytes; ++k) s.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
  return s;
}
std::string f32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return le(u, 4);
}

std::vector<std::string> dir_entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  return out;
}

// The file of HandBuiltFileMatchesWriter, byte by byte (docs/gguf.md).
std::string hand_built_file() {
  std::string b;
  b += "GGUF";                                                              // magic
  b += le(3, 4);                                                            // version
  b += le(2, 8);                                                            // tensor_count
  b += le(2, 8);                                                            // metadata_kv_count
  b += le(20, 8) + "general.architecture" + le(8, 4) + le(5, 8) + "llama";  // string
  b += le(5, 8) + "t.u32" + le(4, 4) + le(7, 4);                            // uint32 7
  // tensor "a": 1 dim, ne {2}, f32, offset 0
  b += le(1, 8) + "a" + le(1, 4) + le(2, 8) + le(0, 4) + le(0, 8);
  // tensor "b": PyTorch [2, 3] -> ne {3, 2}, f32, offset 32 (8 bytes of "a" padded to 32)
  b += le(1, 8) + "b" + le(2, 4) + le(3, 8) + le(2, 8) + le(0, 4) + le(32, 8);
  EXPECT_EQ(b.size(), 164u);
  b += std::string(192 - 164, '\0');  // header padding to 32
  b += f32(1.0f) + f32(-2.0f) + std::string(24, '\0');
  for (float v : {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f}) b += f32(v);
  b += std::string(8, '\0');
  EXPECT_EQ(b.size(), 256u);
  return b;
}

TEST(GgufWriter, HandBuiltFileMatchesWriter) {
  const std::string expected = hand_built_file();

  // The reader on the hand-built bytes.
  testing::GgufFile f = testing::parse_gguf(expected);
  ASSERT_EQ(f.error, "");
  EXPECT_EQ(f.version, 3u);
  EXPECT_EQ(f.data_offset, 192u);
  ASSERT_EQ(f.kv.size(), 2u);
  EXPECT_EQ(f.get("general.architecture")->s, "llama");
  EXPECT_EQ(f.get("t.u32")->type, 4u);
  EXPECT_EQ(f.get("t.u32")->u, 7u);
  ASSERT_EQ(f.tensors.size(), 2u);
  EXPECT_EQ(f.tensor("b")->ne, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(f.tensor("b")->offset, 32u);
  EXPECT_EQ(f.values("a"), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(f.values("b"), (std::vector<float>{0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f}));

  // The writer produces exactly these bytes.
  const std::string dir = testing::make_temp_dir("gguf_hand");
  Metadata md;
  md.add_string("general.architecture", "llama");
  md.add_uint32("t.u32", 7);
  auto w = GgufWriter::create(dir + "/x.gguf", md, {{"a", {2}, TensorType::kF32}, {"b", {2, 3}, TensorType::kF32}});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->data_offset(), 192u);
  EXPECT_EQ((*w)->file_bytes(), 256u);
  const float a[] = {1.0f, -2.0f};
  const float b[] = {0.5f, 1.5f, 2.5f, 3.5f, 4.5f, 5.5f};
  ASSERT_TRUE((*w)->write_tensor(a, 2).ok());
  ASSERT_TRUE((*w)->write_tensor(b, 6).ok());
  ASSERT_TRUE((*w)->commit().ok());
  EXPECT_EQ(testing::slurp(dir + "/x.gguf"), expected);
  EXPECT_EQ(dir_entries(dir), std::vector<std::string>{"x.gguf"});  // no temp file left
}

TEST(GgufWriter, ReaderRejectsMalformedFiles) {
  std::string good = hand_built_file();
  std::string bad = good;
  bad[4] = 2;  // version 2
  EXPECT_NE(testing::parse_gguf(bad).error, "");
  bad = good;
  bad.resize(200);  // tensor "b" past the end
  EXPECT_NE(testing::parse_gguf(bad).error, "");
  bad = good;
  bad[156] = 33;  // b's offset 33: not aligned
  EXPECT_NE(testing::parse_gguf(bad).error, "");
}

TEST(GgufWriter, MetadataValueTypes) {
  Metadata md;
  md.add_int32("i", -5);
  md.add_uint64("u64", uint64_t{1} << 40);
  md.add_float32("f", 0.25f);
  md.add_bool("b", true);
  md.add_string_array("sa", {"x", "", "y z"});
  md.add_float32_array("fa", {1.5f, -0.5f});
  md.add_int32_array("ia", {3, -4});
  md.add_string_array("empty", {});
  const std::string dir = testing::make_temp_dir("gguf_md");
  auto w = GgufWriter::create(dir + "/m.gguf", md, {});
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE((*w)->commit().ok());
  testing::GgufFile f = testing::read_gguf(dir + "/m.gguf");
  ASSERT_EQ(f.error, "");
  EXPECT_EQ(f.get("i")->type, 5u);
  EXPECT_EQ(f.get("i")->i, -5);
  EXPECT_EQ(f.get("u64")->type, 10u);
  EXPECT_EQ(f.get("u64")->u, uint64_t{1} << 40);
  EXPECT_EQ(f.get("f")->type, 6u);
  EXPECT_EQ(f.get("f")->f, 0.25);
  EXPECT_TRUE(f.get("b")->b);
  EXPECT_EQ(f.strings("sa"), (std::vector<std::string>{"x", "", "y z"}));
  EXPECT_EQ(f.get("fa")->elem_type, 6u);
  EXPECT_EQ(f.get("fa")->array[1].f, -0.5);
  EXPECT_EQ(f.get("ia")->elem_type, 5u);
  EXPECT_EQ(f.get("ia")->array[1].i, -4);
  EXPECT_EQ(f.get("empty")->type, 9u);
  EXPECT_EQ(f.get("empty")->elem_type, 8u);
  EXPECT_TRUE(f.get("empty")->array.empty());
  EXPECT_EQ(f.data_offset % 32, 0u);
}

TEST(GgufWriter, HalfBitsByHand) {
  EXPECT_EQ(float_to_half(0.0f), 0x0000);
  EXPECT_EQ(float_to_half(-0.0f), 0x8000);
  EXPECT_EQ(float_to_half(1.0f), 0x3C00);
  EXPECT_EQ(float_to_half(-2.0f), 0xC000);
  EXPECT_EQ(float_to_half(0.5f), 0x3800);
  EXPECT_EQ(float_to_half(0.1f), 0x2E66);
  EXPECT_EQ(float_to_half(65504.0f), 0x7BFF);
  EXPECT_EQ(float_to_half(65519.99f), 0x7BFF);
  EXPECT_EQ(float_to_half(65520.0f), 0x7C00);  // halfway to 2^16: to even = infinity
  EXPECT_EQ(float_to_half(1e9f), 0x7C00);
  EXPECT_EQ(float_to_half(-INFINITY), 0xFC00);
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);         // smallest normal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);         // smallest subnormal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);         // tie -> even (0)
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);         // tie -> even (2)
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3C00);  // tie -> even
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3C02);  // tie -> even
  EXPECT_EQ(float_to_half(std::nanf("")) & 0x7C00, 0x7C00);
  EXPECT_NE(float_to_half(std::nanf("")) & 0x03FF, 0);
  EXPECT_EQ(float_to_bfloat16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bfloat16(-3.0f), 0xC040);
  EXPECT_EQ(float_to_bfloat16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie -> even
  EXPECT_EQ(float_to_bfloat16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie -> even
  EXPECT_EQ(float_to_bfloat16(std::nanf("")) & 0x7FC0, 0x7FC0);
}

TEST(GgufWriter, HalfMatchesC10OnRandomValues) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<uint32_t> bits;
  int checked = 0;
  for (int k = 0; k < 200000; ++k) {
    uint32_t u = bits(gen);
    // Half the samples in fp16's range (exponents 100..145), including subnormals.
    if (k % 2 == 0) u = (u & 0x807FFFFFu) | ((100u + (u >> 23) % 46u) << 23);
    float x;
    std::memcpy(&x, &u, 4);
    if (std::isnan(x)) continue;
    ASSERT_EQ(float_to_half(x), c10::Half(x).x) << x;
    ASSERT_EQ(float_to_bfloat16(x), c10::BFloat16(x).x) << x;
    ++checked;
  }
  EXPECT_GT(checked, 190000);
}

// ggml's quantize_row_q8_0_ref, by hand for four blocks.
TEST(GgufWriter, Q8BlocksByHand) {
  std::vector<float> x(128, 0.0f);
  // Block 0: amax 63.5 -> d = 0.5 (fp16 0x3800), 1/d = 2; ties round away from zero.
  const float b0[] = {63.5f, -63.5f, 1.0f, 0.3f, -0.2f, 10.25f, -10.25f};
  const int8_t q0[] = {127, -127, 2, 1, 0, 21, -21};
  // Block 1: amax 127 -> d = 1 (0x3C00).
  const float b1[] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.49f, 3.5f, -126.5f};
  const int8_t q1[] = {127, 3, -3, 1, -1, 1, 4, -127};
  // Block 2: all zero -> d = 0, q = 0. Block 3: amax 1e-3 -> d = 7.874e-6, an
  // fp16 subnormal: round(7.874e-6 * 2^24) = 132 = 0x0084.
  std::copy(std::begin(b0), std::end(b0), x.begin());
  std::copy(std::begin(b1), std::end(b1), x.begin() + 32);
  x[96] = 1e-3f;
  x[97] = -4e-4f;
  std::vector<uint8_t> out(4 * 34, 0xAA);
  quantize_q8_0(x.data(), 128, out.data());
  auto d16 = [&](int blk) { return static_cast<uint16_t>(out[blk * 34] | (out[blk * 34 + 1] << 8)); };
  auto q = [&](int blk, int j) { return static_cast<int8_t>(out[blk * 34 + 2 + j]); };
  EXPECT_EQ(d16(0), 0x3800);
  for (size_t j = 0; j < std::size(q0); ++j) EXPECT_EQ(q(0, j), q0[j]) << j;
  for (int j = 7; j < 32; ++j) EXPECT_EQ(q(0, j), 0);
  EXPECT_EQ(d16(1), 0x3C00);
  for (size_t j = 0; j < std::size(q1); ++j) EXPECT_EQ(q(1, j), q1[j]) << j;
  EXPECT_EQ(d16(2), 0x0000);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(q(2, j), 0);
  EXPECT_EQ(d16(3), 0x0084);
  EXPECT_EQ(q(3, 0), 127);
  EXPECT_EQ(q(3, 1), -51);  // round(-50.8)
}

TEST(GgufWriter, TypesRoundTripThroughTheReader) {
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(64 * 96);
  for (float& v : w) v = normal(gen);
  w[5] = 9.0f;  // an outlier in block 0 of row 0
  const std::string dir = testing::make_temp_dir("gguf_types");
  auto writer = GgufWriter::create(dir + "/t.gguf", Metadata(),
                                   {{"w32", {64, 96}, TensorType::kF32},
                                    {"w16", {64, 96}, TensorType::kF16},
                                    {"wbf", {64, 96}, TensorType::kBF16},
                                    {"wq8", {64, 96}, TensorType::kQ8_0},
                                    {"odd", {3}, TensorType::kF32}});
  ASSERT_TRUE(writer.ok()) << writer.status();
  for (int k = 0; k < 4; ++k) ASSERT_TRUE((*writer)->write_tensor(w.data(), w.size()).ok());
  const float odd[] = {1, 2, 3};
  EXPECT_EQ((*writer)->next_tensor(), "odd");
  ASSERT_TRUE((*writer)->write_tensor(odd, 3).ok());
  ASSERT_TRUE((*writer)->commit().ok());

  testing::GgufFile f = testing::read_gguf(dir + "/t.gguf");
  ASSERT_EQ(f.error, "");
  for (const char* name : {"w32", "w16", "wbf", "wq8"}) {
    EXPECT_EQ(f.tensor(name)->ne, (std::vector<uint64_t>{96, 64})) << name;
    EXPECT_EQ(f.tensor(name)->offset % 32, 0u) << name;
  }
  EXPECT_EQ(f.tensor("w32")->type, 0u);
  EXPECT_EQ(f.tensor("w16")->type, 1u);
  EXPECT_EQ(f.tensor("wbf")->type, 30u);
  EXPECT_EQ(f.tensor("wq8")->type, 8u);
  EXPECT_EQ(f.tensor("wq8")->nbytes, 64u * 3 * 34);
  EXPECT_EQ(f.bytes.size() % 32, 0u);
  EXPECT_EQ(f.values("w32"), w);
  const std::vector<float> h = f.values("w16"), bf = f.values("wbf"), q8 = f.values("wq8");
  for (size_t i = 0; i < w.size(); ++i) {
    ASSERT_NEAR(h[i], w[i], std::fabs(w[i]) * 0x1p-11 + 1e-7) << i;
    ASSERT_NEAR(bf[i], w[i], std::fabs(w[i]) * 0x1p-8) << i;
    float amax = 0;
    for (size_t j = i / 32 * 32; j < i / 32 * 32 + 32; ++j) amax = std::max(amax, std::fabs(w[j]));
    ASSERT_NEAR(q8[i], w[i], 0.6f * amax / 127.0f) << i;  // half a step, plus the fp16 scale's rounding
  }
  EXPECT_EQ(f.values("odd"), (std::vector<float>{1, 2, 3}));
}

TEST(GgufWriter, RefusesBadPlansBeforeWriting) {
  const std::string dir = testing::make_temp_dir("gguf_plan");
  const std::string path = dir + "/p.gguf";
  EXPECT_FALSE(GgufWriter::create(path, Metadata(), {{"q", {4, 48}, TensorType::kQ8_0}}).ok());  // 48 % 32
  EXPECT_FALSE(GgufWriter::create(path, Metadata(), {{"x", {2}, TensorType::kF32}, {"x", {2}, TensorType::kF32}}).ok());
  EXPECT_FALSE(GgufWriter::create(path, Metadata(), {{std::string(64, 'n'), {2}, TensorType::kF32}}).ok());
  EXPECT_FALSE(GgufWriter::create(path, Metadata(), {{"z", {0}, TensorType::kF32}}).ok());
  Metadata dup;
  dup.add_uint32("k", 1);
  dup.add_uint32("k", 2);
  EXPECT_FALSE(GgufWriter::create(path, dup, {}).ok());
  auto missing_dir = GgufWriter::create(dir + "/no/such/dir/p.gguf", Metadata(), {});
  ASSERT_FALSE(missing_dir.ok());
  EXPECT_NE(missing_dir.status().message().find("does not exist"), std::string::npos) << missing_dir.status();
  EXPECT_TRUE(dir_entries(dir).empty());
}

TEST(GgufWriter, ExistingOutputNeedsOverwrite) {
  const std::string dir = testing::make_temp_dir("gguf_exists");
  const std::string path = dir + "/e.gguf";
  { std::ofstream(path) << "old"; }
  auto w = GgufWriter::create(path, Metadata(), {});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(w.status().message().find("--overwrite"), std::string::npos);
  EXPECT_EQ(testing::slurp(path), "old");
  auto dir_as_output = GgufWriter::create(dir, Metadata(), {});
  EXPECT_FALSE(dir_as_output.ok());

  auto w2 = GgufWriter::create(path, Metadata(), {}, WriterOptions{/*overwrite=*/true});
  ASSERT_TRUE(w2.ok()) << w2.status();
  ASSERT_TRUE((*w2)->commit().ok());
  EXPECT_EQ(testing::slurp(path).substr(0, 4), "GGUF");
}

TEST(GgufWriter, NoFileUnlessEveryTensorIsWritten) {
  const std::string dir = testing::make_temp_dir("gguf_partial");
  const std::string path = dir + "/n.gguf";
  const float v[4] = {1, 2, 3, 4};
  {
    auto w = GgufWriter::create(path, Metadata(), {{"a", {4}, TensorType::kF32}, {"b", {4}, TensorType::kF32}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write_tensor(v, 4).ok());
    absl::Status st = (*w)->commit();
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("only 1 of 2"), std::string::npos) << st;
  }
  EXPECT_TRUE(dir_entries(dir).empty());
  {
    auto w = GgufWriter::create(path, Metadata(), {{"a", {4}, TensorType::kF32}});
    ASSERT_TRUE(w.ok());
    EXPECT_FALSE((*w)->write_tensor(v, 3).ok());  // wrong count
    EXPECT_FALSE((*w)->commit().ok());
  }
  EXPECT_TRUE(dir_entries(dir).empty());
  {
    auto w = GgufWriter::create(path, Metadata(), {{"a", {4}, TensorType::kF32}});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->write_tensor(v, 4).ok());
  }  // destroyed without commit
  EXPECT_TRUE(dir_entries(dir).empty());
}

// A write that fails half-way (here the file size limit, as a full disk
// would): an error naming the file, and no output or temp file. In a child
// process, so the limit does not reach the test runner.
TEST(GgufWriter, FailedWriteLeavesNothing) {
  const std::string dir = testing::make_temp_dir("gguf_full");
  const std::string path = dir + "/big.gguf";
  int pipe_fd[2];
  ASSERT_EQ(pipe(pipe_fd), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipe_fd[0]);
    signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG instead of killing us
    struct rlimit lim = {64 << 10, 64 << 10};
    setrlimit(RLIMIT_FSIZE, &lim);
    std::vector<float> data(1 << 20, 1.0f);  // 4 MiB
    std::string msg;
    auto w = GgufWriter::create(path, Metadata(), {{"big", {1 << 20}, TensorType::kF32}});
    if (!w.ok()) {
      msg = "create: " + w.status().ToString();
    } else {
      absl::Status st = (*w)->write_tensor(data.data(), data.size());
      msg = st.ok() ? std::string("write succeeded") : st.ToString();
      if (!st.ok() && (*w)->commit().ok()) msg += " but commit succeeded";
    }
    (void)!write(pipe_fd[1], msg.data(), msg.size());
    close(pipe_fd[1]);
    _exit(0);
  }
  close(pipe_fd[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = read(pipe_fd[0], buf, sizeof(buf))) > 0;) msg.append(buf, n);
  close(pipe_fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_NE(msg.find("write failed for '" + path + "'"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("succeeded"), std::string::npos) << msg;
  EXPECT_TRUE(dir_entries(dir).empty());
}

}  // namespace
}  // namespace peft::models::gguf
