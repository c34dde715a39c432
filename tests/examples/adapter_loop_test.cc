// On the real stories260K model (imported from llama2.c and saved as a
// Hugging Face directory, as `peft convert` does), the custom loop of
// examples/adapter_loop.h lowers the held-out loss on Shakespeare for every
// method in the registry, and the merged export of each mergeable method,
// saved and reloaded, generates the same greedy tokens as base + adapter.
#include <fstream>
#include <map>
#include <string>

#include <ATen/ATen.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "data/tokenizer.h"
#include "examples/adapter_loop.h"
#include "models/generate.h"
#include "models/llama2c.h"
#include "models/model_io.h"
#include "peft/peft_model.h"
#include "peft/registry.h"
#include "tests/testing/assets.h"

namespace peft {
namespace {

struct MethodCase {
  const char* config;  // AdapterConfig text
  double lr;
};

// stories260K: hidden 64, KV 32, FFN 172, vocab 512, 5 layers.
const std::map<std::string, MethodCase>& method_cases() {
  static const std::map<std::string, MethodCase> m = {
      {"lora", {R"(lora { r: 8 alpha: 16 } target { preset: "all_linear" })", 1e-2}},
      {"nora", {R"(nora { r: 16 r_inner: 4 } target { preset: "all_linear" })", 1e-2}},
      {"sorsa", {R"(sorsa { r: 8 gamma: 0.0004 } target { preset: "all_linear" })", 3e-3}},
      {"bone", {R"(bone { r: 4 } target { preset: "all_linear" })", 3e-3}},
      {"compacter", {R"(compacter { phm_dim: 4 reduction_factor: 8 })", 1e-2}},
      {"hsm", {R"(hsm { target_hidden: 48 bottleneck: 8 global_step: 30 })", 1e-2}},
  };
  return m;
}

class AdapterLoopTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) return;
    dir_ = testing::make_temp_dir("loop") + "/stories260K";
    auto lm = models::import_llama2c(assets_ + "/llama2c_stories260K/stories260K.bin");
    ASSERT_TRUE(lm.ok()) << lm.status();
    ASSERT_TRUE(models::save_model(**lm, dir_).ok());
    auto tok = data::load_tokenizer(assets_ + "/llama2c_stories260K/tok512.model");
    ASSERT_TRUE(tok.ok()) << tok.status();
    std::ifstream in(assets_ + "/corpus/tinyshakespeare.txt");
    std::string text(std::istreambuf_iterator<char>(in), {});
    for (int32_t id : (*tok)->encode(text.substr(0, 30000))) tokens_.push_back(id);
  }
  void SetUp() override {
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  }
  static std::string assets_, dir_;
  static std::vector<int64_t> tokens_;
};
std::string AdapterLoopTest::assets_, AdapterLoopTest::dir_;
std::vector<int64_t> AdapterLoopTest::tokens_;

std::vector<int64_t> greedy(models::CausalLm& lm) {
  models::GenerateOptions o;
  o.max_new_tokens = 40;
  o.use_config_eos = false;
  torch::NoGradGuard ng;
  return models::generate(lm, {1, 403, 407, 261, 378}, o)->generated_ids;
}

TEST_F(AdapterLoopTest, EveryMethodLearnsAndMergedExportMatches) {
  for (const AdapterMethod& method : adapter_methods()) {
    SCOPED_TRACE(method.name);
    ASSERT_TRUE(method_cases().count(method.name)) << "no loop case for " << method.name;
    const MethodCase& mc = method_cases().at(method.name);
    proto::AdapterConfig config;
    ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(mc.config, &config));
    auto lm = models::load_model(dir_);
    ASSERT_TRUE(lm.ok());
    PeftModel pm(*lm);
    absl::Status st = pm.add_adapter(config, 0);
    ASSERT_TRUE(st.ok()) << st;
    examples::LoopOptions o;
    o.steps = 30;
    o.lr = mc.lr;
    auto r = examples::train_adapter(pm, tokens_, o);
    ASSERT_TRUE(r.ok()) << r.status();
    std::printf("%-10s trainable %7lld  held-out loss %.4f -> %.4f\n", method.name.c_str(),
                static_cast<long long>(pm.num_trainable()), r->eval_loss_before, r->eval_loss_after);
    EXPECT_LT(r->eval_loss_after, r->eval_loss_before - 0.05) << "the loss did not go down";

    if (!method.mergeable) continue;
    pm.model().module().eval();
    const std::vector<int64_t> unmerged = greedy(pm.model());
    ASSERT_TRUE(pm.merge_and_unload_().ok());
    const std::string out = testing::make_temp_dir("merged") + "/m";
    ASSERT_TRUE(models::save_model(pm.model(), out).ok());
    auto merged = models::load_model(out);
    ASSERT_TRUE(merged.ok()) << merged.status();
    EXPECT_EQ(greedy(**merged), unmerged) << "merged export generates different tokens";
  }
}

}  // namespace
}  // namespace peft
