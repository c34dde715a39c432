// What each model reports for adapter targeting (models/causal_lm.h): its
// presets and its adaptable projections with their decoder block index.
// Target resolution (peft/target.cc) relies on these instead of knowing the
// architectures, so they are checked here against hand-written lists for the
// tiny LLaMA and GPT-2, and against a scan of the module tree (the same
// projections, in module order, as the module objects at those paths).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/nn/module.h>

#include "models/causal_lm.h"
#include "peft/adaptable_linear.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

using Strings = std::vector<std::string>;
using PathLayer = std::pair<std::string, int64_t>;

std::vector<PathLayer> path_layers(models::CausalLm& lm) {
  std::vector<PathLayer> out;
  for (const models::AdaptableSlot& s : lm.adaptable_slots()) out.emplace_back(s.path, s.layer);
  return out;
}

// Every slot points at the AdaptableLinear registered under its path, and the
// slots are exactly the model's AdaptableLinears in named_modules() order.
void expect_slots_match_module_tree(models::CausalLm& lm) {
  std::vector<std::pair<std::string, AdaptableLinearImpl*>> tree;
  for (const auto& item : lm.module().named_modules("", /*include_self=*/false)) {
    if (auto* lin = dynamic_cast<AdaptableLinearImpl*>(item.value().get())) tree.emplace_back(item.key(), lin);
  }
  const std::vector<models::AdaptableSlot> slots = lm.adaptable_slots();
  ASSERT_EQ(slots.size(), tree.size());
  for (size_t i = 0; i < slots.size(); ++i) {
    EXPECT_EQ(slots[i].path, tree[i].first) << i;
    EXPECT_EQ(slots[i].linear, tree[i].second) << slots[i].path;
  }
}

void expect_presets(const models::CausalLm& lm, const std::vector<std::pair<std::string, Strings>>& expected) {
  const std::vector<models::TargetPreset> presets = lm.target_presets();
  ASSERT_EQ(presets.size(), expected.size());
  for (size_t i = 0; i < presets.size(); ++i) {
    EXPECT_EQ(presets[i].name, expected[i].first);
    EXPECT_EQ(presets[i].modules, expected[i].second) << presets[i].name;
    EXPECT_EQ(lm.target_preset(expected[i].first), expected[i].second) << expected[i].first;
  }
}

TEST(ModelTargets, LlamaPresets) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(), 1);
  const Strings all = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  expect_presets(*lm, {{"attention", {"q_proj", "k_proj", "v_proj", "o_proj"}},
                       {"mlp", {"gate_proj", "up_proj", "down_proj"}},
                       {"all_linear", all},
                       {"default", {"q_proj", "v_proj"}}});
  EXPECT_EQ(lm->target_preset("gpt2"), all);  // the former name of all_linear
  EXPECT_TRUE(lm->target_preset("nope").empty());
}

TEST(ModelTargets, Gpt2Presets) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_gpt2_config(), 1);
  const Strings all = {"c_attn", "c_proj", "c_fc"};
  expect_presets(*lm, {{"attention", {"attn.c_attn", "attn.c_proj"}},
                       {"mlp", {"mlp.c_fc", "mlp.c_proj"}},
                       {"all_linear", all},
                       {"default", {"c_attn"}}});
  EXPECT_EQ(lm->target_preset("gpt2"), all);
  EXPECT_TRUE(lm->target_preset("nope").empty());
  EXPECT_TRUE(lm->target_preset("").empty());
}

TEST(ModelTargets, LlamaSlotsCarryTheirBlock) {
  std::vector<PathLayer> expected;
  for (int64_t l = 0; l < 2; ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    for (const char* p : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}) {
      expected.emplace_back(b + p, l);
    }
  }
  expected.emplace_back("lm_head", -1);
  for (bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied head" : "untied head");
    std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(tied), 1);
    EXPECT_EQ(path_layers(*lm), expected);
    expect_slots_match_module_tree(*lm);
  }
}

TEST(ModelTargets, Gpt2SlotsCarryTheirBlock) {
  const std::vector<PathLayer> expected = {
      {"transformer.h.0.attn.c_attn", 0}, {"transformer.h.0.attn.c_proj", 0}, {"transformer.h.0.mlp.c_fc", 0},
      {"transformer.h.0.mlp.c_proj", 0},  {"transformer.h.1.attn.c_attn", 1}, {"transformer.h.1.attn.c_proj", 1},
      {"transformer.h.1.mlp.c_fc", 1},    {"transformer.h.1.mlp.c_proj", 1},  {"lm_head", -1},  // tied to wte
  };
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_gpt2_config(), 1);
  ASSERT_TRUE(lm->config().tie_word_embeddings());
  EXPECT_EQ(path_layers(*lm), expected);
  expect_slots_match_module_tree(*lm);
}

}  // namespace
}  // namespace peft
