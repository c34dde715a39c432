// stories260K (a real pretrained llama2.c model) imported into the Hugging
// Face layout reproduces llama2.c run.c: greedy tokens for every reference
// case, logits of the first 8 positions within 1e-4, and the float64
// teacher-forced NLLs within 1e-4. Also checks the q/k permutation alone and
// the importer's errors.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "models/generate.h"
#include "models/llama2c.h"
#include "models/model_io.h"
#include "tests/testing/assets.h"

namespace peft::models {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class Stories260KTest : public ::testing::Test {
 protected:
  void SetUp() override {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
    absl::StatusOr<std::shared_ptr<CausalLm>> lm = import_llama2c(assets_ + "/llama2c_stories260K/stories260K.bin");
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = *lm;
  }
  std::string assets_;
  std::shared_ptr<CausalLm> lm_;
};

TEST_F(Stories260KTest, ConfigFromHeader) {
  const LlamaConfig& c = lm_->config().llama;
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST_F(Stories260KTest, GreedyAndLogitsMatchRunC) {
  const json ref = read_json(assets_ + "/llama2c_stories260K/reference_greedy.json");
  ASSERT_GE(ref["cases"].size(), 2u);
  for (const json& c : ref["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<int64_t> prompt = c["prompt_ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> expected = c["generated_ids"].get<std::vector<int64_t>>();
    GenerateOptions opts;
    opts.max_new_tokens = static_cast<int64_t>(expected.size());
    opts.use_config_eos = false;
    opts.stop_ids = {1};  // run.c stops when it samples BOS
    absl::StatusOr<GenerateResult> r = generate(*lm_, prompt, opts);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->generated_ids, expected);

    // Full logits of the first positions of the sequence, without the cache.
    std::vector<int64_t> seq = c["sequence_ids"].get<std::vector<int64_t>>();
    const json& first = c["full_logits_first_positions"];
    const int64_t n = static_cast<int64_t>(first.size());
    ASSERT_GT(n, 0);
    at::Tensor logits = lm_->forward(
        at::tensor(std::vector<int64_t>(seq.begin(), seq.begin() + n), at::kLong).view({1, n}), nullptr)[0];
    for (int64_t p = 0; p < n; ++p) {
      at::Tensor want = at::tensor(first[std::to_string(p)].get<std::vector<double>>(), at::kDouble);
      const double diff = (logits[p].to(at::kDouble) - want).abs().max().item<double>();
      EXPECT_LT(diff, 1e-4) << "position " << p;
    }
  }
}

TEST_F(Stories260KTest, TeacherForcedNll) {
  const json ref = read_json(assets_ + "/llama2c_stories260K/reference_teacher_forced.json");
  for (const json& c : ref["cases"]) {
    auto as_vec = [](const json& j) { return j.is_string() ? json::parse(j.get<std::string>()) : j; };
    std::vector<int64_t> ids = as_vec(c["ids"]).get<std::vector<int64_t>>();
    std::vector<double> nll = as_vec(c["per_position_nll"]).get<std::vector<double>>();
    absl::StatusOr<EvalResult> r = evaluate_sequence(*lm_, ids);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->nll.size(), nll.size());
    double worst = 0;
    for (size_t i = 0; i < nll.size(); ++i) worst = std::max(worst, std::abs(r->nll[i] - nll[i]));
    EXPECT_LT(worst, 1e-4);
    const double mean = as_vec(c["mean_nll"]).get<double>();
    EXPECT_NEAR(r->mean_nll(), mean, 1e-5);
  }
}

TEST_F(Stories260KTest, SavedDirectoryReloadsIdentically) {
  const std::string dir = testing::make_temp_dir("stories") + "/hf";
  ASSERT_TRUE(save_model(*lm_, dir).ok());
  absl::StatusOr<std::shared_ptr<CausalLm>> back = load_model(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  at::Tensor ids = at::tensor(std::vector<int64_t>{1, 403, 407, 261, 378}, at::kLong).view({1, 5});
  EXPECT_TRUE(at::equal(lm_->forward(ids, nullptr), (*back)->forward(ids, nullptr)));
  EXPECT_TRUE((*back)->config().llama.tie_word_embeddings);
}

TEST(PermuteRotaryRows, InterleavedPairsBecomeHalves) {
  // One head of size 4 over 1 input: rows (a0, b0, a1, b1) -> (a0, a1, b0, b1).
  at::Tensor w = at::tensor(std::vector<float>{10, 11, 20, 21}).view({4, 1});
  at::Tensor p = permute_rotary_rows(w, 1);
  EXPECT_TRUE(at::equal(p.view({4}), at::tensor(std::vector<float>{10, 20, 11, 21})));
  // Two heads permute independently.
  at::Tensor w2 = at::arange(8, at::kFloat).view({8, 1});
  EXPECT_TRUE(at::equal(permute_rotary_rows(w2, 2).view({8}), at::tensor(std::vector<float>{0, 2, 1, 3, 4, 6, 5, 7})));
}

TEST(ImportLlama2c, RejectsBadFiles) {
  const std::string dir = testing::make_temp_dir("l2c");
  auto write = [&](const std::string& name, const std::vector<int32_t>& words) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(words.data()), words.size() * 4);
    return dir + "/" + name;
  };
  EXPECT_EQ(import_llama2c(dir + "/missing.bin").status().code(), absl::StatusCode::kNotFound);
  absl::Status s = import_llama2c(write("short.bin", {1, 2})).status();
  EXPECT_NE(s.message().find("too short"), std::string::npos) << s;
  s = import_llama2c(write("truncated.bin", {64, 172, 5, 8, 4, 512, 512, 0, 0})).status();
  EXPECT_NE(s.message().find("header implies"), std::string::npos) << s;
  s = import_llama2c(write("heads.bin", {64, 172, 5, 7, 4, 512, 512})).status();
  EXPECT_NE(s.message().find("inconsistent head counts"), std::string::npos) << s;
  s = import_llama2c(write("v1.bin", {0x616b3432, 1, 64, 172, 5, 8, 4})).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented) << s;
}

// Found by fuzz/llama2c_checkpoint_fuzz.cc: a NaN or infinite weight was
// imported (and `peft convert` saved a model that every later load refuses).
// Each tensor is now checked as it is read, as load_model does.
TEST(ImportLlama2c, NonFiniteWeightIsRefused) {
  const std::string dir = testing::make_temp_dir("l2c_nan");
  // dim 4, hidden 8, 1 layer, 1 head, 1 kv head, vocab 8 (shared), seq_len 4.
  const int32_t header[7] = {4, 8, 1, 1, 1, 8, 4};
  const int64_t weights = 8 * 4 + (2 * 4 + 2 * 16 + 2 * 16 + 3 * 4 * 8) + 4;
  auto write = [&](const std::string& name, int64_t bad_index, float bad_value) {
    std::vector<float> w(weights, 0.01f);
    if (bad_index >= 0) w[bad_index] = bad_value;
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    out.write(reinterpret_cast<const char*>(w.data()), w.size() * 4);
    return dir + "/" + name;
  };
  ASSERT_TRUE(import_llama2c(write("ok.bin", -1, 0.0f)).ok());
  absl::Status s = import_llama2c(write("nan.bin", 3, std::nanf(""))).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("token_embedding_table holds NaN or infinite values"), std::string::npos) << s;
  s = import_llama2c(write("inf.bin", weights - 1, -INFINITY)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("rms_final_weight holds NaN or infinite values"), std::string::npos) << s;
}

}  // namespace
}  // namespace peft::models
