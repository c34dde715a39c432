// LoRA adapters as llama.cpp GGUF LoRA files. The reference is the merged
// model: for every adapted tensor X, llama.cpp computes
//   X_base + (alpha / r) * B A   (r = lora_b's ne[0], alpha the file's),
// which must equal X of the merged model exported to GGUF, all read back by
// the independent test reader. Methods llama.cpp cannot load are refused.
#include "peft/export/gguf_lora.h"

#include <cmath>
#include <filesystem>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/lora/lora.h"
#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
namespace gguf = models::gguf;
using testing::GgufFile;

gguf::Vocab plain_vocab(int64_t n, const std::string& model) {
  gguf::Vocab v;
  v.model = model;
  v.pre = model == "llama" ? "default" : "gpt-2";
  for (int64_t i = 0; i < n; ++i) {
    v.tokens.push_back("t" + std::to_string(i));
    if (model == "llama") v.scores.push_back(0.0f);
    v.types.push_back(gguf::kTokenNormal);
  }
  return v;
}

// A GGUF tensor as a PyTorch-order matrix [ne1, ne0].
at::Tensor matrix(const GgufFile& f, const std::string& name) {
  const testing::GgufTensor* t = f.tensor(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return at::Tensor();
  return at::tensor(f.values(name)).reshape({static_cast<int64_t>(t->ne[1]), static_cast<int64_t>(t->ne[0])});
}

proto::AdapterConfig lora_config(int r, float alpha, const std::string& preset = "all_linear") {
  proto::AdapterConfig c;
  c.mutable_lora()->set_r(r);
  c.mutable_lora()->set_alpha(alpha);
  c.mutable_target()->set_preset(preset);
  return c;
}

// Gives every B non-zero values (a fresh LoRA is the identity).
void randomize_b(PeftModel& pm, uint64_t seed) {
  torch::manual_seed(seed);
  torch::NoGradGuard no_grad;
  for (const LinearTarget& t : pm.targets("default")) {
    auto* lora = dynamic_cast<LoraLinearImpl*>(t.linear->adapter("default"));
    ASSERT_NE(lora, nullptr);
    lora->lora_B.normal_(0.0, 0.3);
  }
}

class GgufLora : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = testing::make_temp_dir("gguf_lora"); }

  // Exports the base, the adapter and the merged model; checks the llama.cpp
  // equation on every adapted tensor. Returns the adapter file.
  GgufFile check(const models::ModelConfig& config, const proto::AdapterConfig& adapter, int64_t expect_rank,
                 float expect_alpha, const std::string& tag) {
    const std::string model = config.arch == models::Architecture::kLlama ? "llama" : "gpt2";
    const gguf::Vocab vocab = plain_vocab(config.vocab_size(), model);
    std::shared_ptr<models::CausalLm> lm = testing::tiny_model(config, 11);
    EXPECT_TRUE(gguf::export_model(*lm, vocab, dir_ + "/" + tag + "_base.gguf", {}).ok());
    PeftModel pm(lm);
    EXPECT_TRUE(pm.add_adapter(adapter, 5).ok());
    randomize_b(pm, 3);
    gguf::ExportOptions o;
    absl::StatusOr<GgufLoraStats> stats = export_lora_gguf(pm, "default", dir_ + "/" + tag + "_lora.gguf", o);
    EXPECT_TRUE(stats.ok()) << stats.status();
    EXPECT_TRUE(pm.merge_and_unload_().ok());
    EXPECT_TRUE(gguf::export_model(pm.model(), vocab, dir_ + "/" + tag + "_merged.gguf", {}).ok());

    const GgufFile base = testing::read_gguf(dir_ + "/" + tag + "_base.gguf");
    const GgufFile merged = testing::read_gguf(dir_ + "/" + tag + "_merged.gguf");
    const GgufFile lora = testing::read_gguf(dir_ + "/" + tag + "_lora.gguf");
    EXPECT_EQ(lora.error, "");
    EXPECT_EQ(lora.get("general.type")->s, "adapter");
    EXPECT_EQ(lora.get("general.architecture")->s, model);
    EXPECT_EQ(lora.get("adapter.type")->s, "lora");
    EXPECT_EQ(lora.get("adapter.lora.alpha")->type, 6u);
    EXPECT_NEAR(lora.get("adapter.lora.alpha")->f, expect_alpha, 1e-5 * expect_alpha);
    const double alpha = lora.get("adapter.lora.alpha")->f;
    int pairs = 0;
    for (const testing::GgufTensor& t : lora.tensors) {
      const std::string suffix = ".lora_a";
      if (t.name.size() < suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0) {
        continue;
      }
      const std::string base_name = t.name.substr(0, t.name.size() - suffix.size());
      const testing::GgufTensor* b = lora.tensor(base_name + ".lora_b");
      EXPECT_NE(b, nullptr) << base_name;
      if (b == nullptr) continue;
      // llama.cpp's shape checks (llama-adapter.cpp): a.ne[0] = base.ne[0],
      // b.ne[1] = base.ne[1], a.ne[1] = b.ne[0] = r.
      const testing::GgufTensor* w = base.tensor(base_name);
      EXPECT_NE(w, nullptr) << base_name;
      if (w == nullptr) continue;
      EXPECT_EQ(t.ne[0], w->ne[0]) << base_name;
      EXPECT_EQ(b->ne[1], w->ne[1]) << base_name;
      EXPECT_EQ(t.ne[1], b->ne[0]) << base_name;
      if (expect_rank > 0) {
        EXPECT_EQ(static_cast<int64_t>(b->ne[0]), expect_rank) << base_name;
      }
      const double scale = alpha / static_cast<double>(b->ne[0]);
      const at::Tensor delta = at::matmul(matrix(lora, base_name + ".lora_b"), matrix(lora, t.name)) * scale;
      const at::Tensor want = matrix(merged, base_name) - matrix(base, base_name);
      EXPECT_TRUE(at::allclose(delta, want, 1e-4, 1e-5))
          << base_name << " max diff " << (delta - want).abs().max().item<double>();
      ++pairs;
    }
    EXPECT_GT(pairs, 0);
    if (stats.ok()) {
      EXPECT_EQ(stats->modules, pairs);
    }
    return lora;
  }

  std::string dir_;
};

