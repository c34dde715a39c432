// Reads the real Hugging Face-format files in ../shared/assets/hf_tiny and
// re-saves them byte for byte. Skips when the assets are absent.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"

namespace peft::io {
namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string model_file(const std::string& folder) {
  std::string dir = testing::shared_assets_dir();
  return dir.empty() ? "" : dir + "/hf_tiny/" + folder + "/model.safetensors";
}

// Loads every tensor and saves them again with the default {"format":"pt"}
// metadata. The assets were written in name order with compact JSON; each
// file holds a single dtype, so name order is also the reference writer's
// alignment-then-name order, and the bytes must match exactly.
void expect_resave_identical(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<NamedTensor> tensors;
  for (const TensorInfo& t : (*file)->tensors()) {
    auto loaded = (*file)->load(t.name);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    tensors.push_back({t.name, *loaded});
  }
  std::string out = testing::make_temp_dir("st_assets") + "/model.safetensors";
  ASSERT_TRUE(save_safetensors(out, tensors).ok());
  std::string original = read_bytes(path), resaved = read_bytes(out);
  EXPECT_EQ(original.size(), resaved.size());
  EXPECT_TRUE(original == resaved) << path << " differs after re-save";
}

TEST(SafetensorsAssetsTest, LlamaTinyF32) {
  std::string path = model_file("llama_tiny");
  if (path.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  auto file = SafetensorsFile::open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 21u);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  for (const TensorInfo& t : (*file)->tensors()) {
    EXPECT_EQ(t.dtype, "F32") << t.name;
    EXPECT_EQ(t.scalar_type, at::kFloat) << t.name;
  }
  const TensorInfo* embed = (*file)->find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(embed->shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ((*file)->find("model.layers.1.mlp.down_proj.weight")->shape, (std::vector<int64_t>{64, 176}));
  EXPECT_EQ((*file)->find("model.layers.0.self_attn.k_proj.weight")->shape, (std::vector<int64_t>{32, 64}));
  at::Tensor w = (*file)->load("model.norm.weight").value();
  EXPECT_EQ(w.sizes(), (at::IntArrayRef{64}));
  EXPECT_TRUE(at::isfinite(w).all().item<bool>());
  expect_resave_identical(path);
}

TEST(SafetensorsAssetsTest, LlamaTinyBf16MatchesRoundedF32) {
  std::string path = model_file("llama_tiny_bf16");
  if (path.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  auto bf = CheckpointReader::open(path);
  ASSERT_TRUE(bf.ok()) << bf.status();
  auto f32 = CheckpointReader::open(model_file("llama_tiny"));
  ASSERT_TRUE(f32.ok()) << f32.status();
  EXPECT_EQ((*bf)->names(), (*f32)->names());
  EXPECT_EQ((*bf)->names().size(), 21u);
  for (const std::string& name : (*bf)->names()) {
    EXPECT_EQ((*bf)->find(name)->dtype, "BF16");
    at::Tensor b = (*bf)->view(name).value();
    EXPECT_EQ(b.scalar_type(), at::kBFloat16);
    // "The same weights rounded to bfloat16" (hf_tiny/README.md).
    at::Tensor f = (*f32)->load(name, at::kBFloat16).value();
    EXPECT_TRUE(at::equal(b, f)) << name;
  }
  EXPECT_EQ((*bf)->total_bytes() * 2, (*f32)->total_bytes());
  expect_resave_identical(path);
}

TEST(SafetensorsAssetsTest, Gpt2Tiny) {
  std::string path = model_file("gpt2_tiny");
  if (path.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  // Through the directory, as a model loader would.
  std::string dir = path.substr(0, path.rfind('/'));
  auto ckpt = CheckpointReader::open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->names().size(), 28u);
  EXPECT_EQ((*ckpt)->find("wte.weight")->shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ((*ckpt)->find("h.0.attn.c_attn.weight")->shape, (std::vector<int64_t>{64, 192}));  // Conv1D [in, out]
  EXPECT_EQ((*ckpt)->find("h.1.mlp.c_proj.weight")->shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ((*ckpt)->find("lm_head.weight"), nullptr);  // tied
  expect_resave_identical(path);
}

}  // namespace
}  // namespace peft::io
