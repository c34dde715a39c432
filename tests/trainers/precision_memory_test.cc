// The trainer's precision choice and memory plan: training.precision AUTO
// follows the faster of the injected fp32/bf16 matmul rates, an explicit
// BF16 that is slower warns with both rates; training.base_dtype BF16 needs
// adapters and trains like the float32 base holding the same bf16 values;
// `--dry_run` prints the plan, and the plan is within 15% of the peak
// resident memory measured by `peft train` on two model sizes.
#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/model_io.h"
#include "tests/testing/assets.h"
#include "tests/testing/safetensors_compare.h"
#include "tests/testing/tiny_models.h"
#include "trainers/memory_plan.h"
#include "trainers/precision.h"
#include "trainers/recipe.h"
#include "trainers/trainer.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

TEST(PrecisionTest, AutoTakesTheFasterAndBf16ThatIsSlowerWarns) {
  using P = proto::PrecisionChoice;
  const trainers::MatmulRates avx2{150, 5}, bf16_fast{150, 300};
  EXPECT_FALSE(trainers::choose_precision(P::AUTO, avx2).bf16);
  EXPECT_TRUE(trainers::choose_precision(P::AUTO, bf16_fast).bf16);
  EXPECT_EQ(trainers::choose_precision(P::AUTO, avx2).reason,
            "precision AUTO: computing in float32 (bf16 matmul 5 GFLOP/s, float32 150 GFLOP/s)");
  const trainers::PrecisionDecision slow = trainers::choose_precision(P::BF16, avx2);
  EXPECT_TRUE(slow.bf16);  // an explicit choice is kept
  EXPECT_NE(slow.warning.find("BF16 is slower than float32 on this machine (bf16 matmul 5 GFLOP/s, float32 150"),
            std::string::npos)
      << slow.warning;
  EXPECT_TRUE(trainers::choose_precision(P::BF16, bf16_fast).warning.empty());
  EXPECT_FALSE(trainers::choose_precision(P::FP32, bf16_fast).bf16);
}

TEST(PrecisionTest, MeasuredRatesArePositive) {
  const trainers::MatmulRates r = trainers::measure_matmul_rates(at::kCPU);
  std::printf("matmul: float32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n", r.fp32_gflops, r.bf16_gflops);
  EXPECT_GT(r.fp32_gflops, 0.1);
  EXPECT_GT(r.bf16_gflops, 0.01);
}

TEST(MemoryPlanTest, PartsFollowTheSettings) {
  trainers::MemoryPlanInput in;
  in.config = testing::tiny_llama_config(false);
  in.config.llama.vocab_size = 32000;
  in.config.llama.hidden_size = 512;
  in.config.llama.intermediate_size = 1376;
  in.config.llama.num_hidden_layers = 8;
  in.trainable_parameters = 1000000;
  in.micro_batch = 4;
  in.seq_len = 256;
  auto part = [](const trainers::MemoryPlan& p, const std::string& prefix) {
    for (const auto& [name, bytes] : p.parts) {
      if (name.rfind(prefix, 0) == 0) return bytes;
    }
    return -1.0;
  };
  const trainers::MemoryPlan fp32 = trainers::plan_memory(in);
  EXPECT_DOUBLE_EQ(part(fp32, "AdamW state"), 8e6);
  EXPECT_DOUBLE_EQ(part(fp32, "gradients"), 4e6);
  in.base_dtype = at::kBFloat16;
  const trainers::MemoryPlan bf16 = trainers::plan_memory(in);
  const double params = models::estimated_parameters(in.config);
  EXPECT_NEAR(part(fp32, "base weights") - part(bf16, "base weights"), params * 2, 1);
  // The weights and the RoPE cos and sin tables the model keeps (float32
  // [positions, head_dim] each), not the float64 tables they are built from.
  const double rope = 8.0 * static_cast<double>(in.config.llama.max_position_embeddings) *
                      static_cast<double>(in.config.llama.head_dim);
  EXPECT_GT(rope, 0);
  EXPECT_NEAR(part(fp32, "base weights"), params * 4 + rope, 1);
  in.activation_checkpointing = true;
  const trainers::MemoryPlan ckpt = trainers::plan_memory(in);
  EXPECT_LT(part(ckpt, "activations"), 0.5 * part(bf16, "activations"));
  // Activations grow with the micro-batch.
  in.activation_checkpointing = false;
  in.micro_batch = 8;
  EXPECT_GT(part(trainers::plan_memory(in), "activations"), 1.9 * part(bf16, "activations"));
  EXPECT_NE(fp32.table().find("expected peak"), std::string::npos);
}

