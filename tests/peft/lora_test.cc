// LoRA specifics: Hugging Face PEFT file layout (keys, shapes,
// adapter_config.json) for LLaMA and GPT-2, scaling and init formulas,
// weighted combinations, and the errors of the adapter core.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "peft/io/safetensors.h"
#include "peft/lora/lora.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft {
namespace {

using nlohmann::json;

proto::AdapterConfig lora(int r, float alpha, const std::string& preset) {
  proto::AdapterConfig c;
  c.mutable_lora()->set_r(r);
  c.mutable_lora()->set_alpha(alpha);
  if (!preset.empty()) c.mutable_target()->set_preset(preset);
  return c;
}

json read_json(const std::string& p) {
  std::ifstream in(p);
  return json::parse(in);
}

TEST(LoraFormat, LlamaKeysShapesAndConfigArePeft) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  ASSERT_TRUE(pm.add_adapter(lora(4, 16, "attention")).ok());
  const std::string dir = testing::make_temp_dir("lora") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir, "default", false, "my/base").ok());
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  std::map<std::string, std::vector<int64_t>> got;
  for (const io::TensorInfo& t : (*file)->tensors()) got[t.name] = t.shape;
  std::map<std::string, std::vector<int64_t>> want;
  for (int l = 0; l < 2; ++l) {
    const std::string p = "base_model.model.model.layers." + std::to_string(l) + ".self_attn.";
    want[p + "q_proj.lora_A.weight"] = {4, 32};
    want[p + "q_proj.lora_B.weight"] = {32, 4};
    want[p + "k_proj.lora_A.weight"] = {4, 32};
    want[p + "k_proj.lora_B.weight"] = {16, 4};
    want[p + "v_proj.lora_A.weight"] = {4, 32};
    want[p + "v_proj.lora_B.weight"] = {16, 4};
    want[p + "o_proj.lora_A.weight"] = {4, 32};
    want[p + "o_proj.lora_B.weight"] = {32, 4};
  }
  EXPECT_EQ(got, want);
  json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["peft_type"], "LORA");
  EXPECT_EQ(cfg["task_type"], "CAUSAL_LM");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["target_modules"], json({"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_EQ(cfg["fan_in_fan_out"], false);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  EXPECT_EQ(cfg["base_model_name_or_path"], "my/base");
  // Only keys PEFT's LoraConfig knows (older PEFT rejects unknown ones).
  const std::set<std::string> known = {"r",
                                       "lora_alpha",
                                       "lora_dropout",
                                       "use_rslora",
                                       "init_lora_weights",
                                       "bias",
                                       "fan_in_fan_out",
                                       "peft_type",
                                       "task_type",
                                       "base_model_name_or_path",
                                       "inference_mode",
                                       "target_modules",
                                       "layers_to_transform"};
  for (const auto& item : cfg.items()) EXPECT_TRUE(known.count(item.key())) << item.key();
}

TEST(LoraFormat, Gpt2KeysUseLogicalInOut) {
  PeftModel pm(testing::tiny_model(testing::tiny_gpt2_config(), 1));
  proto::AdapterConfig c = lora(4, 8, "");
  c.mutable_target()->add_modules("c_attn");
  ASSERT_TRUE(pm.add_adapter(c).ok());
  const std::string dir = testing::make_temp_dir("lora") + "/g";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  const io::TensorInfo* a = (*file)->find("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
  const io::TensorInfo* b = (*file)->find("base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 32}));  // [r, in]
  EXPECT_EQ(b->shape, (std::vector<int64_t>{96, 4}));  // [out = 3 * n_embd, r]
  EXPECT_EQ((*file)->tensors().size(), 4u);
  json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["fan_in_fan_out"], true);
  EXPECT_EQ(cfg["target_modules"], json({"c_attn"}));
}

TEST(LoraFormat, LayerSubsetWritesExactRegexAndReadsPeftFiles) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  proto::AdapterConfig c = lora(2, 4, "");
  c.mutable_target()->add_modules("q_proj");
  c.mutable_target()->add_layers(1);
  ASSERT_TRUE(pm.add_adapter(c).ok());
  ASSERT_EQ(pm.targets("default").size(), 1u);
  const std::string dir = testing::make_temp_dir("lora") + "/sub";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["target_modules"], "^(model\\.layers\\.1\\.self_attn\\.q_proj)$");
  // Without our sidecar the directory is a plain PEFT one; it still loads.
  std::filesystem::remove(dir + "/peft_cpp.json");
  PeftModel other(testing::tiny_model(testing::tiny_llama_config(), 1));
  absl::Status st = other.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(other.targets("default").size(), 1u);
  EXPECT_EQ(other.targets("default")[0].path, "model.layers.1.self_attn.q_proj");
  EXPECT_EQ(other.config("default")->lora().r(), 2);
  EXPECT_FLOAT_EQ(other.config("default")->lora().alpha(), 4);
}

