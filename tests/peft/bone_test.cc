// Bone specifics (peft/bone/bone.h): BAT's W' on a hand-built block example,
// its exact unmerge and gradients, the divisibility error; MiSS's padded
// forward vs its materialised ΔW; Hugging Face PEFT file layout (MiSS and
// BONE keys, shapes, adapter_config.json) written and read.
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "peft/bone/bone.h"
#include "peft/io/safetensors.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

using nlohmann::json;

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

proto::BoneOptions bone_options(int r, proto::BoneOptions::Variant v = proto::BoneOptions::BAT) {
  proto::BoneOptions o;
  o.set_r(r);
  o.set_variant(v);
  return o;
}

proto::AdapterConfig bone_config(int r, proto::BoneOptions::Variant v, const std::vector<std::string>& modules) {
  proto::AdapterConfig c;
  *c.mutable_bone() = bone_options(r, v);
  for (const std::string& m : modules) c.mutable_target()->add_modules(m);
  return c;
}

json read_json(const std::string& p) {
  std::ifstream in(p);
  return json::parse(in);
}

void write_text(const std::string& p, const std::string& text) {
  std::ofstream out(p);
  out << text;
}

// ----------------------------------------------------------------------------- BAT

TEST(BoneBat, WeightGuideOnHandBuiltBlocks) {
  // W [4, 4], r = 2: row block 0 uses T_0, row block 1 uses T_1, each shared
  // by both column blocks. Expected values worked out by hand:
  //   T_0 = [[0, 1], [0, 0]] -> I + T_0 = [[1, 1], [0, 1]]
  //   W_00 = [[1, 2], [5, 6]]      -> W_00 (I+T_0) = [[1, 3], [5, 11]]   + T_0 = [[1, 4], [5, 11]]
  //   W_01 = [[3, 4], [7, 8]]      -> [[3, 7], [7, 15]]                  + T_0 = [[3, 8], [7, 15]]
  //   T_1 = [[1, 0], [0, 0]] -> I + T_1 = [[2, 0], [0, 1]]
  //   W_10 = [[9, 10], [13, 14]]   -> [[18, 10], [26, 14]]               + T_1 = [[19, 10], [26, 14]]
  //   W_11 = [[11, 12], [15, 16]]  -> [[22, 12], [30, 16]]               + T_1 = [[23, 12], [30, 16]]
  auto bat = std::make_shared<BatLinearImpl>(bone_options(2), 4, 4);
  {
    torch::NoGradGuard ng;
    bat->bone_block.copy_(at::tensor({0.f, 1.f, 0.f, 0.f, 1.f, 0.f, 0.f, 0.f}).view({2, 2, 2}));
  }
  const at::Tensor w = at::arange(1, 17, at::kFloat).view({4, 4});
  const at::Tensor expected =
      at::tensor({1.f, 4.f, 3.f, 8.f, 5.f, 11.f, 7.f, 15.f, 19.f, 10.f, 23.f, 12.f, 26.f, 14.f, 30.f, 16.f})
          .view({4, 4});
  EXPECT_TRUE(at::equal(bat->merged_weight(w), expected));
  EXPECT_TRUE(at::equal(bat->adapted_weight(w).detach(), expected));

  const at::Tensor x = at::tensor({1.f, -1.f, 0.5f, 2.f, 0.f, 3.f, -2.f, 1.f}).view({2, 4});
  const at::Tensor b = at::tensor({0.1f, 0.2f, 0.3f, 0.4f});
  torch::NoGradGuard ng;
  EXPECT_LE(max_abs(bat->forward(x, w, b) - at::linear(x, expected, b)), 1e-5);
  EXPECT_LE(max_abs(bat->forward_delta(x, w) - at::linear(x, expected - w)), 1e-5);
  EXPECT_TRUE(at::allclose(bat->unmerged_weight(expected), w, 0, 1e-5));
}