// A tiny LLaMA with a byte tokenizer and a small text file.
class TrainerPrecisionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    work_ = testing::make_temp_dir("prec");
    models::ModelConfig config = testing::tiny_llama_config();
    config.llama.vocab_size = 259;
    ASSERT_TRUE(models::save_model(*testing::tiny_model(config, 7), work_ + "/base").ok());
    testing::write_byte_tokenizer(work_ + "/base/tokenizer.bin");
    std::ofstream train(work_ + "/train.txt");
    for (int i = 0; i < 200; ++i) train << "the cat sat on the mat number " << i % 7 << ".\n";
  }

  static proto::Recipe recipe(const std::string& name) {
    absl::StatusOr<proto::Recipe> r = trainers::parse_recipe(absl::StrFormat(R"(
model: "%s/base"
output_dir: "%s/%s"
data { train_file: "%s/train.txt" seq_len: 32 }
adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.01 }
training { steps: 3 micro_batch: 4 threads: 1 seed: 3 }
eval { max_batches: 1 }
logging { progress_bar: false }
)",
                                                                             work_, work_, name, work_));
    EXPECT_TRUE(r.ok()) << r.status();
    return *r;
  }

  static proto::Recipe with_precision(proto::Recipe r, proto::PrecisionChoice::Precision p) {
    r.mutable_training()->set_precision(p);
    return r;
  }

  static std::string work_;
};
std::string TrainerPrecisionTest::work_;

TEST_F(TrainerPrecisionTest, AutoFollowsTheInjectedRates) {
  for (const bool bf16_faster : {false, true}) {
    std::string log;
    trainers::TrainOptions o;
    o.dry_run = true;
    o.log = [&](const std::string& s) { log += s + "\n"; };
    o.matmul_rates = bf16_faster ? trainers::MatmulRates{100, 200} : trainers::MatmulRates{100, 4};
    absl::StatusOr<trainers::TrainSummary> s =
        trainers::train(with_precision(recipe("auto"), proto::PrecisionChoice::AUTO), o);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->bf16, bf16_faster);
    EXPECT_NE(log.find(bf16_faster ? "precision AUTO: computing in bf16" : "precision AUTO: computing in float32"),
              std::string::npos)
        << log;
    EXPECT_NE(log.find("memory plan (peak resident memory of the run):"), std::string::npos) << log;
    EXPECT_NE(log.find("expected peak"), std::string::npos) << log;
  }
  std::string log;
  trainers::TrainOptions o;
  o.dry_run = true;
  o.log = [&](const std::string& s) { log += s + "\n"; };
  o.matmul_rates = trainers::MatmulRates{100, 4};
  absl::StatusOr<trainers::TrainSummary> s =
      trainers::train(with_precision(recipe("bf16"), proto::PrecisionChoice::BF16), o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_TRUE(s->bf16);
  EXPECT_NE(log.find("warning: training.precision BF16 is slower than float32 on this machine (bf16 matmul 4 "
                     "GFLOP/s, float32 100 GFLOP/s)"),
            std::string::npos)
      << log;
}

TEST_F(TrainerPrecisionTest, Bf16BaseNeedsAdapters) {
  proto::Recipe r = recipe("full");
  r.mutable_training()->set_base_dtype(proto::StorageDtype::BF16);
  r.clear_adapters();
  trainers::TrainOptions o;
  o.dry_run = true;
  absl::StatusOr<trainers::TrainSummary> s = trainers::train(r, o);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("training.base_dtype BF16 stores a frozen base, but the recipe has no adapters"),
            std::string::npos)
      << s.status();
}

// A model directory holding only config.json (not downloaded yet): the dry
// run prints the plan from the config and ends there. Mistral-7B's real
// config: a plan either way (it fits this machine with a bf16 base, or is
// refused with the plan when it does not).
TEST_F(TrainerPrecisionTest, ConfigOnlyDirectoryGetsAPlan) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << "needs ../shared/assets";
  const std::string dir = work_ + "/mistral7b";
  fs::create_directories(dir);
  fs::copy_file(assets + "/configs/mistral-7b-v0.1.json", dir + "/config.json", fs::copy_options::overwrite_existing);
  for (const auto base : {proto::StorageDtype::BF16, proto::StorageDtype::FP32}) {
    proto::Recipe r = recipe("m7b");
    r.set_model(dir);
    r.set_tokenizer(work_ + "/base/tokenizer.bin");
    r.mutable_data()->set_seq_len(512);
    r.mutable_training()->set_micro_batch(1);
    r.mutable_training()->set_base_dtype(base);
    r.mutable_training()->set_activation_checkpointing(true);
    std::string log;
    trainers::TrainOptions o;
    o.dry_run = true;
    o.log = [&](const std::string& s) { log += s + "\n"; };
    absl::StatusOr<trainers::TrainSummary> s = trainers::train(r, o);
    const std::string all = log + (s.ok() ? "" : std::string(s.status().message()));
    EXPECT_NE(all.find("expected peak"), std::string::npos) << all;
    if (s.ok()) {
      EXPECT_NE(log.find("holds no weights (*.safetensors), so the plan above comes from its config.json alone"),
                std::string::npos)
          << log;
      EXPECT_GT(s->planned_peak_mb, 14000);          // 7.2B parameters in bf16 at least
      EXPECT_EQ(s->trainable_parameters, 10485760);  // LoRA r=4 on the 7 projections of 32 blocks
    } else {
      EXPECT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted) << s.status();
    }
    if (base == proto::StorageDtype::FP32) {
      EXPECT_NE(all.find("base weights (Float)"), std::string::npos) << all;
    }
  }
}