TEST_F(GgufLora, LlamaAllLinear) {
  const GgufFile f = check(testing::tiny_llama_config(), lora_config(4, 8), 4, 8.0f, "plain");
  // 2 layers x 7 projections; names and shapes as llama.cpp pairs them.
  EXPECT_EQ(f.tensors.size(), 2u * 7u * 2u);
  ASSERT_NE(f.tensor("blk.1.attn_q.weight.lora_a"), nullptr);
  EXPECT_EQ(f.tensor("blk.1.attn_q.weight.lora_a")->ne, (std::vector<uint64_t>{32, 4}));
  EXPECT_EQ(f.tensor("blk.1.attn_k.weight.lora_b")->ne, (std::vector<uint64_t>{4, 16}));
  EXPECT_EQ(f.tensor("blk.0.ffn_gate.weight.lora_b")->ne, (std::vector<uint64_t>{4, 48}));
  EXPECT_EQ(f.tensor("blk.1.attn_q.weight.lora_a")->type, 0u);
}

TEST_F(GgufLora, RsLoraIsFoldedIntoAlpha) {
  proto::AdapterConfig c = lora_config(4, 8);
  c.mutable_lora()->set_use_rslora(true);
  check(testing::tiny_llama_config(), c, 4, 16.0f, "rslora");  // 8 * sqrt(4)
}

