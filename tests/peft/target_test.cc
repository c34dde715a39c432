// Target resolution (peft/target.h) over the presets and block indices the
// models report: preset errors, the "gpt2" alias, the empty spec's default
// and block filters give the same selections and messages as before presets
// moved into the models.
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "peft/target.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

std::vector<std::string> paths(const std::vector<LinearTarget>& targets) {
  std::vector<std::string> out;
  for (const LinearTarget& t : targets) out.push_back(t.path);
  return out;
}

proto::TargetSpec preset(const std::string& name) {
  proto::TargetSpec spec;
  spec.set_preset(name);
  return spec;
}

TEST(ResolveTargets, UnknownPresetListsTheModelsPresets) {
  for (const models::ModelConfig& c : {testing::tiny_llama_config(), testing::tiny_gpt2_config()}) {
    std::shared_ptr<models::CausalLm> lm = testing::tiny_model(c, 1);
    const absl::StatusOr<std::vector<LinearTarget>> r = resolve_targets(*lm, preset("nope"));
    ASSERT_FALSE(r.ok()) << c.model_type();
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), "unknown target preset 'nope' (attention, mlp, all_linear, default)");
  }
}

TEST(ResolveTargets, LlamaPresetsAndDefault) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(), 1);
  absl::StatusOr<std::vector<LinearTarget>> all = resolve_targets(*lm, preset("all_linear"));
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(all->size(), 14u);  // 7 per block, not lm_head
  absl::StatusOr<std::vector<LinearTarget>> alias = resolve_targets(*lm, preset("gpt2"));
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(paths(*alias), paths(*all));
  absl::StatusOr<std::vector<LinearTarget>> dflt = resolve_targets(*lm, proto::TargetSpec());
  ASSERT_TRUE(dflt.ok()) << dflt.status();
  EXPECT_EQ(paths(*dflt),
            (std::vector<std::string>{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
                                      "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}));
  proto::TargetSpec mlp1 = preset("mlp");
  mlp1.add_layers(1);
  absl::StatusOr<std::vector<LinearTarget>> r = resolve_targets(*lm, mlp1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(paths(*r), (std::vector<std::string>{"model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
                                                 "model.layers.1.mlp.down_proj"}));
  for (const LinearTarget& t : *r) EXPECT_EQ(t.layer, 1) << t.path;
}

TEST(ResolveTargets, Gpt2PresetsAndHead) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_gpt2_config(), 1);
  absl::StatusOr<std::vector<LinearTarget>> attn = resolve_targets(*lm, preset("attention"));
  ASSERT_TRUE(attn.ok()) << attn.status();
  EXPECT_EQ(paths(*attn), (std::vector<std::string>{"transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                                                    "transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"}));
  absl::StatusOr<std::vector<LinearTarget>> dflt = resolve_targets(*lm, proto::TargetSpec());
  ASSERT_TRUE(dflt.ok()) << dflt.status();
  EXPECT_EQ(paths(*dflt), (std::vector<std::string>{"transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"}));
  proto::TargetSpec head;
  head.add_modules("lm_head");
  absl::StatusOr<std::vector<LinearTarget>> h = resolve_targets(*lm, head);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->size(), 1u);
  EXPECT_EQ((*h)[0].layer, -1);
  // A block filter leaves out the head, which is in no block.
  head.add_layers(0);
  EXPECT_FALSE(resolve_targets(*lm, head).ok());
}

}  // namespace
}  // namespace peft
