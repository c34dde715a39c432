// Reproduces ../shared/assets/hf_tiny/*/reference.json (independent float64
// NumPy forward passes of transformers' LLaMA and GPT-2): logits within 1e-4,
// next-token NLLs, and 20-step greedy continuations with the KV cache.
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "models/generate.h"
#include "models/model_io.h"
#include "tests/testing/assets.h"

namespace peft::models {
namespace {

using nlohmann::json;

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

class HfTinyTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfTinyTest, MatchesReference) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string dir = assets + "/hf_tiny/" + GetParam();
  absl::StatusOr<std::shared_ptr<CausalLm>> lm = load_model(dir);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const json ref = read_json(dir + "/reference.json");

  for (const json& c : ref["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    std::vector<int64_t> ids = c["input_ids"].get<std::vector<int64_t>>();
    const int64_t t = static_cast<int64_t>(ids.size());
    at::Tensor expected = at::tensor(c["logits"].get<std::vector<std::vector<double>>>().front(), at::kDouble);
    std::vector<double> flat;
    for (const auto& row : c["logits"])
      for (double v : row) flat.push_back(v);
    expected = at::tensor(flat, at::kDouble).view({t, -1});
    at::Tensor got = (*lm)->forward(at::tensor(ids, at::kLong).view({1, t}), nullptr)[0].to(at::kDouble);
    ASSERT_EQ(got.sizes(), expected.sizes());
    const double max_diff = (got - expected).abs().max().item<double>();
    EXPECT_LT(max_diff, 1e-4) << "max |logit - reference|";
    // Argmax per position.
    std::vector<int64_t> argmax = c["argmax"].get<std::vector<int64_t>>();
    at::Tensor am = got.argmax(-1);
    for (int64_t i = 0; i < t; ++i) EXPECT_EQ(am[i].item<int64_t>(), argmax[i]) << "position " << i;
    // Teacher-forced NLL.
    if (t > 1) {
      absl::StatusOr<EvalResult> ev = evaluate_sequence(**lm, ids);
      ASSERT_TRUE(ev.ok()) << ev.status();
      std::vector<double> nll = c["next_token_nll"].get<std::vector<double>>();
      ASSERT_EQ(ev->nll.size(), nll.size());
      for (size_t i = 0; i < nll.size(); ++i) EXPECT_NEAR(ev->nll[i], nll[i], 1e-4) << "nll at " << i;
      EXPECT_NEAR(ev->mean_nll(), c["mean_nll"].get<double>(), 1e-5);
    }
  }

  // Greedy continuation with the KV cache, no EOS stopping.
  const json& g = ref["greedy"];
  GenerateOptions opts;
  opts.max_new_tokens = g["max_new_tokens"].get<int64_t>();
  opts.use_config_eos = false;
  absl::StatusOr<GenerateResult> r = generate(**lm, g["prompt_ids"].get<std::vector<int64_t>>(), opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->generated_ids, g["generated_ids"].get<std::vector<int64_t>>());
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, HfTinyTest,
                         ::testing::Values("llama_tiny", "llama_tiny_bf16", "llama_tiny_rope_scaled", "gpt2_tiny"));

TEST(HfTinyRope, InvFreqMatchesReference) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  for (const char* name : {"llama_tiny", "llama_tiny_rope_scaled"}) {
    const std::string dir = assets + "/hf_tiny/" + name;
    absl::StatusOr<ModelConfig> cfg = read_model_config(dir);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    RopeSpec spec;
    spec.head_dim = cfg->llama.head_dim;
    spec.max_positions = 4;
    spec.theta = cfg->llama.rope_theta;
    spec.rope_type = cfg->llama.rope_scaling.rope_type;
    spec.factor = cfg->llama.rope_scaling.factor;
    spec.low_freq_factor = cfg->llama.rope_scaling.low_freq_factor;
    spec.high_freq_factor = cfg->llama.rope_scaling.high_freq_factor;
    spec.original_max_position_embeddings = cfg->llama.rope_scaling.original_max_position_embeddings;
    RopeTables rope = make_rope_tables(spec);
    std::vector<double> expected = read_json(dir + "/reference.json")["rope_inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(rope.inv_freq.numel(), static_cast<int64_t>(expected.size()));
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_NEAR(rope.inv_freq[i].item<double>(), expected[i], 1e-6 * std::abs(expected[i])) << name << " " << i;
    }
  }
}

}  // namespace
}  // namespace peft::models