TEST(BoneBat, UnmergeIsExactAfterRandomT) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(17);
  for (int r : {4, 8, 16}) {
    SCOPED_TRACE("r = " + std::to_string(r));
    auto bat = std::make_shared<BatLinearImpl>(bone_options(r), 48, 32);
    {
      torch::NoGradGuard ng;
      bat->bone_block.normal_(0.0, 0.1, gen);
    }
    const at::Tensor w = at::randn({48, 32}, gen) * 0.2;
    const at::Tensor merged = bat->merged_weight(w);
    EXPECT_GT(max_abs(merged - w), 1e-2);  // the merge did something
    EXPECT_LE(max_abs(bat->unmerged_weight(merged) - w), 1e-6);
  }
}

TEST(BoneBat, MergeThenUnmergeThroughPeftModelRestoresTheBase) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 2));
  ASSERT_TRUE(pm.add_adapter(bone_config(16, proto::BoneOptions::BAT, {"q_proj", "down_proj"}), 0).ok());
  pm.freeze_base_();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(4);
  {
    torch::NoGradGuard ng;
    for (auto& [name, p] : pm.trainable_parameters()) p.normal_(0.0, 0.1, gen);
  }
  std::vector<at::Tensor> before;
  for (const auto& p : pm.model().hf_parameters()) before.push_back(p.tensor.detach().clone());
  const at::Tensor ids = testing::sample_ids(96, 2, 8, 1);
  torch::NoGradGuard ng;
  const at::Tensor unmerged = pm.model().forward(ids, nullptr);
  ASSERT_TRUE(pm.merge_().ok());
  EXPECT_LE(max_abs(pm.model().forward(ids, nullptr) - unmerged) / max_abs(unmerged), 1e-5);
  ASSERT_TRUE(pm.unmerge_().ok());
  const std::vector<models::HfParameter> after = pm.model().hf_parameters();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_LE(max_abs(after[i].tensor - before[i]), 1e-6) << after[i].hf_name;
  }
}

TEST(BoneBat, GradientsReachT) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(8);
  for (auto kernel : {proto::BoneOptions::BATCHED, proto::BoneOptions::REFERENCE}) {
    proto::BoneOptions o = bone_options(4);
    o.set_kernel(kernel);
    auto bat = std::make_shared<BatLinearImpl>(o, 8, 12);
    const at::Tensor w = at::randn({8, 12}, gen), x = at::randn({3, 5, 12}, gen);
    // Non-zero already at T = 0: W' depends on T through W_ij T_i + T_i.
    bat->forward(x, w, at::Tensor()).pow(2).sum().backward();
    ASSERT_TRUE(bat->bone_block.grad().defined());
    EXPECT_GT(max_abs(bat->bone_block.grad()), 0);
    EXPECT_EQ(bat->bone_block.grad().sizes(), (std::vector<int64_t>{2, 4, 4}));
  }
  // Both kernels give the same gradient.
  std::vector<at::Tensor> grads;
  const at::Tensor w = at::randn({8, 12}, gen), x = at::randn({3, 12}, gen), t = at::randn({2, 4, 4}, gen) * 0.1;
  for (auto kernel : {proto::BoneOptions::BATCHED, proto::BoneOptions::REFERENCE}) {
    proto::BoneOptions o = bone_options(4);
    o.set_kernel(kernel);
    auto bat = std::make_shared<BatLinearImpl>(o, 8, 12);
    {
      torch::NoGradGuard ng;
      bat->bone_block.copy_(t);
    }
    bat->forward(x, w, at::Tensor()).pow(2).sum().backward();
    grads.push_back(bat->bone_block.grad());
  }
  EXPECT_LE(max_abs(grads[0] - grads[1]), 1e-4 * (1 + max_abs(grads[1])));
}