// PEFT wraps every adapted module, so the bias of an adapted projection is
// `<module>.base_layer.bias` in its state dict; a `<module>.bias` key would
// be dropped silently (PEFT loads with strict=False). Biases of modules
// without an adapter keep their own names (bias="all").
TEST(LoraFormat, AdaptedModuleBiasesUsePeftBaseLayerKeys) {
  for (proto::LoraOptions::Bias bias : {proto::LoraOptions::ALL, proto::LoraOptions::LORA_ONLY}) {
    PeftModel pm(testing::tiny_model(testing::tiny_gpt2_config(), 3));
    proto::AdapterConfig c = lora(2, 4, "");
    c.mutable_target()->add_modules("c_attn");
    c.mutable_lora()->set_bias(bias);
    ASSERT_TRUE(pm.add_adapter(c).ok());
    const std::string dir = testing::make_temp_dir("lora_bias") + "/a";
    ASSERT_TRUE(pm.save_adapter(dir).ok());
    auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
    ASSERT_TRUE(file.ok());
    std::set<std::string> got;
    for (const io::TensorInfo& t : (*file)->tensors()) got.insert(t.name);
    std::set<std::string> want;
    for (int l = 0; l < 2; ++l) {
      const std::string p = "base_model.model.transformer.h." + std::to_string(l) + ".";
      want.insert(p + "attn.c_attn.lora_A.weight");
      want.insert(p + "attn.c_attn.lora_B.weight");
      want.insert(p + "attn.c_attn.base_layer.bias");
      if (bias == proto::LoraOptions::ALL) {
        for (const char* m : {"ln_1.bias", "attn.c_proj.bias", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias"}) {
          want.insert(p + m);
        }
      }
    }
    if (bias == proto::LoraOptions::ALL) want.insert("base_model.model.transformer.ln_f.bias");
    EXPECT_EQ(got, want) << "bias " << static_cast<int>(bias);
    const io::TensorInfo* b = (*file)->find("base_model.model.transformer.h.0.attn.c_attn.base_layer.bias");
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(b->shape, (std::vector<int64_t>{96}));
  }
}

// Files written before the key change (`<module>.bias` for an adapted
// module) still load, with the same values.
TEST(LoraFormat, OldAdaptedBiasKeyStillLoads) {
  PeftModel pm(testing::tiny_model(testing::tiny_gpt2_config(), 3));
  proto::AdapterConfig c = lora(2, 4, "");
  c.mutable_target()->add_modules("c_attn");
  c.mutable_lora()->set_bias(proto::LoraOptions::LORA_ONLY);
  ASSERT_TRUE(pm.add_adapter(c).ok());
  pm.freeze_base_();
  {
    torch::NoGradGuard ng;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
    for (auto& [n, p] : pm.trainable_parameters()) p.normal_(0, 0.3, gen);
  }
  const std::string dir = testing::make_temp_dir("lora_bias") + "/old";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  // Rewrite the tensors under the old names.
  std::vector<io::NamedTensor> renamed;
  {
    auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
    ASSERT_TRUE(file.ok());
    for (const io::TensorInfo& t : (*file)->tensors()) {
      std::string key = t.name;
      const std::string wrapped = ".base_layer.bias";
      if (key.size() > wrapped.size() && key.compare(key.size() - wrapped.size(), wrapped.size(), wrapped) == 0) {
        key = key.substr(0, key.size() - wrapped.size()) + ".bias";
      }
      renamed.push_back({key, *(*file)->load(t.name)});
    }
  }
  ASSERT_TRUE(io::save_safetensors(dir + "/adapter_model.safetensors", renamed).ok());
  PeftModel other(testing::tiny_model(testing::tiny_gpt2_config(), 3));
  const absl::Status st = other.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  for (int l = 0; l < 2; ++l) {
    const std::string name = "transformer.h." + std::to_string(l) + ".attn.c_attn.bias";
    at::Tensor want, got;
    for (const models::HfParameter& p : pm.model().hf_parameters()) {
      if (p.hf_name == name) want = p.tensor;
    }
    for (const models::HfParameter& p : other.model().hf_parameters()) {
      if (p.hf_name == name) got = p.tensor;
    }
    ASSERT_TRUE(want.defined() && got.defined()) << name;
    EXPECT_TRUE(at::equal(got, want)) << name;
  }
  const at::Tensor ids = testing::sample_ids(80, 1, 7, 2);
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::equal(other.model().forward(ids, nullptr), pm.model().forward(ids, nullptr)));
}