TEST_F(GgufLora, PatternsFoldTheirScaleIntoB) {
  proto::AdapterConfig c = lora_config(4, 8);
  auto* rp = c.mutable_lora()->add_rank_pattern();
  rp->set_key("q_proj");
  rp->set_value(2);
  auto* ap = c.mutable_lora()->add_alpha_pattern();
  ap->set_key("v_proj");
  ap->set_value(3);
  const GgufFile f = check(testing::tiny_llama_config(), c, /*any rank*/ 0, 8.0f, "patterns");
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_b")->ne[0], 2u);
}

TEST_F(GgufLora, PissaAsPlainLoraOnTheOriginalBase) {
  proto::AdapterConfig c = lora_config(4, 8, "attention");
  c.mutable_lora()->set_init(proto::LoraOptions::PISSA);
  check(testing::tiny_llama_config(), c, 8, 16.0f, "pissa");  // rank 2r, alpha doubled
}

TEST_F(GgufLora, Gpt2) {
  const GgufFile f = check(testing::tiny_gpt2_config(), lora_config(8, 16), 8, 16.0f, "gpt2");
  EXPECT_NE(f.tensor("blk.0.attn_qkv.weight.lora_a"), nullptr);
  EXPECT_NE(f.tensor("blk.1.ffn_down.weight.lora_b"), nullptr);
}

TEST_F(GgufLora, Q8FallsBackForShortRows) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(), 1);
  PeftModel pm(lm);
  ASSERT_TRUE(pm.add_adapter(lora_config(4, 8), 1).ok());
  gguf::ExportOptions o;
  o.dtype = gguf::TensorType::kQ8_0;
  ASSERT_TRUE(export_lora_gguf(pm, "default", dir_ + "/q.gguf", o).ok());
  const GgufFile f = testing::read_gguf(dir_ + "/q.gguf");
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_a")->type, 8u);  // rows of 32 (in)
  EXPECT_EQ(f.tensor("blk.0.attn_q.weight.lora_b")->type, 1u);  // rows of r = 4
}

// Each refusal names the way out, and writes nothing.
TEST_F(GgufLora, RefusesWhatLlamaCppCannotLoad) {
  struct Case {
    std::string tag;
    proto::AdapterConfig config;
    bool tied;
    std::string message;
  };
  std::vector<Case> cases;
  {
    proto::AdapterConfig c;
    c.mutable_nora()->set_r(8);
    c.mutable_nora()->set_r_inner(4);
    c.mutable_target()->set_preset("attention");
    cases.push_back({"nora", c, false, "merge it into the base"});
  }
  {
    proto::AdapterConfig c;
    c.mutable_compacter()->set_phm_dim(4);
    c.mutable_compacter()->set_reduction_factor(4);
    cases.push_back({"compacter", c, false, "cannot be merged"});
  }
  {
    proto::AdapterConfig c;
    c.mutable_hsm()->set_target_hidden(16);
    c.mutable_hsm()->set_bottleneck(8);
    cases.push_back({"hsm", c, false, "--prune"});
  }
  {
    proto::AdapterConfig c = lora_config(4, 8);
    c.mutable_lora()->set_bias(proto::LoraOptions::ALL);
    cases.push_back({"bias", c, false, "trains biases"});
  }
  {
    proto::AdapterConfig c = lora_config(4, 8);
    c.mutable_target()->clear_preset();
    c.mutable_target()->add_modules("lm_head");
    cases.push_back({"tied", c, true, "tied"});
  }
  for (const Case& k : cases) {
    PeftModel pm(testing::tiny_model(testing::tiny_llama_config(k.tied), 1));
    absl::Status added = pm.add_adapter(k.config, 1);
    ASSERT_TRUE(added.ok()) << k.tag << ": " << added;
    absl::StatusOr<GgufLoraStats> s = export_lora_gguf(pm, "default", dir_ + "/" + k.tag + ".gguf", {});
    ASSERT_FALSE(s.ok()) << k.tag;
    EXPECT_NE(s.status().message().find(k.message), std::string::npos) << k.tag << ": " << s.status();
  }
  EXPECT_TRUE(fs::is_empty(dir_));
}

}  // namespace
}  // namespace peft