TEST(BoneBat, BlockSizeNotDividingIsAClearError) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 2));
  proto::AdapterConfig c;
  c.mutable_bone()->set_r(32);  // k_proj / v_proj are [16, 32]
  c.mutable_target()->set_preset("all_linear");
  const absl::Status st = pm.add_adapter(c, 0);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(st.message());
  EXPECT_NE(msg.find("model.layers.0.self_attn.k_proj"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[16, 32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("r = 32"), std::string::npos) << msg;
  EXPECT_TRUE(pm.adapter_names().empty());
  EXPECT_EQ(pm.model().module().named_parameters().size(),
            testing::tiny_model(testing::tiny_llama_config(), 2)->module().named_parameters().size());

  // MISS takes any r.
  c.mutable_bone()->set_variant(proto::BoneOptions::MISS);
  EXPECT_TRUE(pm.add_adapter(c, 0).ok());
}

TEST(BoneBat, OptionErrors) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 2));
  proto::AdapterConfig c = bone_config(8, proto::BoneOptions::BAT, {"q_proj"});
  c.mutable_bone()->set_dropout(0.1f);
  absl::Status st = pm.add_adapter(c, 0);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("MISS only"), std::string::npos) << st;
  c.mutable_bone()->set_dropout(0);
  c.mutable_bone()->set_r(0);
  st = pm.add_adapter(c, 0);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(std::string(st.message()).find("bone.r"), std::string::npos) << st;
  // BAT depends on W: it cannot be scaled.
  c.mutable_bone()->set_r(8);
  ASSERT_TRUE(pm.add_adapter(c, 0).ok());
  EXPECT_FALSE(pm.set_active({{"default", 0.5}}).ok());
}

// ----------------------------------------------------------------------------- MISS

TEST(BoneMiss, PaddedForwardEqualsMaterialisedDelta) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(21);
  const int64_t out = 12, in = 20, r = 8;  // in % r = 4
  auto miss = std::make_shared<MissLinearImpl>(bone_options(r, proto::BoneOptions::MISS), out, in);
  {
    torch::NoGradGuard ng;
    miss->miss_block.normal_(0.0, 1.0, gen);
  }
  const at::Tensor d = miss->miss_block.detach();  // [r, out]
  const at::Tensor delta = miss->delta_weight();   // [out, in]
  ASSERT_EQ(delta.sizes(), (std::vector<int64_t>{out, in}));
  // ΔW[o, c] = D[c mod r, o]: columns 16..19 get the first 4 rows of D.
  for (int64_t c = 0; c < in; ++c) EXPECT_TRUE(at::equal(delta.select(1, c), d.select(0, c % r))) << "column " << c;

  const at::Tensor w = at::randn({out, in}, gen), b = at::randn({out}, gen), x = at::randn({2, 3, in}, gen);
  torch::NoGradGuard ng;
  EXPECT_LE(max_abs(miss->forward_delta(x, w) - at::linear(x, delta)), 1e-5);
  EXPECT_LE(max_abs(miss->forward(x, w, b) - at::linear(x, w + delta, b)), 1e-5);
  EXPECT_LE(max_abs(miss->forward(x, w, b) - at::linear(x, miss->merged_weight(w), b)), 1e-5);
  EXPECT_LE(max_abs(miss->unmerged_weight(miss->merged_weight(w)) - w), 1e-6);
}

TEST(BoneMiss, DropoutOnlyOnTheAdapterInputAndOnlyInTraining) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(22);
  proto::BoneOptions o = bone_options(4, proto::BoneOptions::MISS);
  o.set_dropout(0.5f);
  auto miss = std::make_shared<MissLinearImpl>(o, 6, 8);
  {
    torch::NoGradGuard ng;
    miss->miss_block.normal_(0.0, 1.0, gen);
  }
  const at::Tensor w = at::randn({6, 8}, gen), x = at::randn({64, 8}, gen);
  torch::NoGradGuard ng;
  miss->eval();
  const at::Tensor eval_out = miss->forward(x, w, at::Tensor());
  EXPECT_LE(max_abs(eval_out - at::linear(x, miss->merged_weight(w))), 1e-5);
  miss->train();
  const at::Tensor train_delta = miss->forward(x, w, at::Tensor()) - at::linear(x, w);
  EXPECT_GT(max_abs(train_delta - (eval_out - at::linear(x, w))), 1e-3);  // dropout acted on the adapter path
}