// A PEFT directory written by hand with rank_pattern / alpha_pattern: PEFT
// gives module m the value of the first pattern key k (a regex) for which
// re.match(r"(.*\.)?(k)$", m) holds, separately for ranks and alphas.
//  - "proj" matches no module: the character before "proj" is not a dot.
//  - layer 1's v_proj matches "layers\.1\..*v_proj" first: r 4.
//  - layer 0's v_proj matches only "v_proj": r 5.
//  - every v_proj gets alpha 10, q_proj keeps r 2, alpha 4.
TEST(LoraFormat, ReadsPeftRankAndAlphaPatterns) {
  const std::string cfg = R"({
  "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4, "lora_dropout": 0.0,
  "init_lora_weights": true, "bias": "none", "fan_in_fan_out": false, "use_rslora": false,
  "target_modules": ["q_proj", "v_proj"],
  "rank_pattern": {"proj": 3, "layers\\.1\\..*v_proj": 4, "v_proj": 5},
  "alpha_pattern": {"v_proj": 10}
})";
  struct Expect {
    std::string path;
    int64_t r;
    double scaling;
  };
  const std::vector<Expect> expect = {{"model.layers.0.self_attn.q_proj", 2, 4.0 / 2},
                                      {"model.layers.0.self_attn.v_proj", 5, 10.0 / 5},
                                      {"model.layers.1.self_attn.q_proj", 2, 4.0 / 2},
                                      {"model.layers.1.self_attn.v_proj", 4, 10.0 / 4}};
  const std::string dir = testing::make_temp_dir("lora_pattern");
  { std::ofstream(dir + "/adapter_config.json") << cfg; }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(17);
  std::vector<io::NamedTensor> tensors;
  std::map<std::string, std::pair<at::Tensor, at::Tensor>> ab;
  for (const Expect& e : expect) {
    const int64_t out = e.path.find("q_proj") != std::string::npos ? 32 : 16;
    const at::Tensor a = at::randn({e.r, 32}, gen) * 0.3, b = at::randn({out, e.r}, gen) * 0.3;
    tensors.push_back({"base_model.model." + e.path + ".lora_A.weight", a});
    tensors.push_back({"base_model.model." + e.path + ".lora_B.weight", b});
    ab[e.path] = {a, b};
  }
  ASSERT_TRUE(io::save_safetensors(dir + "/adapter_model.safetensors", tensors).ok());

  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 4));
  const absl::Status st = pm.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(pm.targets("default").size(), 4u);
  // Each projection: x Wᵀ + (alpha_m / r_m) x Aᵀ Bᵀ, written out here.
  const at::Tensor x = at::randn({3, 32}, gen);
  torch::NoGradGuard ng;
  for (const LinearTarget& t : pm.targets("default")) {
    const auto& [a, b] = ab.at(t.path);
    double scaling = 0;
    for (const Expect& e : expect) {
      if (e.path == t.path) scaling = e.scaling;
    }
    const at::Tensor want = at::matmul(x, t.linear->weight.t()) + scaling * at::matmul(at::matmul(x, a.t()), b.t());
    EXPECT_LE((t.linear->forward(x) - want).abs().max().item<double>(), 1e-5) << t.path;
  }
  // The whole model: the base with W += s B A folded in by hand.
  std::shared_ptr<models::CausalLm> ref = testing::tiny_model(testing::tiny_llama_config(), 4);
  for (const models::HfParameter& p : ref->hf_parameters()) {
    for (const Expect& e : expect) {
      if (p.hf_name != e.path + ".weight") continue;
      const auto& [a, b] = ab.at(e.path);
      p.tensor.add_(at::matmul(b, a) * e.scaling);
    }
  }
  const at::Tensor ids = testing::sample_ids(96, 2, 9, 6);
  const at::Tensor got = pm.model().forward(ids, nullptr), want = ref->forward(ids, nullptr);
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
}

