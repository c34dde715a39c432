// Compacter / Compacter++ (peft/compacter): one shared rule tensor; the
// trainable count against the paper's formula; merge refused with a message;
// a small output change at init; PHM layers equal the dense Kronecker
// reference; placement (embedding untouched, ++ skips attention); option
// errors; save/load of adapter + tuned norms.
#include "peft/compacter/compacter.h"

#include <memory>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kernels/kronecker.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

proto::AdapterConfig compacter_config(bool plus_plus, int n = 4, int reduction = 4) {
  proto::AdapterConfig c;
  c.set_name("compacter");
  c.mutable_compacter()->set_phm_dim(n);
  c.mutable_compacter()->set_reduction_factor(reduction);
  c.mutable_compacter()->set_plus_plus(plus_plus);
  return c;
}

CompacterAdapterImpl* adapter_of(PeftModel& pm, const std::string& name) {
  for (const auto& child : pm.model().module().named_children()) {
    if (child.key() == "peft_" + name) return dynamic_cast<CompacterAdapterImpl*>(child.value().get());
  }
  return nullptr;
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

TEST(Compacter, OneSharedRuleTensor) {
  torch::manual_seed(0);
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 5));
  ASSERT_TRUE(pm.add_adapter(compacter_config(false), 1).ok());
  CompacterAdapterImpl* a = adapter_of(pm, "compacter");
  ASSERT_NE(a, nullptr);
  const std::vector<PhmLinearImpl*> phm = a->phm_layers();
  ASSERT_EQ(phm.size(), 8u);  // 2 layers × (attn, mlp) × (down, up)
  for (PhmLinearImpl* p : phm) {
    EXPECT_EQ(p->rule.unsafeGetTensorImpl(), a->phm_rule.unsafeGetTensorImpl());
    EXPECT_EQ(p->rule.data_ptr(), a->phm_rule.data_ptr());
  }
  pm.freeze_base_();
  int rules = 0;
  for (const auto& [name, t] : pm.trainable_parameters()) {
    if (t.dim() == 3 && t.size(0) == 4 && t.size(1) == 4 && t.size(2) == 4) {
      ++rules;
      EXPECT_EQ(name, "peft_compacter.phm_rule");
    }
  }
  EXPECT_EQ(rules, 1);
  // The rule survives a dtype change of the whole model still shared.
  pm.model().module().to(at::kDouble);
  for (PhmLinearImpl* p : a->phm_layers()) {
    EXPECT_EQ(p->rule.scalar_type(), at::kDouble);
    EXPECT_EQ(p->rule.data_ptr(), a->phm_rule.data_ptr());
  }
}

// docs/methods.md §6: weights 4·L·r·(k+d) + n³ (Compacter) or
// 2·L·r·(k+d) + n³ (++), biases (k+d) per adapter, plus every norm.
int64_t expected_trainable(const models::ModelConfig& mc, bool plus_plus, int64_t n, int64_t k, int64_t r) {
  const int64_t d = mc.hidden_size(), L = mc.num_layers();
  const int64_t adapters = (plus_plus ? 1 : 2) * L;
  const int64_t weights = adapters * 2 * r * (k + d) + n * n * n;
  const int64_t biases = adapters * (k + d);
  const int64_t norms = mc.arch == models::Architecture::kLlama ? (2 * L + 1) * d : (2 * L + 1) * 2 * d;
  return weights + biases + norms;
}

TEST(Compacter, TrainableCountMatchesFormula) {
  for (const bool llama : {true, false}) {
    for (const bool pp : {false, true}) {
      for (const int rank : {1, 2}) {
        const models::ModelConfig mc = llama ? testing::tiny_llama_config() : testing::tiny_gpt2_config();
        PeftModel pm(testing::tiny_model(mc, 5));
        proto::AdapterConfig c = compacter_config(pp, 4, 4);
        c.mutable_compacter()->set_phm_rank(rank);
        ASSERT_TRUE(pm.add_adapter(c, 1).ok());
        pm.freeze_base_();
        // d = 32, k = 8, n = 4; e.g. LLaMA Compacter r = 1:
        // 4·2·(8+32) + 64 + 4·(8+32) + 5·32 = 320 + 64 + 160 + 160 = 704.
        EXPECT_EQ(pm.num_trainable(), expected_trainable(mc, pp, 4, 8, rank))
            << mc.model_type() << (pp ? " ++" : "") << " rank " << rank;
        if (llama && !pp && rank == 1) {
          EXPECT_EQ(pm.num_trainable(), 704);
        }
      }
    }
  }
}