TEST(BoneMiss, GradientsReachD) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(23);
  auto miss = std::make_shared<MissLinearImpl>(bone_options(3, proto::BoneOptions::MISS), 5, 7);
  const at::Tensor w = at::randn({5, 7}, gen), x = at::randn({4, 7}, gen);
  miss->forward(x, w, at::Tensor()).sum().backward();
  ASSERT_TRUE(miss->miss_block.grad().defined());
  EXPECT_GT(max_abs(miss->miss_block.grad()), 0);
}

// ----------------------------------------------------------------------------- files

// Every key PEFT's MissConfig (plus PeftConfig's common keys) knows.
const std::set<std::string>& miss_config_keys() {
  static const std::set<std::string> keys = {"peft_type",
                                             "task_type",
                                             "base_model_name_or_path",
                                             "inference_mode",
                                             "revision",
                                             "auto_mapping",
                                             "peft_version",
                                             "r",
                                             "miss_dropout",
                                             "mini_r",
                                             "target_modules",
                                             "exclude_modules",
                                             "init_weights",
                                             "layers_to_transform",
                                             "layers_pattern",
                                             "bias",
                                             "modules_to_save"};
  return keys;
}

TEST(BoneFormat, MissKeysShapesAndConfigArePeft) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  ASSERT_TRUE(pm.add_adapter(bone_config(8, proto::BoneOptions::MISS, {"q_proj", "v_proj"}), 0).ok());
  const std::string dir = testing::make_temp_dir("bone") + "/miss";
  ASSERT_TRUE(pm.save_adapter(dir).ok());

  const json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "MISS");
  EXPECT_EQ(cfg["r"], 8);
  EXPECT_EQ(cfg["miss_dropout"], 0.0);
  EXPECT_EQ(cfg["mini_r"], 1);
  EXPECT_EQ(cfg["init_weights"], true);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["target_modules"], json({"q_proj", "v_proj"}));
  for (const auto& item : cfg.items())
    EXPECT_TRUE(miss_config_keys().count(item.key())) << "unknown key " << item.key();

  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  std::set<std::string> names;
  for (const io::TensorInfo& t : (*file)->tensors()) names.insert(t.name);
  EXPECT_EQ(names, (std::set<std::string>{"base_model.model.model.layers.0.self_attn.q_proj.miss_block",
                                          "base_model.model.model.layers.0.self_attn.v_proj.miss_block",
                                          "base_model.model.model.layers.1.self_attn.q_proj.miss_block",
                                          "base_model.model.model.layers.1.self_attn.v_proj.miss_block"}));
  const io::TensorInfo* q = (*file)->find("base_model.model.model.layers.0.self_attn.q_proj.miss_block");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape, (std::vector<int64_t>{8, 32}));  // [r, out]
  EXPECT_EQ(q->dtype, "F32");
  EXPECT_EQ((*file)->find("base_model.model.model.layers.0.self_attn.v_proj.miss_block")->shape,
            (std::vector<int64_t>{8, 16}));
}