// The same options from a recipe (text format, map syntax): applied per
// module, written to adapter_config.json in their order, and read back.
TEST(LoraFormat, RecipePatternsApplyAndRoundTrip) {
  proto::AdapterConfig c;
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(R"pb(
                                                              lora {
                                                                r: 2
                                                                alpha: 4
                                                                rank_pattern { key: "v_proj" value: 4 }
                                                                rank_pattern { key: "layers\\.0\\..*" value: 3 }
                                                                alpha_pattern { key: "q_proj" value: 6 }
                                                              }
                                                              target { modules: "q_proj" modules: "v_proj" }
                                                            )pb",
                                                            &c));
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 2));
  ASSERT_TRUE(pm.add_adapter(c).ok());
  // v_proj: "v_proj" is listed first, so layer 0's v_proj takes 4, not 3.
  const std::map<std::string, std::pair<int64_t, double>> want = {{"model.layers.0.self_attn.q_proj", {3, 6.0 / 3}},
                                                                  {"model.layers.0.self_attn.v_proj", {4, 4.0 / 4}},
                                                                  {"model.layers.1.self_attn.q_proj", {2, 6.0 / 2}},
                                                                  {"model.layers.1.self_attn.v_proj", {4, 4.0 / 4}}};
  for (const LinearTarget& t : pm.targets("default")) {
    const auto* l = dynamic_cast<LoraLinearImpl*>(t.linear->adapter("default"));
    ASSERT_NE(l, nullptr);
    EXPECT_EQ(l->lora_A.size(0), want.at(t.path).first) << t.path;
    EXPECT_DOUBLE_EQ(l->scaling, want.at(t.path).second) << t.path;
  }
  pm.freeze_base_();
  EXPECT_EQ(pm.num_trainable(), 3 * (32 + 32) + 4 * (32 + 16) + 2 * (32 + 32) + 4 * (32 + 16));
  const std::string dir = testing::make_temp_dir("lora_pat") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  std::ifstream in(dir + "/adapter_config.json");
  const nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(in);
  std::vector<std::string> order;
  for (const auto& item : cfg["rank_pattern"].items()) order.push_back(item.key());
  EXPECT_EQ(order, (std::vector<std::string>{"v_proj", "layers\\.0\\..*"}));
  EXPECT_EQ(cfg["rank_pattern"]["v_proj"], 4);
  EXPECT_EQ(cfg["alpha_pattern"]["q_proj"], 6.0);
  std::filesystem::remove(dir + "/peft_cpp.json");
  PeftModel other(testing::tiny_model(testing::tiny_llama_config(), 2));
  const absl::Status st = other.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  ASSERT_EQ(other.config("default")->lora().rank_pattern_size(), 2);
  EXPECT_EQ(other.config("default")->lora().rank_pattern(0).key(), "v_proj");
  const at::Tensor ids = testing::sample_ids(96, 1, 7, 1);
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::equal(other.model().forward(ids, nullptr), pm.model().forward(ids, nullptr)));
}