// A bf16-stored base trains as the float32 base holding the same values (a
// checkpoint saved in bf16, loaded both ways): the adapters end equal.
TEST_F(TrainerPrecisionTest, Bf16BaseTrainsLikeTheFloat32BaseWithTheSameValues) {
  {
    absl::StatusOr<std::shared_ptr<models::CausalLm>> lm = models::load_model(work_ + "/base");
    ASSERT_TRUE(lm.ok());
    models::SaveOptions so;
    so.dtype = at::kBFloat16;
    so.extra_files = {{work_ + "/base/tokenizer.bin", "tokenizer.bin"}};
    ASSERT_TRUE(models::save_model(**lm, work_ + "/base_bf16", so).ok());
  }
  std::vector<std::string> runs;
  for (const auto dtype : {proto::StorageDtype::FP32, proto::StorageDtype::BF16}) {
    proto::Recipe r = recipe(absl::StrCat("b_", proto::StorageDtype::Dtype_Name(dtype)));
    r.mutable_training()->set_base_dtype(dtype);
    r.set_model(work_ + "/base_bf16");
    trainers::TrainOptions o;
    o.log = [](const std::string&) {};
    absl::StatusOr<trainers::TrainSummary> s = trainers::train(r, o);
    ASSERT_TRUE(s.ok()) << s.status();
    runs.push_back(s->run_dir + "/adapter/adapter_model.safetensors");
  }
  const testing::SafetensorsDifference d = testing::compare_safetensors(runs[0], runs[1]);
  ASSERT_EQ(d.error, "");
  EXPECT_GT(d.max_abs_value, 1e-3) << "the adapters did not train";
  EXPECT_LE(d.max_abs_difference, 1e-5 * d.max_abs_value) << "largest adapter value " << d.max_abs_value;
}

// `peft train` on two model sizes: the plan printed by the run against the
// peak resident memory it measured (summary.json).

struct CliRun {
  int code;
  std::string err;
};

CliRun run_cli(const std::string& args) {
  const std::string tmp = testing::make_temp_dir("plan_cli");
  const int status =
      std::system((testing::runfile("examples/peft") + " " + args + " >" + tmp + "/o 2>" + tmp + "/e").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, testing::slurp(tmp + "/e")};
}

TEST(PlanAgainstPeakTest, PlanIsWithin15PercentOfTheMeasuredPeak) {
  if (testing::address_sanitizer()) GTEST_SKIP() << "peak RSS under AddressSanitizer is not the plan's";
  const std::string work = testing::make_temp_dir("plan");
  {
    std::ofstream train(work + "/train.txt");
    for (int i = 0; i < 400; ++i) train << "a line of training text, number " << i << ", for the memory plan.\n";
  }
  struct Size {
    const char* name;
    const char* init;
    const char* training;
  };
  const Size sizes[] = {
      {"small", "--hidden_size=384 --num_layers=6 --num_heads=6 --vocab_size=32000 --max_positions=512",
       "seq_len: 256 } training { micro_batch: 4"},
      {"medium", "--hidden_size=640 --num_layers=6 --num_heads=10 --vocab_size=32000 --max_positions=512",
       "seq_len: 384 } training { micro_batch: 2"},
  };
  for (const Size& size : sizes) {
    SCOPED_TRACE(size.name);
    const std::string model = work + "/" + size.name;
    CliRun r = run_cli(absl::StrCat("init --output=", model, " ", size.init));
    ASSERT_EQ(r.code, 0) << r.err;
    testing::write_byte_tokenizer(model + "/tokenizer.bin");
    std::ofstream(work + "/" + size.name + ".textproto")
        << absl::StrFormat(R"(
model: "%s"
output_dir: "%s/run_%s"
data { train_file: "%s/train.txt" %s steps: 1 threads: 2 }
adapters { name: "default" lora { r: 16 alpha: 16 } target { preset: "all_linear" } }
eval { max_batches: 1 }
logging { progress_bar: false }
)",
                           model, work, size.name, work, size.training);
    r = run_cli(absl::StrCat("train --recipe=", work, "/", size.name, ".textproto"));
    ASSERT_EQ(r.code, 0) << r.err;
    const json summary = json::parse(testing::slurp(absl::StrCat(work, "/run_", size.name, "/summary.json")));
    const double planned = summary["planned_peak_mb"].get<double>(), peak = summary["peak_rss_mb"].get<double>();
    std::printf("%s: planned %.0f MB, measured peak %.0f MB (%+.1f%%)\n", size.name, planned, peak,
                100.0 * (planned - peak) / peak);
    EXPECT_NEAR(planned / peak, 1.0, 0.15) << "planned " << planned << " MB, measured " << peak << " MB";
  }
}

}  // namespace
}  // namespace peft