// PEFT removed the BONE type: a Bat adapter is peft_type MISS with
// init_weights "bat" and its T under `miss_block`, shaped [out/r, r, r]
// (MissLayer.reset_bat_parameters), with exactly MissConfig's keys.
TEST(BoneFormat, BatWritesPeftMissBatFormat) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  ASSERT_TRUE(pm.add_adapter(bone_config(8, proto::BoneOptions::BAT, {"k_proj"}), 0).ok());
  const std::string dir = testing::make_temp_dir("bone") + "/bat";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  const json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "MISS");
  EXPECT_EQ(cfg["init_weights"], "bat");
  EXPECT_EQ(cfg["r"], 8);
  EXPECT_EQ(cfg["miss_dropout"], 0.0);
  EXPECT_EQ(cfg["mini_r"], 1);
  EXPECT_EQ(cfg["bias"], "none");
  EXPECT_EQ(cfg["target_modules"], json({"k_proj"}));
  std::set<std::string> keys;
  for (const auto& item : cfg.items()) keys.insert(item.key());
  // MissConfig's own fields, every one written, plus PeftConfig's.
  EXPECT_EQ(keys, (std::set<std::string>{"peft_type", "task_type", "base_model_name_or_path", "inference_mode", "r",
                                         "miss_dropout", "mini_r", "target_modules", "exclude_modules", "init_weights",
                                         "layers_to_transform", "layers_pattern", "bias", "modules_to_save"}));
  for (const std::string& k : keys) EXPECT_TRUE(miss_config_keys().count(k)) << k;
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  std::set<std::string> names;
  for (const io::TensorInfo& t : (*file)->tensors()) names.insert(t.name);
  EXPECT_EQ(names, (std::set<std::string>{"base_model.model.model.layers.0.self_attn.k_proj.miss_block",
                                          "base_model.model.model.layers.1.self_attn.k_proj.miss_block"}));
  const io::TensorInfo* t = (*file)->find("base_model.model.model.layers.1.self_attn.k_proj.miss_block");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 8, 8}));  // [out/r, r, r]: k_proj is [16, 32]
}

// Writes a Hugging Face PEFT directory by hand: config text plus one block
// per (layer, module) with D[k, o] = seed-dependent values.
struct HandWritten {
  std::string dir;
  std::vector<std::pair<std::string, at::Tensor>> blocks;  // module path -> tensor
};

HandWritten write_peft_dir(const std::string& config_text, const std::string& leaf,
                           const std::vector<std::string>& modules, const std::vector<int64_t>& shape_q,
                           const std::vector<int64_t>& shape_v) {
  HandWritten h;
  h.dir = testing::make_temp_dir("bone_hf");
  write_text(h.dir + "/adapter_config.json", config_text);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(31);
  std::vector<io::NamedTensor> tensors;
  for (int layer = 0; layer < 2; ++layer) {
    for (const std::string& m : modules) {
      const std::string path = "model.layers." + std::to_string(layer) + ".self_attn." + m;
      const at::Tensor t = at::randn(m == "q_proj" ? shape_q : shape_v, gen) * 0.1;
      tensors.push_back({"base_model.model." + path + "." + leaf, t});
      h.blocks.emplace_back(path, t);
    }
  }
  EXPECT_TRUE(io::save_safetensors(h.dir + "/adapter_model.safetensors", tensors).ok());
  return h;
}

// The base model with W[o, c] += D[c mod r, o] written element by element.
at::Tensor tiled_reference_logits(const HandWritten& h, const at::Tensor& ids) {
  std::shared_ptr<models::CausalLm> lm = testing::tiny_model(testing::tiny_llama_config(), 6);
  torch::NoGradGuard ng;
  for (const auto& [path, d] : h.blocks) {
    for (const models::HfParameter& p : lm->hf_parameters()) {
      if (p.hf_name != path + ".weight") continue;
      const int64_t r = d.size(0);
      for (int64_t o = 0; o < p.tensor.size(0); ++o) {
        for (int64_t c = 0; c < p.tensor.size(1); ++c) p.tensor[o][c] += d[c % r][o];
      }
    }
  }
  return lm->forward(ids, nullptr);
}