TEST(LoraFormat, BadPatternsNameTheProblem) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 2));
  auto with_rank = [](const std::string& key, int value) {
    proto::AdapterConfig c = lora(2, 4, "attention");
    auto* e = c.mutable_lora()->add_rank_pattern();
    e->set_key(key);
    e->set_value(value);
    return c;
  };
  auto msg = [](const absl::Status& s) { return std::string(s.message()); };
  EXPECT_NE(msg(pm.add_adapter(with_rank("v_proj", 0))).find("lora.rank_pattern['v_proj'] must be a positive rank"),
            std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(with_rank("(v_proj", 2))).find("'(v_proj' is not a valid regular expression"),
            std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(with_rank("v_proj", 20))).find("lora.r = 20 (from rank_pattern) is larger than"),
            std::string::npos);
  // A repetition of a repetition backtracks exponentially in std::regex: the
  // fuzzer's key (found by fuzz/adapter_config_fuzz.cc) hung the process for
  // over 60 s before this check. Refused before it is compiled or matched.
  const std::string hostile = "mo" + std::string(40, '*') + "ttn.v_proj";
  EXPECT_NE(msg(pm.add_adapter(with_rank(hostile, 2))).find("repeats a repetition"), std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(with_rank("(a+)*v_proj", 2))).find("repeats a group that holds a repetition"),
            std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(with_rank("((s+)_)+proj", 2))).find("repeats a group that holds a repetition"),
            std::string::npos);
  // Ordinary patterns are kept: lazy quantifiers, classes, alternations.
  for (const char* fine : {"layers\\.[0-9]+\\.self_attn\\.v_proj", "q_proj|v_proj", ".*?v_proj", "[*+]?v_proj",
                           "layers\\.(0|1)\\..*v_proj", "v_pro{1}j"}) {
    absl::Status s = pm.add_adapter(with_rank(fine, 2));
    EXPECT_TRUE(s.ok()) << fine << ": " << s;
    if (s.ok()) {
      EXPECT_TRUE(pm.delete_adapter("default").ok());
    }
  }
  proto::AdapterConfig bad_alpha = lora(2, 4, "attention");
  auto* e = bad_alpha.mutable_lora()->add_alpha_pattern();
  e->set_key("q_proj");
  e->set_value(-1);
  EXPECT_NE(msg(pm.add_adapter(bad_alpha)).find("lora.alpha_pattern['q_proj'] must be a positive alpha"),
            std::string::npos);
  EXPECT_TRUE(pm.adapter_names().empty());
  // In adapter_config.json.
  const std::string dir = testing::make_temp_dir("lora_badpat");
  std::ofstream(dir + "/adapter_config.json")
      << R"({"peft_type": "LORA", "r": 2, "target_modules": ["q_proj"], "rank_pattern": {"q_proj": 2.5}})";
  const std::string m = msg(pm.load_adapter(dir));
  EXPECT_NE(m.find("rank_pattern['q_proj'] must be an integer rank"), std::string::npos) << m;
}

