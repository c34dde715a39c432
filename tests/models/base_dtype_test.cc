// A frozen base stored in bf16 (models::LoadOptions::matrices_only, the
// trainer's training.base_dtype): weight matrices in bf16, norms and biases
// in float32, a float32 residual stream. With float32 compute each
// projection widens its weight for the product (peft/adaptable_linear.cc),
// so logits and adapter gradients equal those of a float32 model holding the
// same bf16-rounded weights; the base's resident memory halves.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/model_io.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"
#include "trainers/loss.h"
#include "trainers/process_stats.h"

namespace peft {
namespace {

using models::CausalLm;

proto::AdapterConfig adapter(const std::string& text) {
  proto::AdapterConfig c;
  EXPECT_TRUE(google::protobuf::TextFormat::ParseFromString(text, &c)) << text;
  return c;
}

// VmRSS of this process in bytes.
// Rounds the weight matrices of a float32 model to bf16 in place (the values
// a bf16-stored base holds).
void round_matrices_(CausalLm& lm) {
  torch::NoGradGuard no_grad;
  for (at::Tensor& p : lm.module().parameters()) {
    if (p.dim() >= 2) p.copy_(p.to(at::kBFloat16).to(at::kFloat));
  }
}

// Non-zero adapter outputs: every adapter parameter gets seeded values.
void randomise_adapters_(PeftModel& pm) {
  torch::NoGradGuard no_grad;
  int i = 0;
  for (auto& [name, p] : pm.trainable_parameters()) {
    p.copy_(at::randn(p.sizes(), at::TensorOptions().dtype(p.scalar_type())) * 0.05 + 0.001 * (i++));
  }
}

struct Case {
  const char* name;
  models::ModelConfig config;
  const char* adapter;
};

TEST(BaseDtypeTest, Bf16StoredBaseComputesLikeTheRoundedFloat32Base) {
  const std::vector<Case> cases = {
      {"llama untied, LoRA", testing::tiny_llama_config(false),
       R"(name: "a" lora { r: 4 alpha: 8 } target { preset: "all_linear" })"},
      {"llama tied, LoRA", testing::tiny_llama_config(true),
       R"(name: "a" lora { r: 4 alpha: 8 } target { preset: "all_linear" })"},
      {"gpt2, LoRA", testing::tiny_gpt2_config(),
       R"(name: "a" lora { r: 4 alpha: 8 } target { preset: "all_linear" })"},
      {"llama, NoRA", testing::tiny_llama_config(false),
       R"(name: "a" nora { r: 8 r_inner: 4 } target { preset: "attention" })"},
      {"llama, Bone", testing::tiny_llama_config(false), R"(name: "a" bone { r: 4 } target { preset: "attention" })"},
  };
  const std::string dir = testing::make_temp_dir("basedt");
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    SCOPED_TRACE(c.name);
    const std::string model_dir = dir + "/m" + std::to_string(k);
    ASSERT_TRUE(models::save_model(*testing::tiny_model(c.config, 11), model_dir).ok());

    models::LoadOptions narrow;
    narrow.dtype = at::kBFloat16;
    narrow.matrices_only = true;
    absl::StatusOr<std::shared_ptr<CausalLm>> a = models::load_model(model_dir, narrow);
    absl::StatusOr<std::shared_ptr<CausalLm>> b = models::load_model(model_dir);
    ASSERT_TRUE(a.ok() && b.ok());
    round_matrices_(**b);
    for (const models::HfParameter& p : (*a)->hf_parameters()) {
      EXPECT_EQ(p.tensor.scalar_type(), p.tensor.dim() >= 2 ? at::kBFloat16 : at::kFloat) << p.hf_name;
    }

    PeftModel pa(*a), pb(*b);
    for (PeftModel* pm : {&pa, &pb}) {
      const absl::Status added = pm->add_adapter(adapter(c.adapter), 3);
      ASSERT_TRUE(added.ok()) << added;
      pm->freeze_base_();
      at::manual_seed(5);
      randomise_adapters_(*pm);
    }
    const at::Tensor ids = testing::sample_ids(c.config.vocab_size(), 2, 12, 9);
    const at::Tensor labels = testing::sample_ids(c.config.vocab_size(), 2, 12, 10);
    const at::Tensor la = (*a)->forward_hidden(ids, nullptr);
    const at::Tensor lb = (*b)->forward_hidden(ids, nullptr);
    EXPECT_EQ(la.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::allclose(la, lb, 1e-5, 1e-5)) << (la - lb).abs().max().item<double>();
    for (PeftModel* pm : {&pa, &pb}) {
      trainers::PerSampleLoss ps = trainers::causal_lm_loss(pm->model(), ids, labels);
      ps.loss.sum().backward();
    }
    std::vector<std::pair<std::string, at::Tensor>> ta = pa.trainable_parameters(), tb = pb.trainable_parameters();
    ASSERT_EQ(ta.size(), tb.size());
    ASSERT_FALSE(ta.empty());
    for (size_t i = 0; i < ta.size(); ++i) {
      ASSERT_TRUE(ta[i].second.grad().defined()) << ta[i].first;
      const at::Tensor ga = ta[i].second.grad(), gb = tb[i].second.grad();
      const double scale = gb.abs().max().item<double>() + 1e-12;
      EXPECT_LT((ga - gb).abs().max().item<double>() / scale, 1e-5) << ta[i].first;
    }
  }
}

TEST(BaseDtypeTest, TrainingAFrozenNarrowWeightIsAnError) {
  models::LoadOptions narrow;
  narrow.dtype = at::kBFloat16;
  narrow.matrices_only = true;
  const std::string dir = testing::make_temp_dir("basedt_err");
  ASSERT_TRUE(models::save_model(*testing::tiny_model(testing::tiny_llama_config(), 1), dir + "/m").ok());
  absl::StatusOr<std::shared_ptr<CausalLm>> a = models::load_model(dir + "/m", narrow);
  ASSERT_TRUE(a.ok());
  for (at::Tensor& p : (*a)->module().parameters()) p.requires_grad_(true);
  try {
    (*a)->forward_hidden(testing::sample_ids(96, 1, 4, 1), nullptr);
    FAIL() << "a trainable bf16 weight under a float32 stream must be refused";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("a trainable base must be stored in float32"), std::string::npos) << e.what();
  }
}

