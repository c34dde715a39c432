// `peft export --format=gguf` end to end on stories260K: a merged model and a
// LoRA adapter written by the binary and read back by the test reader, and
// the error contract for bad input - non-zero exit, a message naming the
// problem, and no output file (nor a leftover temp file).
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
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// `prefix` runs in the shell before the binary (ulimit, trap).
testing::ProgramRun peft_cli(const std::vector<std::string>& args, const std::string& prefix = "") {
  const std::string tmp = testing::make_temp_dir("ecli");
  std::string cmd = prefix + "exec " + testing::shell_quote(testing::runfile("examples/peft"));
  for (const std::string& a : args) cmd += " " + testing::shell_quote(a);
  cmd = "(" + cmd + ") >" + tmp + "/o 2>" + tmp + "/e";
  const int status = std::system(cmd.c_str());
  testing::ProgramRun r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = testing::slurp(tmp + "/o");
  r.err = testing::slurp(tmp + "/e");
  return r;
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

class ExportCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) return;
    base_ = testing::make_temp_dir("ebase") + "/stories260K";
    auto lm = models::import_llama2c(assets_ + "/llama2c_stories260K/stories260K.bin");
    ASSERT_TRUE(lm.ok());
    models::SaveOptions so;
    so.extra_files = {{assets_ + "/llama2c_stories260K/tok512.model", "tokenizer.model"}};
    ASSERT_TRUE(models::save_model(**lm, base_, so).ok());
  }
  void SetUp() override {
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
    out_ = testing::make_temp_dir("eout");
  }
  // An adapter of `config` (text format) with perturbed trainable tensors.
  static std::string save_adapter(const std::string& config) {
    auto lm = models::load_model(base_);
    PeftModel pm(*lm);
    proto::AdapterConfig c;
    EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(config, &c));
    EXPECT_TRUE(pm.add_adapter(c, 1).ok());
    pm.freeze_base_();
    torch::NoGradGuard ng;
    at::manual_seed(3);
    for (auto& [name, p] : pm.trainable_parameters()) p.add_(at::randn_like(p) * 0.05);
    const std::string dir = testing::make_temp_dir("eadapter") + "/adapter";
    EXPECT_TRUE(pm.save_adapter(dir, "default").ok());
    return dir;
  }

  static std::string assets_, base_;
  std::string out_;
};
std::string ExportCliTest::assets_, ExportCliTest::base_;

TEST_F(ExportCliTest, MergedModelAndLoraAdapter) {
  const std::string ad = save_adapter(R"(lora { r: 4 alpha: 8 } target { preset: "all_linear" })");
  testing::ProgramRun base =
      peft_cli({"export", "--model=" + base_, "--format=gguf", "--output=" + out_ + "/base.gguf"});
  ASSERT_EQ(base.code, 0) << base.err;
  const json info = json::parse(base.out);
  EXPECT_EQ(info["type"], "model");
  EXPECT_EQ(info["tensors"], 47);
  EXPECT_EQ(info["dtype"], "f32");
  EXPECT_TRUE(info.contains("peak_rss_during_export_mb"));

  testing::ProgramRun merged = peft_cli({"export", "--model=" + base_, "--adapter=" + ad, "--format=gguf",
                                         "--output=" + out_ + "/merged.gguf", "--dtype=q8_0"});
  ASSERT_EQ(merged.code, 0) << merged.err;
  testing::ProgramRun lora = peft_cli({"export", "--model=" + base_, "--adapter=" + ad, "--adapter_only",
                                       "--format=gguf", "--output=" + out_ + "/lora.gguf"});
  ASSERT_EQ(lora.code, 0) << lora.err;
  EXPECT_EQ(json::parse(lora.out)["modules"], 35);
  EXPECT_EQ(entries(out_), (std::vector<std::string>{"base.gguf", "lora.gguf", "merged.gguf"}));

  const testing::GgufFile b = testing::read_gguf(out_ + "/base.gguf");
  const testing::GgufFile m = testing::read_gguf(out_ + "/merged.gguf");
  const testing::GgufFile l = testing::read_gguf(out_ + "/lora.gguf");
  ASSERT_EQ(b.error, "");
  ASSERT_EQ(m.error, "");
  ASSERT_EQ(l.error, "");
  EXPECT_EQ(b.get("general.name")->s, "stories260K");
  EXPECT_EQ(b.get("tokenizer.ggml.model")->s, "llama");
  EXPECT_EQ(m.get("general.file_type")->u, 7u);
  EXPECT_EQ(m.tensor("blk.0.attn_q.weight")->type, 8u);
  EXPECT_EQ(l.get("general.type")->s, "adapter");
  EXPECT_EQ(l.get("adapter.lora.alpha")->f, 8.0);
  EXPECT_EQ(l.tensors.size(), 70u);
  // base + alpha/r B A is the merged weight (q8_0: within its step).
  const at::Tensor a = at::tensor(l.values("blk.2.attn_q.weight.lora_a")).reshape({4, 64});
  const at::Tensor bb = at::tensor(l.values("blk.2.attn_q.weight.lora_b")).reshape({64, 4});
  const at::Tensor want = at::tensor(b.values("blk.2.attn_q.weight")).reshape({64, 64}) + 2.0 * at::matmul(bb, a);
  const at::Tensor got = at::tensor(m.values("blk.2.attn_q.weight")).reshape({64, 64});
  EXPECT_LT((got - want).abs().max().item<double>(), want.abs().max().item<double>() / 127.0);
}