// PiSSA / OLoRA rewrite the base weights. Saved with convert_to_lora, the
// adapter is an ordinary rank-2r LoRA on the ORIGINAL base: loaded there it
// gives the logits PiSSA/OLoRA gave on its residual base (fp32, 1e-5), after
// the trained factors moved away from their init.
void expect_plain_lora_export(proto::LoraOptions::Init init, bool rslora) {
  SCOPED_TRACE(proto::LoraOptions::Init_Name(init) + (rslora ? " rslora" : ""));
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 9));
  proto::AdapterConfig c = lora(2, 4, "attention");
  c.mutable_lora()->set_init(init);
  c.mutable_lora()->set_use_rslora(rslora);
  ASSERT_TRUE(pm.add_adapter(c, 3).ok());
  pm.freeze_base_();
  {
    torch::NoGradGuard ng;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(11);
    for (auto& [n, p] : pm.trainable_parameters()) p.add_(at::randn(p.sizes(), gen) * 0.05);
  }
  const at::Tensor ids = testing::sample_ids(96, 2, 9, 4);
  at::Tensor trained;
  {
    torch::NoGradGuard ng;
    trained = pm.model().forward(ids, nullptr);
  }
  const std::string dir = testing::make_temp_dir("lora_plain") + "/a";
  const absl::Status st = pm.save_adapter(dir, "default", false, "", /*convert_to_lora=*/true);
  ASSERT_TRUE(st.ok()) << st;

  // PEFT's numbers: r' = 2r, alpha' = 2 alpha (alpha sqrt 2 with rsLoRA), init true.
  const json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["r"], 4);
  EXPECT_NEAR(cfg["lora_alpha"].get<double>(), rslora ? 4 * std::sqrt(2.0) : 8.0, 1e-6);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  EXPECT_EQ(cfg["use_rslora"], rslora);
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  const std::string q = "base_model.model.model.layers.0.self_attn.q_proj.";
  EXPECT_EQ((*file)->find(q + "lora_A.weight")->shape, (std::vector<int64_t>{4, 32}));
  EXPECT_EQ((*file)->find(q + "lora_B.weight")->shape, (std::vector<int64_t>{32, 4}));
  EXPECT_EQ((*file)->tensors().size(), 16u);
  // The first r rows of A' / columns of B' are the trained A / B.
  const LinearTarget t0 = pm.targets("default")[0];
  ASSERT_EQ(t0.path, "model.layers.0.self_attn.q_proj");
  const auto* trained_layer = dynamic_cast<LoraLinearImpl*>(t0.linear->adapter("default"));
  ASSERT_NE(trained_layer, nullptr);
  EXPECT_TRUE(at::equal((*(*file)->load(q + "lora_A.weight")).narrow(0, 0, 2), trained_layer->lora_A.detach()));
  EXPECT_TRUE(at::equal((*(*file)->load(q + "lora_B.weight")).narrow(1, 0, 2), trained_layer->lora_B.detach()));

  // Ours and a plain PEFT directory (no sidecar) both load on the original base.
  for (bool sidecar : {true, false}) {
    if (!sidecar) std::filesystem::remove(dir + "/peft_cpp.json");
    PeftModel original(testing::tiny_model(testing::tiny_llama_config(), 9));
    const absl::Status ls = original.load_adapter(dir);
    ASSERT_TRUE(ls.ok()) << ls;
    EXPECT_EQ(original.config("default")->lora().init(), proto::LoraOptions::DEFAULT);
    EXPECT_EQ(original.config("default")->lora().r(), 4);
    torch::NoGradGuard ng;
    const at::Tensor got = original.model().forward(ids, nullptr);
    EXPECT_LE((got - trained).abs().max().item<double>(), 1e-5 * trained.abs().max().item<double>())
        << "sidecar " << sidecar;
  }
}

TEST(LoraPlainExport, PissaOnTheOriginalBaseMatches) { expect_plain_lora_export(proto::LoraOptions::PISSA, false); }
TEST(LoraPlainExport, OloraOnTheOriginalBaseMatches) { expect_plain_lora_export(proto::LoraOptions::OLORA, false); }
TEST(LoraPlainExport, RsloraKeepsTheScaling) { expect_plain_lora_export(proto::LoraOptions::PISSA, true); }

TEST(LoraPlainExport, RefusalsNameTheProblemAndWriteNothing) {
  const std::string root = testing::make_temp_dir("lora_plain_err");
  {
    PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 9));
    ASSERT_TRUE(pm.add_adapter(lora(2, 4, "attention")).ok());
    const absl::Status st = pm.save_adapter(root + "/plain", "default", false, "", true);
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(std::string(st.message()).find("init PISSA or OLORA"), std::string::npos) << st;
    EXPECT_FALSE(std::filesystem::exists(root + "/plain"));
  }
  {
    PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 9));
    proto::AdapterConfig c = lora(2, 4, "attention");
    c.mutable_lora()->set_init(proto::LoraOptions::PISSA);
    c.mutable_lora()->set_use_rslora(true);
    auto* rp = c.mutable_lora()->add_rank_pattern();
    rp->set_key("q_proj");
    rp->set_value(4);
    ASSERT_TRUE(pm.add_adapter(c).ok());
    const absl::Status st = pm.save_adapter(root + "/rs", "default", false, "", true);
    EXPECT_NE(std::string(st.message()).find("use_rslora and rank_pattern or alpha_pattern"), std::string::npos) << st;
    EXPECT_FALSE(std::filesystem::exists(root + "/rs"));
  }
  {
    PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 9));
    proto::AdapterConfig c;
    c.mutable_bone()->set_r(8);
    c.mutable_target()->add_modules("q_proj");
    ASSERT_TRUE(pm.add_adapter(c).ok());
    const absl::Status st = pm.save_adapter(root + "/bone", "default", false, "", true);
    EXPECT_NE(std::string(st.message()).find("is a bone adapter"), std::string::npos) << st;
    EXPECT_FALSE(std::filesystem::exists(root + "/bone"));
  }
}

