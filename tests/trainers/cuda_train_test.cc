// train() on CUDA (tags = ["gpu"]; skipped where no CUDA device is
// available): a tiny LLaMA with LoRA learns under bf16 autocast on cuda:0;
// fp32 training on CUDA ends with adapter weights within 1e-3 (relative to
// the largest value) of the same run on the CPU; and a run resumed from a
// checkpoint (LoRA dropout, so the CUDA generator matters) ends bitwise equal
// to the uninterrupted one.
//
// The model and tokenizer are written by the test: a seeded tiny LLaMA
// (tests/testing/tiny_models.h) with a 259-token llama2.c tokenizer.bin
// (<unk>, BOS, EOS, the 256 byte pieces), so no shared assets are needed.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "models/model_io.h"
#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft {
namespace {

namespace fs = std::filesystem;

class CudaTrainTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!torch::cuda::is_available()) return;
    work_ = testing::make_temp_dir("cuda_train");
    models::ModelConfig config = testing::tiny_llama_config();
    config.llama.vocab_size = 259;
    std::shared_ptr<models::CausalLm> lm = testing::tiny_model(config, 7);
    ASSERT_TRUE(models::save_model(*lm, work_ + "/base").ok());
    testing::write_byte_tokenizer(work_ + "/base/tokenizer.bin");
    // Short sentences from a small grammar: learnable in a few steps.
    const char* const who[] = {"the cat", "a dog", "my bird", "the fox"};
    const char* const what[] = {"sat on the mat", "ran to the tree", "ate the bread", "saw the moon"};
    std::ofstream train(work_ + "/train.txt"), valid(work_ + "/valid.txt");
    for (int i = 0; i < 400; ++i) train << who[(i * 7) % 4] << " " << what[(i * 3) % 4] << ".\n";
    for (int i = 0; i < 40; ++i) valid << who[i % 4] << " " << what[(i / 4) % 4] << ".\n";
  }

  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }

  // The base recipe plus `overrides`, into run directory `name`.
  static proto::Recipe recipe(const std::string& name, const std::vector<std::string>& overrides) {
    proto::Recipe r = *trainers::parse_recipe(absl::StrFormat(R"(
model: "%s/base"
output_dir: "%s/%s"
data { train_file: "%s/train.txt" validation_file: "%s/valid.txt" seq_len: 32 }
adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.002 }
training { steps: 20 micro_batch: 4 threads: 2 device: CUDA }
eval { max_batches: 2 }
logging { progress_bar: false }
)",
                                                              work_, work_, name, work_, work_));
    for (const std::string& o : overrides) EXPECT_TRUE(trainers::apply_override(&r, o).ok()) << o;
    return r;
  }

  static trainers::TrainOptions quiet() {
    trainers::TrainOptions o;
    o.log = [](const std::string&) {};
    return o;
  }

  static std::string work_;
};
std::string CudaTrainTest::work_;

TEST_F(CudaTrainTest, Bf16LossFallsOnCuda) {
  absl::StatusOr<trainers::TrainSummary> s =
      trainers::train(recipe("bf16", {"training.precision=BF16", "optimizer.lr=0.01"}), quiet());
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->steps, 20);
  EXPECT_LT(s->final_train_loss, s->first_train_loss - 0.1) << s->first_train_loss << " -> " << s->final_train_loss;
  EXPECT_LT(s->final_eval_loss, s->initial_eval_loss) << s->initial_eval_loss << " -> " << s->final_eval_loss;
  std::ifstream in(work_ + "/bf16/summary.json");
  const nlohmann::json summary = nlohmann::json::parse(in);
#if defined(PEFT_WITH_CUDA)
  EXPECT_GT(summary.value("peak_cuda_mb", 0.0), 0.0) << summary.dump();
#endif
}

TEST_F(CudaTrainTest, Fp32OnCudaMatchesTheCpu) {
  absl::StatusOr<trainers::TrainSummary> gpu = trainers::train(recipe("fp32_cuda", {}), quiet());
  ASSERT_TRUE(gpu.ok()) << gpu.status();
  absl::StatusOr<trainers::TrainSummary> cpu = trainers::train(recipe("fp32_cpu", {"training.device=CPU"}), quiet());
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto a = io::SafetensorsFile::open(work_ + "/fp32_cpu/adapter/adapter_model.safetensors");
  auto b = io::SafetensorsFile::open(work_ + "/fp32_cuda/adapter/adapter_model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
  double worst = 0, scale = 0, trained = 0;
  for (const io::TensorInfo& t : (*a)->tensors()) {
    const at::Tensor x = *(*a)->load(t.name), y = *(*b)->load(t.name);
    worst = std::max(worst, (x - y).abs().max().item<double>());
    scale = std::max(scale, x.abs().max().item<double>());
    // lora_B starts at zero: its size is what training did.
    if (t.name.find("lora_B") != std::string::npos) trained = std::max(trained, x.abs().max().item<double>());
  }
  EXPECT_GT(trained, 1e-3) << "the adapters did not train";
  EXPECT_LE(worst, 1e-3 * scale) << "largest adapter value " << scale;
  EXPECT_NEAR(gpu->final_train_loss, cpu->final_train_loss, 1e-3 * cpu->final_train_loss);
}

TEST_F(CudaTrainTest, ResumedRunIsBitwiseEqualOnCuda) {
  const std::vector<std::string> o = {"training.steps=8", "checkpoint.every_steps=4", "checkpoint.keep_last=5",
                                      "adapters.0.lora.dropout=0.1"};
  ASSERT_TRUE(trainers::train(recipe("straight", o), quiet()).ok());
  // A second run directory holding only the step-4 checkpoint, resumed.
  const std::string ckpt = "/checkpoints/step-00000004";
  fs::create_directories(work_ + "/resumed/checkpoints");
  fs::copy(work_ + "/straight" + ckpt, work_ + "/resumed" + ckpt, fs::copy_options::recursive);
  trainers::TrainOptions resume = quiet();
  resume.resume = true;
  absl::StatusOr<trainers::TrainSummary> s = trainers::train(recipe("resumed", o), resume);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->resumed_from_step, 4);
  auto a = io::SafetensorsFile::open(work_ + "/straight/adapter/adapter_model.safetensors");
  auto b = io::SafetensorsFile::open(work_ + "/resumed/adapter/adapter_model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  auto rng = io::SafetensorsFile::open(work_ + "/straight" + ckpt + "/trainable.safetensors");
  ASSERT_TRUE(rng.ok());
  EXPECT_NE((*rng)->find("__rng_cuda__"), nullptr) << "the checkpoint lacks the CUDA generator";
  for (const io::TensorInfo& t : (*a)->tensors()) {
    EXPECT_TRUE(at::equal(*(*a)->load(t.name), *(*b)->load(t.name))) << t.name;
  }
}

}  // namespace
}  // namespace peft
