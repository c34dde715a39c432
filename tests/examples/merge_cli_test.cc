// `peft merge` and `--adapter` end to end on stories260K: a trained-looking
// LoRA adapter merged by the CLI generates what base + adapter generates;
// a Compacter adapter is refused with a message and no output; PAT (HSM +
// LoRA) with --prune writes a smaller model that generates like the masked one.
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "models/llama2c.h"
#include "models/model_io.h"
#include "peft/hsm/prune.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Out {
  int code;
  std::string out, err;
};

Out peft_cli(const std::string& args) {
  const std::string tmp = testing::make_temp_dir("mcli");
  const char* srcdir = getenv("TEST_SRCDIR");
  const std::string cmd =
      std::string(srcdir ? srcdir : ".") + "/__main__/examples/peft " + args + " >" + tmp + "/o 2>" + tmp + "/e";
  const int status = std::system(cmd.c_str());
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(tmp + "/o"), slurp(tmp + "/e")};
}

std::vector<int64_t> generated(const Out& o) {
  EXPECT_EQ(o.code, 0) << o.err;
  if (o.code != 0) return {};
  return json::parse(o.out)["generated_ids"].get<std::vector<int64_t>>();
}

class MergeCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string assets = testing::shared_assets_dir();
    if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
    base_ = testing::make_temp_dir("mbase") + "/stories260K";
    auto lm = models::import_llama2c(assets + "/llama2c_stories260K/stories260K.bin");
    ASSERT_TRUE(lm.ok());
    models::SaveOptions so;
    so.extra_files = {{assets + "/llama2c_stories260K/tok512.model", "tokenizer.model"}};
    ASSERT_TRUE(models::save_model(**lm, base_, so).ok());
  }
  // Saves adapters described by `configs` (text format) after perturbing
  // their trainable tensors, so they change the model's output.
  std::vector<std::string> save_adapters(const std::vector<std::string>& configs, PeftModel* keep = nullptr) {
    auto lm = models::load_model(base_);
    PeftModel pm(*lm);
    std::vector<std::string> dirs;
    std::vector<std::pair<std::string, double>> active;
    for (size_t i = 0; i < configs.size(); ++i) {
      proto::AdapterConfig c;
      EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(configs[i], &c));
      c.set_name("a" + std::to_string(i));
      EXPECT_TRUE(pm.add_adapter(c, i).ok());
      active.emplace_back(c.name(), 1.0);
    }
    EXPECT_TRUE(pm.set_active(active).ok());
    pm.freeze_base_();
    torch::NoGradGuard ng;
    at::manual_seed(3);
    for (auto& [name, p] : pm.trainable_parameters()) {
      if (name.find(".mask") != std::string::npos) {
        // HSM: keep the first 48 of 64 channels.
        p.fill_(-0.5);
        p.narrow(0, 0, 48).fill_(0.5);
      } else {
        p.add_(at::randn_like(p) * 0.05);
      }
    }
    for (size_t i = 0; i < configs.size(); ++i) {
      dirs.push_back(testing::make_temp_dir("ad") + "/a" + std::to_string(i));
      EXPECT_TRUE(pm.save_adapter(dirs.back(), "a" + std::to_string(i)).ok());
    }
    return dirs;
  }
  std::string base_;
};

TEST_F(MergeCliTest, LoraMergedExportGeneratesLikeBasePlusAdapter) {
  const std::string ad = save_adapters({R"(lora { r: 8 alpha: 16 } target { preset: "all_linear" })"})[0];
  const std::string gen = " --prompt='Once upon a time' --max_new_tokens=40 --format=json --threads=1";
  const std::vector<int64_t> with_adapter = generated(peft_cli("generate --model=" + base_ + " --adapter=" + ad + gen));
  const std::vector<int64_t> base_only = generated(peft_cli("generate --model=" + base_ + gen));
  EXPECT_NE(with_adapter, base_only) << "the adapter should change the output";
  const std::string merged = testing::make_temp_dir("mm") + "/merged";
  Out m = peft_cli("merge --model=" + base_ + " --adapter=" + ad + " --output=" + merged);
  ASSERT_EQ(m.code, 0) << m.err;
  EXPECT_TRUE(fs::exists(merged + "/tokenizer.model"));
  EXPECT_EQ(generated(peft_cli("generate --model=" + merged + gen)), with_adapter);
}