TEST(BoneFormat, ReadsAHandWrittenPeftMissDirectory) {
  // As PEFT's save_pretrained writes it (method_comparison/.../miss/*/adapter_config.json).
  const std::string cfg = R"({
  "auto_mapping": null,
  "base_model_name_or_path": "tiny-llama",
  "bias": "none",
  "exclude_modules": null,
  "inference_mode": true,
  "init_weights": true,
  "layers_pattern": null,
  "layers_to_transform": null,
  "mini_r": 1,
  "miss_dropout": 0.0,
  "modules_to_save": null,
  "peft_type": "MISS",
  "peft_version": "0.17.1",
  "r": 12,
  "revision": null,
  "target_modules": ["v_proj", "q_proj"],
  "task_type": "CAUSAL_LM"
})";
  // r = 12 does not divide in = 32: the padded case.
  const HandWritten h = write_peft_dir(cfg, "miss_block", {"q_proj", "v_proj"}, {12, 32}, {12, 16});
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = pm.load_adapter(h.dir);
  ASSERT_TRUE(st.ok()) << st;
  const proto::AdapterConfig* c = pm.config("default");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->bone().variant(), proto::BoneOptions::MISS);
  EXPECT_EQ(c->bone().r(), 12);
  EXPECT_EQ(pm.targets("default").size(), 4u);

  const at::Tensor ids = testing::sample_ids(96, 2, 10, 3);
  pm.model().module().eval();
  torch::NoGradGuard ng;
  const at::Tensor got = pm.model().forward(ids, nullptr);
  EXPECT_LE(max_abs(got - tiled_reference_logits(h, ids)) / max_abs(got), 1e-5);

  // Saved back, it is a PEFT MiSS directory again.
  const std::string out = testing::make_temp_dir("bone_hf_out") + "/a";
  ASSERT_TRUE(pm.save_adapter(out).ok());
  EXPECT_EQ(read_json(out + "/adapter_config.json")["peft_type"], "MISS");
}

TEST(BoneFormat, ReadsAnOldPeftBoneDefaultDirectory) {
  const std::string cfg = R"({"peft_type": "BONE", "r": 8, "init_weights": true, "bias": "none",
                               "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"})";
  const HandWritten h = write_peft_dir(cfg, "bone_block", {"q_proj"}, {8, 32}, {});
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = pm.load_adapter(h.dir);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(pm.config("default")->bone().variant(), proto::BoneOptions::MISS);
  const at::Tensor ids = testing::sample_ids(96, 1, 6, 4);
  pm.model().module().eval();
  torch::NoGradGuard ng;
  const at::Tensor got = pm.model().forward(ids, nullptr);
  EXPECT_LE(max_abs(got - tiled_reference_logits(h, ids)) / max_abs(got), 1e-5);
  // And it saves back in the layout current PEFT reads (it removed BONE).
  const std::string out = testing::make_temp_dir("bone_hf_out") + "/b";
  ASSERT_TRUE(pm.save_adapter(out).ok());
  EXPECT_EQ(read_json(out + "/adapter_config.json")["peft_type"], "MISS");
  auto file = io::SafetensorsFile::open(out + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_NE((*file)->find("base_model.model.model.layers.0.self_attn.q_proj.miss_block"), nullptr);
  EXPECT_EQ((*file)->find("base_model.model.model.layers.0.self_attn.q_proj.bone_block"), nullptr);
}

TEST(BoneFormat, ReadsAPeftMissBatDirectory) {
  const std::string cfg = R"({"peft_type": "MISS", "r": 8, "init_weights": "bat", "mini_r": 1, "miss_dropout": 0.0,
                               "bias": "none", "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"})";
  const HandWritten h = write_peft_dir(cfg, "miss_block", {"q_proj"}, {4, 8, 8}, {});
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = pm.load_adapter(h.dir);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(pm.config("default")->bone().variant(), proto::BoneOptions::BAT);
  // Merged weight of layer 0's q_proj equals the block formula on the file's T.
  const LinearTarget t = pm.targets("default")[0];
  torch::NoGradGuard ng;
  const at::Tensor w = t.linear->weight.detach().clone();
  ASSERT_TRUE(pm.merge_().ok());
  const at::Tensor tt = h.blocks[0].second;
  for (int64_t i = 0; i < 4; ++i) {
    for (int64_t j = 0; j < 4; ++j) {
      const at::Tensor wij = w.slice(0, i * 8, i * 8 + 8).slice(1, j * 8, j * 8 + 8);
      const at::Tensor expect = at::mm(wij, at::eye(8) + tt[i]) + tt[i];
      EXPECT_LE(max_abs(t.linear->weight.slice(0, i * 8, i * 8 + 8).slice(1, j * 8, j * 8 + 8) - expect), 1e-5);
    }
  }
}