TEST(Compacter, MergeIsRefusedWithAMessage) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 5));
  ASSERT_TRUE(pm.add_adapter(compacter_config(false), 1).ok());
  absl::Status st = pm.merge_();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("cannot be merged"), std::string::npos) << st;
  EXPECT_NE(std::string(st.message()).find("compacter"), std::string::npos) << st;
  EXPECT_FALSE(pm.merge_and_unload_().ok());
  EXPECT_FALSE(find_method("compacter").value()->mergeable);
}

TEST(Compacter, SmallChangeAtInitAndPlacement) {
  const models::ModelConfig mc = testing::tiny_llama_config();
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(mc, 5);
  const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 2, 10, 3);
  torch::NoGradGuard ng;
  const at::Tensor base = lm->forward(ids, nullptr);
  PeftModel pm(lm);
  ASSERT_TRUE(pm.add_adapter(compacter_config(false), 1).ok());
  const at::Tensor with = pm.model().forward(ids, nullptr);
  const double rel = max_abs(with - base) / max_abs(base);
  EXPECT_GT(rel, 0.0) << "Compacter is not the identity at init";
  EXPECT_LT(rel, 1e-2);

  CompacterAdapterImpl* a = adapter_of(pm, "compacter");
  const at::Tensor h = at::randn({2, 3, 32});
  EXPECT_TRUE(at::equal(a->forward(models::HookPoint::kEmbedding, -1, h), h));
  EXPECT_FALSE(at::equal(a->forward(models::HookPoint::kAttentionOutput, 0, h), h));
  // The bottleneck is h + up(gelu_tanh(down(h))).
  const at::Tensor expect = h + a->mlp[1]->up->forward(at::gelu(a->mlp[1]->down->forward(h), "tanh"));
  EXPECT_TRUE(at::allclose(a->forward(models::HookPoint::kMlpOutput, 1, h), expect));

  PeftModel pp(testing::tiny_model(mc, 5));
  ASSERT_TRUE(pp.add_adapter(compacter_config(true), 1).ok());
  CompacterAdapterImpl* b = adapter_of(pp, "compacter");
  EXPECT_TRUE(b->attn.empty());
  EXPECT_TRUE(at::equal(b->forward(models::HookPoint::kAttentionOutput, 0, h), h));
  EXPECT_FALSE(at::equal(b->forward(models::HookPoint::kMlpOutput, 0, h), h));
}

TEST(Compacter, PhmLayersEqualTheKroneckerReference) {
  torch::manual_seed(0);
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 5));
  proto::AdapterConfig c = compacter_config(false);
  c.mutable_compacter()->set_phm_rank(2);
  ASSERT_TRUE(pm.add_adapter(c, 1).ok());
  CompacterAdapterImpl* a = adapter_of(pm, "compacter");
  {
    torch::NoGradGuard ng;
    a->phm_rule.normal_();  // make A O(1) so the comparison is not trivially small
    for (auto& p : a->parameters()) p.add_(at::randn_like(p) * 0.1);
  }
  for (PhmLinearImpl* p : a->phm_layers()) {
    const at::Tensor x = at::randn({3, 5, p->options.in});
    const at::Tensor y = p->forward(x);
    const at::Tensor dense = at::matmul(x, p->dense_weight()) + p->bias;
    const at::Tensor ref = kernels::phm_linear_ref(x, p->rule, p->W_left, p->W_right, p->bias);
    EXPECT_LE(max_abs(y - ref), 1e-5 * max_abs(ref));
    EXPECT_LE(max_abs(y - dense), 1e-5 * max_abs(ref));
    // H built slice by slice from its definition: Σ_i kron(A_i, s_i t_iᵀ).
    at::Tensor H = at::zeros({p->options.in, p->options.out});
    for (int64_t i = 0; i < 4; ++i) H += at::kron(p->rule[i], at::matmul(p->W_left[i], p->W_right[i]));
    EXPECT_TRUE(at::allclose(p->dense_weight(), H, 1e-6, 1e-6));
  }
}