// With rank_pattern / alpha_pattern, every value doubles (PEFT), so each
// module keeps its scaling.
TEST(LoraPlainExport, PatternValuesDouble) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 9));
  proto::AdapterConfig c = lora(2, 4, "attention");
  c.mutable_lora()->set_init(proto::LoraOptions::OLORA);
  auto* rp = c.mutable_lora()->add_rank_pattern();
  rp->set_key("v_proj");
  rp->set_value(3);
  auto* ap = c.mutable_lora()->add_alpha_pattern();
  ap->set_key("q_proj");
  ap->set_value(5);
  ASSERT_TRUE(pm.add_adapter(c).ok());
  const std::string dir = testing::make_temp_dir("lora_plain_pat") + "/a";
  ASSERT_TRUE(pm.save_adapter(dir, "default", false, "", true).ok());
  const json cfg = read_json(dir + "/adapter_config.json");
  EXPECT_EQ(cfg["rank_pattern"], json({{"v_proj", 6}}));
  EXPECT_EQ(cfg["alpha_pattern"], json({{"q_proj", 10.0}}));
  auto file = io::SafetensorsFile::open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)->find("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")->shape,
            (std::vector<int64_t>{6, 32}));
}

TEST(LoraMath, ScalingAndInit) {
  EXPECT_DOUBLE_EQ(lora_scaling(16, 4, false), 4.0);
  EXPECT_DOUBLE_EQ(lora_scaling(16, 4, true), 8.0);
  at::Tensor w = at::randn({24, 40});
  proto::LoraOptions o;
  o.set_r(6);
  LoraLinearImpl l(o, w, 7);
  EXPECT_EQ(l.lora_B.abs().max().item<float>(), 0.0f);
  EXPECT_LE(l.lora_A.abs().max().item<float>(), 1.0 / std::sqrt(40.0));  // U(±1/sqrt(in))
  EXPECT_GT(l.lora_A.abs().max().item<float>(), 0.8 / std::sqrt(40.0));
  // PiSSA: residual + s B A reconstructs W, and s B A is the best rank-r part.
  at::Tensor w2 = at::randn({24, 40});
  const at::Tensor orig = w2.clone();
  o.set_init(proto::LoraOptions::PISSA);
  LoraLinearImpl p(o, w2, 7);
  EXPECT_LE((w2 + p.delta_weight() - orig).abs().max().item<float>(), 1e-5);
  auto sv = at::linalg_svdvals(orig);
  EXPECT_NEAR(at::linalg_svdvals(w2)[0].item<float>(), sv[6].item<float>(), 1e-4);
  // Forward = base + s B A x.
  at::Tensor x = at::randn({3, 40});
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::allclose(p.forward(x, w2, {}), at::matmul(x, orig.t()), 1e-4, 1e-4));
}