// `peft to-lora`: the plain-LoRA form of a trained PiSSA adapter generates,
// on the original base, what the PiSSA adapter generates (which rebuilds its
// residual base on load).
TEST_F(MergeCliTest, ToLoraGeneratesLikeThePissaAdapter) {
  const std::string ad = save_adapters({R"(lora { r: 4 alpha: 8 init: PISSA } target { preset: "all_linear" })"})[0];
  const std::string gen = " --prompt='Once upon a time' --max_new_tokens=40 --format=json --threads=1";
  const std::vector<int64_t> pissa = generated(peft_cli("generate --model=" + base_ + " --adapter=" + ad + gen));
  const std::string out = testing::make_temp_dir("tl") + "/lora";
  Out m = peft_cli("to-lora --model=" + base_ + " --adapter=" + ad + " --output=" + out);
  ASSERT_EQ(m.code, 0) << m.err;
  EXPECT_EQ(json::parse(m.out)["r"], 8);
  std::ifstream in(out + "/adapter_config.json");
  const json cfg = json::parse(in);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  EXPECT_EQ(cfg["r"], 8);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(generated(peft_cli("generate --model=" + base_ + " --adapter=" + out + gen)), pissa);
  // A plain LoRA adapter is refused, and nothing is written.
  const std::string plain = save_adapters({R"(lora { r: 4 alpha: 8 } target { preset: "all_linear" })"})[0];
  Out bad = peft_cli("to-lora --model=" + base_ + " --adapter=" + plain + " --output=" + out + "x");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("init PISSA or OLORA"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(out + "x"));
}

TEST_F(MergeCliTest, CompacterMergeIsRefusedWithNoOutput) {
  const std::string ad = save_adapters({R"(compacter { phm_dim: 4 reduction_factor: 8 })"})[0];
  const std::string out = testing::make_temp_dir("mc") + "/merged";
  Out m = peft_cli("merge --model=" + base_ + " --adapter=" + ad + " --output=" + out);
  EXPECT_EQ(m.code, 1);
  EXPECT_NE(m.err.find("cannot be merged"), std::string::npos) << m.err;
  EXPECT_FALSE(fs::exists(out));
  // It still runs unmerged.
  Out g = peft_cli("generate --model=" + base_ + " --adapter=" + ad + " --prompt=Hi --max_new_tokens=5 --format=json");
  EXPECT_EQ(g.code, 0) << g.err;
}

TEST_F(MergeCliTest, PatPruneWritesSmallerModelThatGeneratesLikeTheMaskedOne) {
  const std::vector<std::string> ads = save_adapters({R"(hsm { target_hidden: 48 bottleneck: 8 global_step: 100 })",
                                                      R"(lora { r: 4 alpha: 8 } target { preset: "all_linear" })"});
  const std::string both = ads[0] + "," + ads[1];
  const std::string gen = " --prompt='Once upon a time' --max_new_tokens=30 --format=json --threads=1";
  const std::vector<int64_t> masked = generated(peft_cli("generate --model=" + base_ + " --adapter=" + both + gen));
  const std::string pruned = testing::make_temp_dir("mp") + "/pruned";
  Out m = peft_cli("merge --prune --model=" + base_ + " --adapter=" + both + " --output=" + pruned);
  ASSERT_EQ(m.code, 0) << m.err;
  EXPECT_EQ(json::parse(m.out)["hidden_size"], 48);
  auto cfg = models::read_model_config(pruned);
  ASSERT_TRUE(cfg.ok());
  EXPECT_EQ(cfg->llama.hidden_size, 48);
  EXPECT_EQ(cfg->llama.head_dim, 8);
  EXPECT_EQ(generated(peft_cli("generate --model=" + pruned + gen)), masked);
  // --prune without an HSM adapter is an error.
  Out bad = peft_cli("merge --prune --model=" + base_ + " --adapter=" + ads[1] + " --output=" + pruned + "x");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("needs an HSM adapter"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace peft