// ~100M parameters (vocabulary 32000, hidden 640, 12 blocks, MLP 1728).
TEST(BaseDtypeTest, Bf16StorageHalvesTheBasesResidentMemory) {
  models::ModelConfig c = testing::llama_100m_config();
  c.llama.max_position_embeddings = 256;
  const std::string dir = testing::make_temp_dir("basedt_mem") + "/m";
  {
    absl::StatusOr<std::shared_ptr<CausalLm>> lm = models::create_model(c);
    ASSERT_TRUE(lm.ok());
    models::init_weights_(**lm, 1);
    ASSERT_TRUE(models::save_model(**lm, dir).ok());
  }
  // Both models stay loaded, so that neither load reuses memory the other
  // freed: each RSS increase is that model's alone.
  std::vector<std::shared_ptr<CausalLm>> kept;
  auto resident = [&](const models::LoadOptions& o, double* param_bytes) {
    const double before = trainers::proc_status_mb("VmRSS") * 1048576.0;
    absl::StatusOr<std::shared_ptr<CausalLm>> lm = models::load_model(dir, o);
    EXPECT_TRUE(lm.ok()) << lm.status();
    const double after = trainers::proc_status_mb("VmRSS") * 1048576.0;
    *param_bytes = 0;
    for (const at::Tensor& p : (*lm)->module().parameters()) *param_bytes += static_cast<double>(p.nbytes());
    kept.push_back(*lm);
    return after - before;
  };
  double fp32_bytes = 0, bf16_bytes = 0;
  models::LoadOptions narrow;
  narrow.dtype = at::kBFloat16;
  narrow.matrices_only = true;
  const double bf16_rss = resident(narrow, &bf16_bytes);
  const double fp32_rss = resident(models::LoadOptions{}, &fp32_bytes);
  std::printf("parameters: %.0f MB float32, %.0f MB bf16; resident after load: %.0f MB, %.0f MB\n", fp32_bytes / 1e6,
              bf16_bytes / 1e6, fp32_rss / 1e6, bf16_rss / 1e6);
  EXPECT_GT(fp32_bytes, 390e6);  // ~100M parameters
  EXPECT_NEAR(bf16_bytes / fp32_bytes, 0.5, 0.01);
  // AddressSanitizer's shadow memory and quarantine of freed blocks (the
  // loader's float32 staging) add to RSS: 0.60 instead of 0.5 there.
  if (testing::address_sanitizer()) GTEST_SKIP() << "resident memory under AddressSanitizer is not the tensors'";
  EXPECT_GT(fp32_rss, 0.9 * fp32_bytes);
  EXPECT_NEAR(bf16_rss / fp32_rss, 0.5, 0.08);
}

}  // namespace
}  // namespace peft