TEST(LoraCombination, WeightedAdaptersSumTheirDeltas) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  proto::AdapterConfig a = lora(2, 2, "attention");
  a.set_name("a");
  a.mutable_lora()->set_init(proto::LoraOptions::GAUSSIAN);
  proto::AdapterConfig b = a;
  b.set_name("b");
  ASSERT_TRUE(pm.add_adapter(a, 1).ok());
  ASSERT_TRUE(pm.add_adapter(b, 2).ok());
  ASSERT_TRUE(pm.set_active({{"a", 1.0}}).ok());
  pm.freeze_base_();
  {
    torch::NoGradGuard ng;
    for (auto& [n, p] : pm.trainable_parameters()) p.normal_(0, 0.2);
  }
  ASSERT_TRUE(pm.set_active({{"b", 1.0}}).ok());
  pm.freeze_base_();
  {
    torch::NoGradGuard ng;
    for (auto& [n, p] : pm.trainable_parameters()) p.normal_(0, 0.2);
  }
  const at::Tensor ids = testing::sample_ids(96, 1, 10, 3);
  torch::NoGradGuard ng;
  ASSERT_TRUE(pm.set_active(std::vector<std::pair<std::string, double>>{}).ok());
  const at::Tensor base = pm.model().forward(ids, nullptr);
  ASSERT_TRUE(pm.set_active({{"a", 1.0}}).ok());
  const at::Tensor la = pm.model().forward(ids, nullptr);
  ASSERT_TRUE(pm.set_active({{"b", 1.0}}).ok());
  const at::Tensor lb = pm.model().forward(ids, nullptr);
  ASSERT_TRUE(pm.set_active({{"a", 0.5}, {"b", 0.5}}).ok());
  const at::Tensor mix = pm.model().forward(ids, nullptr);
  EXPECT_FALSE(at::allclose(mix, la));
  // Merging the weighted set gives the same outputs as running it.
  ASSERT_TRUE(pm.merge_().ok());
  EXPECT_TRUE(at::allclose(pm.model().forward(ids, nullptr), mix, 1e-5, 1e-5));
  ASSERT_TRUE(pm.merge_and_unload_().ok() == false);  // already merged
  ASSERT_TRUE(pm.unmerge_().ok());
  EXPECT_TRUE(at::allclose(pm.model().forward(ids, nullptr), mix, 1e-5, 1e-5));
  ASSERT_TRUE(pm.merge_and_unload_().ok());
  EXPECT_TRUE(pm.adapter_names().empty());
  EXPECT_TRUE(at::allclose(pm.model().forward(ids, nullptr), mix, 1e-5, 1e-5));
  EXPECT_EQ(pm.model().module().named_parameters().size(), pm.model().hf_parameters().size());
  (void)base;
  (void)lb;
}

TEST(AdapterErrors, EachBadInputNamesTheProblem) {
  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 1));
  auto msg = [](const absl::Status& s) { return std::string(s.message()); };
  proto::AdapterConfig none;
  EXPECT_NE(msg(pm.add_adapter(none)).find("names no method"), std::string::npos);
  EXPECT_NE(msg(find_method("dora").status()).find("unknown adapter method 'dora'"), std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(lora(0, 8, "attention"))).find("lora.r must be positive"), std::string::npos);
  EXPECT_NE(msg(pm.add_adapter(lora(40, 8, "attention"))).find("larger than the dimension"), std::string::npos);
  proto::AdapterConfig bad_target = lora(2, 2, "");
  bad_target.mutable_target()->add_modules("q_prj");
  const std::string m = msg(pm.add_adapter(bad_target));
  EXPECT_NE(m.find("target module 'q_prj' matches no module"), std::string::npos) << m;
  EXPECT_NE(m.find("available: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
            std::string::npos)
      << m;
  proto::AdapterConfig bad_regex = lora(2, 2, "");
  bad_regex.mutable_target()->set_regex(".*nothing.*");
  EXPECT_NE(msg(pm.add_adapter(bad_regex)).find("match no module"), std::string::npos);
  proto::AdapterConfig bad_layer = lora(2, 2, "attention");
  bad_layer.mutable_target()->add_layers(7);
  EXPECT_NE(msg(pm.add_adapter(bad_layer)).find("outside the model's 0..1"), std::string::npos);
  ASSERT_TRUE(pm.add_adapter(lora(2, 2, "attention")).ok());
  EXPECT_EQ(pm.add_adapter(lora(2, 2, "mlp")).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_TRUE(pm.adapter_names().size() == 1);

  // An adapter saved for another base (different hidden size) is refused,
  // and the model is unchanged.
  const std::string dir = testing::make_temp_dir("lora") + "/x";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  models::ModelConfig wider = testing::tiny_llama_config();
  wider.llama.hidden_size = 48;
  wider.llama.head_dim = 12;
  PeftModel other(testing::tiny_model(wider, 1));
  const at::Tensor ids = testing::sample_ids(96, 1, 6, 1);
  at::Tensor before;
  {
    torch::NoGradGuard ng;
    before = other.model().forward(ids, nullptr);
  }
  const std::string lm = msg(other.load_adapter(dir));
  EXPECT_NE(lm.find("different base model"), std::string::npos) << lm;
  EXPECT_TRUE(other.adapter_names().empty());
  torch::NoGradGuard ng;
  EXPECT_TRUE(at::equal(other.model().forward(ids, nullptr), before));
}

}  // namespace
}  // namespace peft