TEST_F(ExportCliTest, ExistingOutputNeedsOverwrite) {
  const std::string path = out_ + "/m.gguf";
  std::ofstream(path) << "keep me";
  testing::ProgramRun r = peft_cli({"export", "--model=" + base_, "--format=gguf", "--output=" + path});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already exists (use --overwrite"), std::string::npos) << r.err;
  EXPECT_EQ(testing::slurp(path), "keep me");
  r = peft_cli({"export", "--model=" + base_, "--format=gguf", "--output=" + path, "--overwrite"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(testing::slurp(path).substr(0, 4), "GGUF");
  EXPECT_EQ(entries(out_), std::vector<std::string>{"m.gguf"});
}

TEST_F(ExportCliTest, UnknownArchitectureIsRefused) {
  const std::string dir = testing::make_temp_dir("ephi3");
  std::ofstream(dir + "/config.json") << R"({"model_type": "phi3", "vocab_size": 512, "hidden_size": 64})";
  fs::copy_file(base_ + "/tokenizer.model", dir + "/tokenizer.model");
  testing::ProgramRun r = peft_cli({"export", "--model=" + dir, "--format=gguf", "--output=" + out_ + "/x.gguf"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("model_type 'phi3' is not supported"), std::string::npos) << r.err;
  EXPECT_TRUE(entries(out_).empty());
}

TEST_F(ExportCliTest, AdaptersWithoutALoraFormAreRefused) {
  const std::string compacter = save_adapter(R"(compacter { phm_dim: 4 reduction_factor: 8 })");
  testing::ProgramRun r = peft_cli({"export", "--model=" + base_, "--adapter=" + compacter, "--adapter_only",
                                    "--format=gguf", "--output=" + out_ + "/c.gguf"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("compacter, which llama.cpp cannot load as a LoRA adapter"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("cannot be merged"), std::string::npos) << r.err;
  const std::string hsm = save_adapter(R"(hsm { target_hidden: 48 bottleneck: 8 })");
  r = peft_cli({"export", "--model=" + base_, "--adapter=" + hsm, "--adapter_only", "--format=gguf",
                "--output=" + out_ + "/h.gguf"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--prune"), std::string::npos) << r.err;
  const std::string nora = save_adapter(R"(nora { r: 8 r_inner: 4 } target { preset: "attention" })");
  r = peft_cli({"export", "--model=" + base_, "--adapter=" + nora, "--adapter_only", "--format=gguf",
                "--output=" + out_ + "/n.gguf"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("merge it into the base and export the merged model"), std::string::npos) << r.err;
  // ... which works.
  r = peft_cli({"export", "--model=" + base_, "--adapter=" + nora, "--format=gguf", "--output=" + out_ + "/n.gguf"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(entries(out_), std::vector<std::string>{"n.gguf"});
}

// A write that fails part-way, as on a full disk (here the file size limit
// of the shell: SIGXFSZ ignored, so write() fails with EFBIG): a message
// naming the file, and neither the output nor a temp file remains.
TEST_F(ExportCliTest, FailedWriteLeavesNoFile) {
  const std::string path = out_ + "/big.gguf";
  testing::ProgramRun r =
      peft_cli({"export", "--model=" + base_, "--format=gguf", "--output=" + path}, "trap '' XFSZ; ulimit -f 256; ");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("write failed for '" + path + "'"), std::string::npos) << r.err;
  EXPECT_TRUE(entries(out_).empty());
}

TEST_F(ExportCliTest, BadFlags) {
  testing::ProgramRun r = peft_cli({"export", "--model=" + base_, "--format=onnx", "--output=" + out_ + "/x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--format=onnx is not supported (supported: gguf)"), std::string::npos) << r.err;
  r = peft_cli({"export", "--model=" + base_, "--format=gguf", "--dtype=q4_0", "--output=" + out_ + "/x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--dtype: unknown GGUF dtype 'q4_0'"), std::string::npos) << r.err;
  r = peft_cli({"export", "--model=" + base_, "--format=gguf", "--adapter_only", "--output=" + out_ + "/x"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--adapter_only needs --adapter"), std::string::npos) << r.err;
  r = peft_cli({"export", "--model=" + base_, "--format=gguf", "--output=" + out_ + "/no/such/dir/x.gguf"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  r = peft_cli({"export", "--model=" + base_, "--output=" + out_ + "/x"});
  EXPECT_EQ(r.code, 2);  // --format is required
  EXPECT_TRUE(entries(out_).empty());
}

}  // namespace
}  // namespace peft