TEST(Compacter, InitStatistics) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 5));
  proto::AdapterConfig c = compacter_config(false);
  c.mutable_compacter()->set_phm_init_range(0.5);  // visible spread for the check
  ASSERT_TRUE(pm.add_adapter(c, 1).ok());
  CompacterAdapterImpl* a = adapter_of(pm, "compacter");
  EXPECT_GT(a->phm_rule.std().item<double>(), 0.2);
  EXPECT_LT(a->phm_rule.std().item<double>(), 0.8);
  for (PhmLinearImpl* p : a->phm_layers()) {
    EXPECT_TRUE(at::equal(p->bias, at::zeros_like(p->bias)));
    // Glorot uniform, gain √2, per [in/n, r] slice: |w| ≤ √2·√(6 / (in/n + r)).
    const double bl = std::sqrt(2.0) * std::sqrt(6.0 / static_cast<double>(p->W_left.size(1) + p->W_left.size(2)));
    const double br = std::sqrt(2.0) * std::sqrt(6.0 / static_cast<double>(p->W_right.size(1) + p->W_right.size(2)));
    EXPECT_LE(max_abs(p->W_left), bl);
    EXPECT_LE(max_abs(p->W_right), br);
    EXPECT_GT(max_abs(p->W_left), 0.3 * bl);
  }
}

TEST(Compacter, OptionErrors) {
  const models::ModelConfig mc = testing::tiny_llama_config();  // d = 32
  {
    PeftModel pm(testing::tiny_model(mc, 5));
    absl::Status st = pm.add_adapter(compacter_config(false, /*n=*/3, /*reduction=*/4), 1);  // 3 ∤ 32
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(std::string(st.message()).find("phm_dim = 3"), std::string::npos) << st;
  }
  {
    PeftModel pm(testing::tiny_model(mc, 5));
    absl::Status st = pm.add_adapter(compacter_config(false, /*n=*/4, /*reduction=*/16), 1);  // k = 2, 4 ∤ 2
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(std::string(st.message()).find("k = d / reduction_factor = 2"), std::string::npos) << st;
  }
  {
    PeftModel pm(testing::tiny_model(mc, 5));
    EXPECT_FALSE(pm.add_adapter(compacter_config(false, 4, 64), 1).ok());  // k = 0
    EXPECT_FALSE(pm.add_adapter(compacter_config(false, 0, 4), 1).ok());
  }
}

TEST(Compacter, SaveLoadRestoresAdapterAndNorms) {
  const models::ModelConfig mc = testing::tiny_gpt2_config();
  const at::Tensor ids = testing::sample_ids(mc.vocab_size(), 2, 8, 4);
  PeftModel pm(testing::tiny_model(mc, 5));
  ASSERT_TRUE(pm.add_adapter(compacter_config(true), 1).ok());
  pm.freeze_base_();
  {
    torch::NoGradGuard ng;
    for (auto& [name, p] : pm.trainable_parameters()) p.add_(at::randn_like(p) * 0.1);
  }
  const std::string dir = testing::make_temp_dir("compacter") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir, "compacter").ok());
  PeftModel fresh(testing::tiny_model(mc, 5));
  ASSERT_TRUE(fresh.load_adapter(dir).ok());
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::equal(fresh.model().forward(ids, nullptr), pm.model().forward(ids, nullptr)));
  CompacterAdapterImpl* a = adapter_of(fresh, "compacter");
  ASSERT_NE(a, nullptr);
  for (PhmLinearImpl* p : a->phm_layers()) EXPECT_EQ(p->rule.data_ptr(), a->phm_rule.data_ptr());
}

}  // namespace
}  // namespace peft