// The W' of a Bat block formula, written out block by block.
void expect_bat_merge(PeftModel& pm, const at::Tensor& tt) {
  const LinearTarget t = pm.targets("default")[0];
  torch::NoGradGuard ng;
  const at::Tensor w = t.linear->weight.detach().clone();
  ASSERT_TRUE(pm.merge_().ok());
  const int64_t r = tt.size(1);
  for (int64_t i = 0; i < w.size(0) / r; ++i) {
    for (int64_t j = 0; j < w.size(1) / r; ++j) {
      const at::Tensor wij = w.slice(0, i * r, i * r + r).slice(1, j * r, j * r + r);
      const at::Tensor expect = at::mm(wij, at::eye(r) + tt[i]) + tt[i];
      EXPECT_LE(max_abs(t.linear->weight.slice(0, i * r, i * r + r).slice(1, j * r, j * r + r) - expect), 1e-5);
    }
  }
}

// Older PEFT wrote Bat as peft_type BONE with `bone_block`; still read,
// and saved back as current PEFT's MiSS with init_weights "bat".
TEST(BoneFormat, ReadsAnOldPeftBoneBatDirectory) {
  const std::string cfg = R"({"peft_type": "BONE", "r": 8, "init_weights": "bat", "bias": "none",
                               "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"})";
  const HandWritten h = write_peft_dir(cfg, "bone_block", {"q_proj"}, {4, 8, 8}, {});
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = pm.load_adapter(h.dir);
  ASSERT_TRUE(st.ok()) << st;
  EXPECT_EQ(pm.config("default")->bone().variant(), proto::BoneOptions::BAT);
  const std::string out = testing::make_temp_dir("bone_hf_out") + "/c";
  ASSERT_TRUE(pm.save_adapter(out).ok());
  EXPECT_EQ(read_json(out + "/adapter_config.json")["peft_type"], "MISS");
  EXPECT_EQ(read_json(out + "/adapter_config.json")["init_weights"], "bat");
  expect_bat_merge(pm, h.blocks[0].second);
}

// peft-cpp's own Bat directories from before the format change (sidecar
// without block_key, T under `bone_block`, peft_type BONE) still load.
TEST(BoneFormat, ReadsAnOldPeftCppBatDirectory) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  ASSERT_TRUE(pm.add_adapter(bone_config(8, proto::BoneOptions::BAT, {"q_proj"}), 0).ok());
  const std::string dir = testing::make_temp_dir("bone_old") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(8);
  std::vector<io::NamedTensor> old;
  at::Tensor t0;
  for (int layer = 0; layer < 2; ++layer) {
    const at::Tensor t = at::randn({4, 8, 8}, gen) * 0.1;
    if (layer == 0) t0 = t;
    old.push_back({"base_model.model.model.layers." + std::to_string(layer) + ".self_attn.q_proj.bone_block", t});
  }
  ASSERT_TRUE(io::save_safetensors(dir + "/adapter_model.safetensors", old).ok());
  json cfg = read_json(dir + "/adapter_config.json");
  cfg["peft_type"] = "BONE";
  write_text(dir + "/adapter_config.json", cfg.dump());
  json sidecar = read_json(dir + "/peft_cpp.json");
  ASSERT_FALSE(sidecar["config"]["bone"].contains("block_key"));
  PeftModel other(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = other.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  expect_bat_merge(other, t0);
}

TEST(BoneFormat, UnsupportedPeftOptionsAreClearErrors) {
  const std::string cfg = R"({"peft_type": "MISS", "r": 8, "init_weights": "mini", "mini_r": 4,
                               "target_modules": ["q_proj"]})";
  const HandWritten h = write_peft_dir(cfg, "miss_block", {"q_proj"}, {8, 4}, {});
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 6));
  const absl::Status st = pm.load_adapter(h.dir);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnimplemented) << st;
  EXPECT_NE(std::string(st.message()).find("mini"), std::string::npos) << st;
}

}  // namespace
}  // namespace peft
