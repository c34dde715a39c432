// The LLaMA-family model types (llama, mistral, qwen2): config.json parsing
// and round trips on the real configs in shared/assets/configs, and the
// forward pass of seeded small models built from mistral-tiny-window.json
// and qwen2-tiny-bias.json against an independent plain-ATen reference
// written here (per-head loops, an explicit i - W < j <= i window mask built
// element by element, RoPE applied per rotation pair in double precision),
// generation with the KV cache against greedy decoding by full recompute
// beyond the window, save/load, parameter estimates and GGUF export.
//
// Every window check also asserts that the same reference WITHOUT the window
// is far from the model, so a model ignoring the window fails.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "models/config.h"
#include "models/generate.h"
#include "models/gguf/export.h"
#include "models/gguf/vocab.h"
#include "models/model_io.h"
#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"

namespace peft::models {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string config_file(const std::string& name) { return testing::shared_assets_dir() + "/configs/" + name; }

#define SKIP_WITHOUT_ASSETS() \
  if (testing::shared_assets_dir().empty()) GTEST_SKIP() << testing::kNoAssetsReason

ModelConfig read_config(const std::string& name) {
  absl::StatusOr<ModelConfig> c = read_model_config(config_file(name));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : ModelConfig{};
}

// ---------------------------------------------------------------------------
// The independent reference.

struct RefModel {
  std::map<std::string, at::Tensor> p;  // Hugging Face name -> float64 copy
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  double theta = 10000.0, eps = 1e-6;
  bool tied = false;
  std::vector<int64_t> windows;  // per layer, 0 = none
};

RefModel reference_of(CausalLm& lm, std::vector<int64_t> windows) {
  RefModel r;
  for (const HfParameter& hp : lm.hf_parameters()) r.p[hp.hf_name] = hp.tensor.detach().to(at::kDouble).clone();
  const LlamaConfig& c = lm.config().llama;
  r.heads = c.num_attention_heads;
  r.kv_heads = c.num_key_value_heads;
  r.head_dim = c.head_dim;
  r.theta = c.rope_theta;
  r.eps = c.rms_norm_eps;
  r.tied = c.tie_word_embeddings;
  r.windows = std::move(windows);
  return r;
}

at::Tensor ref_linear(const RefModel& m, const std::string& name, const at::Tensor& x) {
  at::Tensor y = at::matmul(x, m.p.at(name + ".weight").t());
  if (m.p.count(name + ".bias")) y = y + m.p.at(name + ".bias");
  return y;
}

at::Tensor ref_rms(const at::Tensor& x, const at::Tensor& w, double eps) {
  return x / at::sqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w;
}

// x [T, heads, D] at positions 0..T-1: each pair (x_i, x_{i+D/2}) turns by
// angle pos * theta^(-2i/D).
at::Tensor ref_rope(const at::Tensor& x, double theta) {
  const int64_t t = x.size(0), d = x.size(2), half = d / 2;
  at::Tensor out = x.clone();
  for (int64_t i = 0; i < half; ++i) {
    const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(d));
    const at::Tensor angle = at::arange(t, at::kDouble).mul(freq).view({t, 1});  // [T, 1]
    const at::Tensor a = x.select(2, i), b = x.select(2, i + half);              // [T, heads]
    out.select(2, i).copy_(a * angle.cos() - b * angle.sin());
    out.select(2, i + half).copy_(b * angle.cos() + a * angle.sin());
  }
  return out;
}

// Allowed[i][j]: key j is visible to query i (causal, and within the window).
at::Tensor ref_mask(int64_t t, int64_t window) {
  at::Tensor allowed = at::zeros({t, t}, at::kBool);
  auto a = allowed.accessor<bool, 2>();
  for (int64_t i = 0; i < t; ++i) {
    for (int64_t j = 0; j < t; ++j) a[i][j] = j <= i && (window == 0 || j > i - window);
  }
  return allowed;
}

// Logits [T, V] (float64) of ids (batch 1).
at::Tensor reference_logits(const RefModel& m, const std::vector<int64_t>& ids) {
  const int64_t t = static_cast<int64_t>(ids.size()), hd = m.head_dim;
  at::Tensor x = m.p.at("model.embed_tokens.weight").index_select(0, at::tensor(ids, at::kLong));  // [T, C]
  for (size_t l = 0; l < m.windows.size(); ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const at::Tensor h = ref_rms(x, m.p.at(pre + "input_layernorm.weight"), m.eps);
    const at::Tensor q = ref_rope(ref_linear(m, pre + "self_attn.q_proj", h).view({t, m.heads, hd}), m.theta);
    const at::Tensor k = ref_rope(ref_linear(m, pre + "self_attn.k_proj", h).view({t, m.kv_heads, hd}), m.theta);
    const at::Tensor v = ref_linear(m, pre + "self_attn.v_proj", h).view({t, m.kv_heads, hd});
    const at::Tensor allowed = ref_mask(t, m.windows[l]);
    at::Tensor attn = at::zeros({t, m.heads, hd}, at::kDouble);
    for (int64_t head = 0; head < m.heads; ++head) {
      const int64_t g = head / (m.heads / m.kv_heads);
      at::Tensor s = at::matmul(q.select(1, head), k.select(1, g).t()) / std::sqrt(static_cast<double>(hd));
      s = s.masked_fill(allowed.logical_not(), -INFINITY);
      attn.select(1, head).copy_(at::matmul(at::softmax(s, -1), v.select(1, g)));
    }
    x = x + ref_linear(m, pre + "self_attn.o_proj", attn.view({t, m.heads * hd}));
    const at::Tensor h2 = ref_rms(x, m.p.at(pre + "post_attention_layernorm.weight"), m.eps);
    const at::Tensor gate = ref_linear(m, pre + "mlp.gate_proj", h2);
    const at::Tensor up = ref_linear(m, pre + "mlp.up_proj", h2);
    x = x + ref_linear(m, pre + "mlp.down_proj", gate * at::sigmoid(gate) * up);
  }
  x = ref_rms(x, m.p.at("model.norm.weight"), m.eps);
  return at::matmul(x, m.p.at(m.tied ? "model.embed_tokens.weight" : "lm_head.weight").t());
}

// ---------------------------------------------------------------------------
// Models under test.

// A seeded model of `config`: weights N(0, std), every bias N(0, 0.1).
std::shared_ptr<CausalLm> seeded(const ModelConfig& config, uint64_t seed, double std = 0.08) {
  absl::StatusOr<std::shared_ptr<CausalLm>> lm = create_model(config);
  EXPECT_TRUE(lm.ok()) << lm.status();
  init_weights_(**lm, seed, std);
  torch::NoGradGuard no_grad;
  at::Generator gen = at::detail::createCPUGenerator(seed + 1);
  for (const HfParameter& p : (*lm)->hf_parameters()) {
    if (p.hf_name.size() > 5 && p.hf_name.compare(p.hf_name.size() - 5, 5, ".bias") == 0) p.tensor.normal_(0, 0.1, gen);
  }
  return *lm;
}

std::vector<int64_t> seeded_ids(int64_t n, int64_t vocab, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  const at::Tensor t = at::randint(vocab, {n}, gen, at::kLong);
  return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
}

at::Tensor model_logits(CausalLm& lm, const std::vector<int64_t>& ids) {
  torch::NoGradGuard no_grad;
  const at::Tensor x = at::tensor(ids, at::kLong).view({1, static_cast<int64_t>(ids.size())});
  return lm.forward(x, nullptr)[0].to(at::kDouble);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

// mistral-tiny-window.json with a smaller vocabulary (the window, 64, and
// every attention size as in the file).
ModelConfig mistral_tiny() {
  ModelConfig c = read_config("mistral-tiny-window.json");
  c.llama.vocab_size = 1000;
  return c;
}

// qwen2-tiny-bias.json with a smaller vocabulary; `window` > 0 turns on
// use_sliding_window with that window from layer `from_layer` on.
ModelConfig qwen2_tiny(int64_t window = 0, int64_t from_layer = 0) {
  ModelConfig c = read_config("qwen2-tiny-bias.json");
  c.llama.vocab_size = 1000;
  c.eos_token_ids = {};
  c.bos_token_id = -1;
  if (window > 0) {
    c.llama.use_sliding_window = true;
    c.llama.sliding_window = window;
    c.llama.max_window_layers = from_layer;
  }
  return c;
}

// ---------------------------------------------------------------------------
// Configs.

TEST(ArchConfig, RealConfigsParse) {
  SKIP_WITHOUT_ASSETS();
  struct Case {
    const char* file;
    const char* model_type;
    int64_t window;  // attention_window of every layer
    bool qkv_bias;
  };
  for (const Case& k :
       {Case{"llama-3.2-1b.json", "llama", 0, false}, Case{"smollm2-135m.json", "llama", 0, false},
        Case{"tinyllama-1.1b.json", "llama", 0, false}, Case{"mistral-7b-v0.1.json", "mistral", 4096, false},
        Case{"mistral-tiny-window.json", "mistral", 64, false}, Case{"qwen2.5-0.5b.json", "qwen2", 0, true},
        Case{"qwen2-tiny-bias.json", "qwen2", 0, true}}) {
    SCOPED_TRACE(k.file);
    const ModelConfig c = read_config(k.file);
    EXPECT_EQ(c.arch, Architecture::kLlama);
    EXPECT_EQ(c.model_type(), k.model_type);
    EXPECT_EQ(c.llama.has_qkv_bias(), k.qkv_bias);
    EXPECT_FALSE(c.llama.has_o_bias());
    for (int64_t l = 0; l < c.llama.num_hidden_layers; ++l) EXPECT_EQ(c.llama.attention_window(l), k.window) << l;
  }
  const ModelConfig llama3 = read_config("llama-3.2-1b.json");
  EXPECT_EQ(llama3.llama.rope_scaling.rope_type, "llama3");
  EXPECT_EQ(llama3.llama.head_dim, 64);
  EXPECT_TRUE(llama3.llama.tie_word_embeddings);
  const ModelConfig qwen = read_config("qwen2.5-0.5b.json");
  EXPECT_EQ(qwen.llama.sliding_window, 32768);  // kept as read, though unused
  EXPECT_FALSE(qwen.llama.use_sliding_window);
  EXPECT_EQ(qwen.llama.max_window_layers, 24);
}

// A saved config.json keeps model_type and every key the original has, with
// its value (transformers' keys for that type), and is a fixed point.
TEST(ArchConfig, RoundTripKeepsKeysAndValues) {
  SKIP_WITHOUT_ASSETS();
  // Keys of the originals transformers' own classes do not define.
  const std::set<std::string> extras = {"is_llama_config", "rope_interleaved", "transformers_version"};
  for (const char* file : {"llama-3.2-1b.json", "smollm2-135m.json", "tinyllama-1.1b.json", "mistral-7b-v0.1.json",
                           "mistral-tiny-window.json", "qwen2.5-0.5b.json", "qwen2-tiny-bias.json"}) {
    SCOPED_TRACE(file);
    std::ifstream in(config_file(file));
    const json original = json::parse(in);
    const std::string written = model_config_to_json(read_config(file));
    const json out = json::parse(written);
    for (const auto& [key, value] : original.items()) {
      if (extras.count(key)) continue;
      ASSERT_TRUE(out.contains(key)) << key;
      if (value.is_number()) {
        EXPECT_DOUBLE_EQ(out[key].get<double>(), value.get<double>()) << key;
      } else if (value.is_object()) {
        for (const auto& [k2, v2] : value.items()) {
          ASSERT_TRUE(out[key].contains(k2)) << key << "." << k2;
          if (v2.is_number()) {
            EXPECT_DOUBLE_EQ(out[key][k2].get<double>(), v2.get<double>()) << key << "." << k2;
          } else {
            EXPECT_EQ(out[key][k2], v2) << key << "." << k2;
          }
        }
      } else {
        EXPECT_EQ(out[key], value) << key;
      }
    }
    absl::StatusOr<ModelConfig> again = parse_model_config(written);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(model_config_to_json(*again), written);
  }
  // The type-specific keys transformers writes.
  const json m = json::parse(model_config_to_json(read_config("mistral-tiny-window.json")));
  EXPECT_EQ(m["architectures"], json({"MistralForCausalLM"}));
  EXPECT_EQ(m["sliding_window"], 64);
  EXPECT_FALSE(m.contains("attention_bias"));
  const json q = json::parse(model_config_to_json(read_config("qwen2-tiny-bias.json")));
  EXPECT_EQ(q["architectures"], json({"Qwen2ForCausalLM"}));
  EXPECT_EQ(q["use_sliding_window"], false);
  EXPECT_EQ(q["max_window_layers"], 2);
  EXPECT_FALSE(q.contains("attention_bias") || q.contains("head_dim"));
}

TEST(ArchConfig, WindowFieldsAndErrors) {
  const std::string base = R"({"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 4,
                               "num_attention_heads": 2, "num_key_value_heads": 1)";
  auto parse = [&](const std::string& type, const std::string& more) {
    return parse_model_config(base + R"(, "model_type": ")" + type + "\"" + more + "}");
  };
  // Mistral: absent = transformers' default 4096, null = none.
  EXPECT_EQ(parse("mistral", "")->llama.attention_window(0), 4096);
  absl::StatusOr<ModelConfig> none = parse("mistral", R"(, "sliding_window": null)");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(none->llama.attention_window(3), 0);
  EXPECT_TRUE(json::parse(model_config_to_json(*none))["sliding_window"].is_null());
  for (const char* bad : {R"(, "sliding_window": 0)", R"(, "sliding_window": -4)", R"(, "sliding_window": "64")"}) {
    absl::StatusOr<ModelConfig> c = parse("mistral", bad);
    ASSERT_FALSE(c.ok()) << bad;
    EXPECT_NE(std::string(c.status().message()).find("sliding_window"), std::string::npos) << c.status();
  }
  // Mistral ignores attention_bias as transformers does (no biases at all).
  EXPECT_FALSE(parse("mistral", R"(, "attention_bias": true)")->llama.has_qkv_bias());
  // Qwen2: the window only with use_sliding_window, from max_window_layers on.
  absl::StatusOr<ModelConfig> q = parse("qwen2", R"(, "sliding_window": 8, "use_sliding_window": true,
                                                    "max_window_layers": 2)");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->llama.attention_window(0), 0);
  EXPECT_EQ(q->llama.attention_window(1), 0);
  EXPECT_EQ(q->llama.attention_window(2), 8);
  EXPECT_EQ(q->llama.attention_window(3), 8);
  EXPECT_EQ(parse("qwen2", R"(, "sliding_window": 8, "max_window_layers": 0)")->llama.attention_window(3), 0);
  absl::StatusOr<ModelConfig> typed = parse("qwen2", R"(, "sliding_window": 8, "use_sliding_window": true,
      "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"])");
  ASSERT_TRUE(typed.ok()) << typed.status();
  EXPECT_EQ(typed->llama.attention_window(0), 8);
  EXPECT_EQ(typed->llama.attention_window(1), 0);
  EXPECT_EQ(json::parse(model_config_to_json(*typed))["layer_types"].size(), 4u);
  struct Bad {
    const char* more;
    const char* says;
  };
  for (const Bad& b :
       {Bad{R"(, "layer_types": ["full_attention"])", "has 1 entries"},
        Bad{R"(, "use_sliding_window": true, "layer_types": ["x", "x", "x", "x"])", "layer_types[0] = 'x'"},
        Bad{R"(, "layer_types": ["sliding_attention", "full_attention", "full_attention",
                           "full_attention"])",
            "use_sliding_window is false"},
        Bad{R"(, "max_window_layers": -1)", "max_window_layers"},
        Bad{R"(, "use_sliding_window": 1)", "use_sliding_window"}}) {
    absl::StatusOr<ModelConfig> c = parse("qwen2", b.more);
    ASSERT_FALSE(c.ok()) << b.more;
    EXPECT_NE(std::string(c.status().message()).find(b.says), std::string::npos) << c.status();
  }
  absl::StatusOr<ModelConfig> phi = parse("phi", "");
  ASSERT_FALSE(phi.ok());
  EXPECT_NE(std::string(phi.status().message()).find("llama, mistral, qwen2, gpt2"), std::string::npos);
  // architectures alone names the type.
  absl::StatusOr<ModelConfig> by_arch =
      parse_model_config(base + R"(, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": false})");
  ASSERT_TRUE(by_arch.ok()) << by_arch.status();
  EXPECT_EQ(by_arch->model_type(), "qwen2");
}

// estimated_parameters counts every parameter the model allocates, biases
// included (q/k/v for qwen2; all four and the MLP's with llama's flags).
TEST(ArchConfig, EstimatedParametersIncludeBiases) {
  SKIP_WITHOUT_ASSETS();
  ModelConfig llama_bias = mistral_tiny();
  llama_bias.llama.family = LlamaFamily::kLlama;
  llama_bias.llama.attention_bias = true;
  llama_bias.llama.mlp_bias = true;
  for (const ModelConfig& c : {mistral_tiny(), qwen2_tiny(), llama_bias}) {
    SCOPED_TRACE(c.model_type());
    std::shared_ptr<CausalLm> lm = *create_model(c);
    double n = 0;
    for (const HfParameter& p : lm->hf_parameters()) n += static_cast<double>(p.tensor.numel());
    EXPECT_EQ(estimated_parameters(c), n);
  }
  // Qwen2.5-0.5B's published size: 494,032,768 parameters (tied).
  EXPECT_EQ(estimated_parameters(read_config("qwen2.5-0.5b.json")), 494032768.0);
}

// ---------------------------------------------------------------------------
// Numerics.

// Mistral: 96 tokens through a 64-token window, every layer windowed.
TEST(ArchNumerics, MistralSlidingWindowMatchesReference) {
  SKIP_WITHOUT_ASSETS();
  const ModelConfig c = mistral_tiny();
  ASSERT_EQ(c.llama.attention_window(0), 64);
  std::shared_ptr<CausalLm> lm = seeded(c, 7);
  const std::vector<int64_t> ids = seeded_ids(96, c.vocab_size(), 3);
  const at::Tensor got = model_logits(*lm, ids);
  const at::Tensor want = reference_logits(reference_of(*lm, {64, 64}), ids);
  const at::Tensor full = reference_logits(reference_of(*lm, {0, 0}), ids);
  const double diff = max_diff(got, want);
  std::printf("mistral window 64, T=96: max |model - reference| = %.3g, |reference - no-window reference| = %.3g\n",
              diff, max_diff(want, full));
  EXPECT_LE(diff, 1e-4);
  // The window matters past position 63 only, and there by far more than
  // the tolerance: a model without the window fails the check above.
  EXPECT_LE(max_diff(want.narrow(0, 0, 64), full.narrow(0, 0, 64)), 1e-9);
  EXPECT_GT(max_diff(want.narrow(0, 64, 32), full.narrow(0, 64, 32)), 1e-2);
  EXPECT_GT(max_diff(got, full), 1e-2);

  // The same in float64 (the generic ATen attention path, not the kernel).
  lm->module().to(at::kDouble);
  const double diff64 = max_diff(model_logits(*lm, ids), want);
  std::printf("mistral float64: max |model - reference| = %.3g\n", diff64);
  EXPECT_LE(diff64, 1e-5);  // RoPE tables are float32
}

// Qwen2 with q/k/v biases: no window while use_sliding_window is false (as in
// every real Qwen2.5 config), and with it, the window on layers >=
// max_window_layers only.
TEST(ArchNumerics, Qwen2BiasesAndLayerWindowMatchReference) {
  SKIP_WITHOUT_ASSETS();
  const std::vector<int64_t> ids = seeded_ids(48, 1000, 5);
  {
    ModelConfig c = qwen2_tiny();
    c.llama.sliding_window = 16;  // present but unused: use_sliding_window is false
    std::shared_ptr<CausalLm> lm = seeded(c, 11);
    EXPECT_TRUE(lm->hf_parameters().size() > 0);
    const at::Tensor got = model_logits(*lm, ids);
    const double diff = max_diff(got, reference_logits(reference_of(*lm, {0, 0}), ids));
    std::printf("qwen2 biases, no window: max |model - reference| = %.3g\n", diff);
    EXPECT_LE(diff, 1e-4);
    EXPECT_GT(max_diff(got, reference_logits(reference_of(*lm, {16, 16}), ids)), 1e-2);
    // The biases matter: without them the logits are elsewhere.
    RefModel no_bias = reference_of(*lm, {0, 0});
    for (auto& [name, t] : no_bias.p) {
      if (name.find(".bias") != std::string::npos) t.zero_();
    }
    EXPECT_GT(max_diff(got, reference_logits(no_bias, ids)), 1e-2);
  }
  {
    const ModelConfig c = qwen2_tiny(/*window=*/16, /*from_layer=*/1);
    std::shared_ptr<CausalLm> lm = seeded(c, 12);
    const at::Tensor got = model_logits(*lm, ids);
    const double diff = max_diff(got, reference_logits(reference_of(*lm, {0, 16}), ids));
    std::printf("qwen2 window 16 on layer 1 only: max |model - reference| = %.3g\n", diff);
    EXPECT_LE(diff, 1e-4);
    EXPECT_GT(max_diff(got, reference_logits(reference_of(*lm, {16, 16}), ids)), 1e-3);
    EXPECT_GT(max_diff(got, reference_logits(reference_of(*lm, {0, 0}), ids)), 1e-3);
  }
}

// The cache continues a sequence exactly: prefill 50, then 30 at once, then
// one at a time past the window, equal to one full forward.
TEST(ArchNumerics, CachedChunksEqualFullForward) {
  SKIP_WITHOUT_ASSETS();
  for (const ModelConfig& c : {mistral_tiny(), qwen2_tiny(16, 1)}) {
    SCOPED_TRACE(c.model_type());
    std::shared_ptr<CausalLm> lm = seeded(c, 21);
    const std::vector<int64_t> ids = seeded_ids(90, c.vocab_size(), 8);
    const at::Tensor full = model_logits(*lm, ids);
    torch::NoGradGuard no_grad;
    KvCache cache = lm->make_cache(1, 90);
    std::vector<at::Tensor> parts;
    auto chunk = [&](int64_t begin, int64_t len) {
      const at::Tensor x = at::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + begin + len), at::kLong);
      parts.push_back(lm->forward(x.view({1, len}), &cache)[0].to(at::kDouble));
    };
    chunk(0, 50);
    chunk(50, 30);
    for (int64_t i = 80; i < 90; ++i) chunk(i, 1);
    const double diff = max_diff(at::cat(parts, 0), full);
    std::printf("%s cached chunks 50+30+10x1 vs full forward: max diff %.3g\n", c.model_type().c_str(), diff);
    EXPECT_LE(diff, 1e-5);
  }
}

// Greedy generation with the KV cache equals greedy decoding by full
// recompute, 70 tokens after a 20-token prompt (past the 64 window).
TEST(ArchNumerics, GenerationWithCacheEqualsFullRecomputeBeyondWindow) {
  SKIP_WITHOUT_ASSETS();
  for (const ModelConfig& c : {mistral_tiny(), qwen2_tiny(16, 0)}) {
    SCOPED_TRACE(c.model_type());
    const int64_t window = c.llama.attention_window(c.llama.num_hidden_layers - 1);
    std::shared_ptr<CausalLm> lm = seeded(c, 31, 0.15);
    const std::vector<int64_t> prompt = seeded_ids(20, c.vocab_size(), 9);
    GenerateOptions o;
    o.max_new_tokens = 70;
    o.use_config_eos = false;
    absl::StatusOr<GenerateResult> r = generate(*lm, prompt, o);
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->generated_ids.size(), 70u);
    ASSERT_GT(static_cast<int64_t>(prompt.size() + r->generated_ids.size()), window);
    std::vector<int64_t> seq = prompt;
    double worst_gap = 1e9;  // smallest top-1 margin met, for the report
    for (int64_t step = 0; step < 70; ++step) {
      const at::Tensor logits = model_logits(*lm, seq);
      const at::Tensor last = logits[static_cast<int64_t>(seq.size()) - 1];
      const at::Tensor top = std::get<0>(last.topk(2));
      worst_gap = std::min(worst_gap, (top[0] - top[1]).item<double>());
      seq.push_back(last.argmax().item<int64_t>());
    }
    EXPECT_EQ(std::vector<int64_t>(seq.begin() + 20, seq.end()), r->generated_ids);
    std::set<int64_t> distinct(r->generated_ids.begin(), r->generated_ids.end());
    std::printf("%s: 70 greedy tokens equal with and without the cache (%zu distinct, smallest top-1 margin %.3g)\n",
                c.model_type().c_str(), distinct.size(), worst_gap);
    // The window shapes these logits: the no-window reference differs past it.
    std::vector<int64_t> windows;
    for (int64_t l = 0; l < c.llama.num_hidden_layers; ++l) windows.push_back(c.llama.attention_window(l));
    const at::Tensor with = reference_logits(reference_of(*lm, windows), seq);
    const at::Tensor without = reference_logits(reference_of(*lm, std::vector<int64_t>(windows.size(), 0)), seq);
    EXPECT_LE(max_diff(model_logits(*lm, seq), with), 1e-4);
    EXPECT_GT(max_diff(with.narrow(0, window, static_cast<int64_t>(seq.size()) - window),
                       without.narrow(0, window, static_cast<int64_t>(seq.size()) - window)),
              1e-2);
  }
}

// Gradients flow through the windowed kernel: one LoRA-free full backward
// equals the float64 reference's gradient on a weight.
TEST(ArchNumerics, WindowedBackwardMatchesReference) {
  SKIP_WITHOUT_ASSETS();
  const ModelConfig c = mistral_tiny();
  std::shared_ptr<CausalLm> lm = seeded(c, 41);
  const std::vector<int64_t> ids = seeded_ids(80, c.vocab_size(), 4);
  const at::Tensor x = at::tensor(ids, at::kLong).view({1, 80});
  at::Tensor w;
  for (const HfParameter& p : lm->hf_parameters()) {
    if (p.hf_name == "model.layers.0.self_attn.k_proj.weight") w = p.tensor;
  }
  ASSERT_TRUE(w.defined());
  lm->module().zero_grad();
  lm->forward(x, nullptr).to(at::kDouble).pow(2).mean().backward();
  const at::Tensor got = w.grad().to(at::kDouble);
  RefModel ref = reference_of(*lm, {64, 64});
  at::Tensor wk = ref.p.at("model.layers.0.self_attn.k_proj.weight").requires_grad_(true);
  reference_logits(ref, ids).pow(2).mean().backward();
  const double scale = wk.grad().abs().max().item<double>();
  const double diff = max_diff(got, wk.grad());
  std::printf("mistral k_proj gradient: max diff %.3g (largest entry %.3g)\n", diff, scale);
  EXPECT_GT(scale, 0);
  EXPECT_LE(diff, 1e-3 * scale);
}

// ---------------------------------------------------------------------------
// Files.

TEST(ArchFiles, SaveAndLoadKeepTypeWindowAndBiases) {
  SKIP_WITHOUT_ASSETS();
  const std::string dir = testing::make_temp_dir("arch_io");
  for (const ModelConfig& c : {mistral_tiny(), qwen2_tiny(16, 1)}) {
    SCOPED_TRACE(c.model_type());
    std::shared_ptr<CausalLm> lm = seeded(c, 51);
    const std::string out = dir + "/" + c.model_type();
    ASSERT_TRUE(save_model(*lm, out).ok());
    LoadReport report;
    absl::StatusOr<std::shared_ptr<CausalLm>> back = load_model(out, {}, &report);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(report.unexpected_tensors.empty());
    EXPECT_EQ((*back)->config().model_type(), c.model_type());
    EXPECT_EQ(model_config_to_json((*back)->config()), model_config_to_json(lm->config()));
    const std::vector<int64_t> ids = seeded_ids(70, c.vocab_size(), 2);
    EXPECT_EQ(max_diff(model_logits(**back, ids), model_logits(*lm, ids)), 0.0);
  }
  // Qwen2's checkpoint has q/k/v biases and no o_proj bias.
  std::set<std::string> names;
  for (const HfParameter& p : (*load_model(dir + "/qwen2"))->hf_parameters()) names.insert(p.hf_name);
  EXPECT_TRUE(names.count("model.layers.1.self_attn.q_proj.bias"));
  EXPECT_TRUE(names.count("model.layers.1.self_attn.k_proj.bias"));
  EXPECT_TRUE(names.count("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_FALSE(names.count("model.layers.1.self_attn.o_proj.bias"));
  EXPECT_FALSE(names.count("lm_head.weight"));  // tied
}

gguf::Vocab plain_vocab(int64_t n) {
  gguf::Vocab v;
  v.model = "llama";
  v.pre = "default";
  for (int64_t i = 0; i < n; ++i) {
    v.tokens.push_back("t" + std::to_string(i));
    v.scores.push_back(0);
    v.types.push_back(gguf::kTokenNormal);
  }
  return v;
}

std::vector<float> values_of(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// llama.cpp's conventions (convert_hf_to_gguf.py): mistral is arch "llama"
// with q/k rows permuted; qwen2 is arch "qwen2" with its q/k/v biases and
// rows as in Hugging Face.
TEST(ArchFiles, GgufExport) {
  SKIP_WITHOUT_ASSETS();
  const std::string dir = testing::make_temp_dir("arch_gguf");
  {
    const ModelConfig c = qwen2_tiny();
    std::shared_ptr<CausalLm> lm = seeded(c, 61);
    absl::StatusOr<gguf::ExportStats> s = gguf::export_model(*lm, plain_vocab(1000), dir + "/q.gguf", {});
    ASSERT_TRUE(s.ok()) << s.status();
    const testing::GgufFile f = testing::read_gguf(dir + "/q.gguf");
    ASSERT_EQ(f.error, "");
    EXPECT_EQ(f.get("general.architecture")->s, "qwen2");
    EXPECT_EQ(f.get("qwen2.block_count")->u, 2u);
    EXPECT_EQ(f.get("qwen2.attention.head_count_kv")->u, 2u);
    EXPECT_EQ(f.get("llama.block_count"), nullptr);
    std::map<std::string, at::Tensor> p;
    for (const HfParameter& hp : lm->hf_parameters()) p[hp.hf_name] = hp.tensor;
    for (const char* kind : {"q", "k", "v"}) {
      const std::string hf = std::string("model.layers.1.self_attn.") + kind + "_proj.";
      const std::string gg = std::string("blk.1.attn_") + kind + ".";
      ASSERT_NE(f.tensor(gg + "bias"), nullptr) << kind;
      EXPECT_EQ(f.values(gg + "bias"), values_of(p.at(hf + "bias"))) << kind;
      EXPECT_EQ(f.values(gg + "weight"), values_of(p.at(hf + "weight"))) << kind;  // not permuted
    }
    EXPECT_EQ(f.tensor("blk.1.attn_output.bias"), nullptr);
    EXPECT_EQ(f.tensor("output.weight"), nullptr);  // tied
    EXPECT_TRUE(gguf::export_notes(c).empty());
    // A window llama.cpp's qwen2 would not apply is refused, naming it.
    std::shared_ptr<CausalLm> windowed = seeded(qwen2_tiny(16, 1), 62);
    absl::StatusOr<gguf::ExportStats> bad = gguf::export_model(*windowed, plain_vocab(1000), dir + "/w.gguf", {});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(std::string(bad.status().message()).find("sliding-window"), std::string::npos) << bad.status();
    EXPECT_FALSE(fs::exists(dir + "/w.gguf"));
  }
  {
    const ModelConfig c = mistral_tiny();
    std::shared_ptr<CausalLm> lm = seeded(c, 63);
    ASSERT_TRUE(gguf::export_model(*lm, plain_vocab(1000), dir + "/m.gguf", {}).ok());
    const testing::GgufFile f = testing::read_gguf(dir + "/m.gguf");
    ASSERT_EQ(f.error, "");
    EXPECT_EQ(f.get("general.architecture")->s, "llama");
    EXPECT_EQ(f.get("llama.attention.head_count_kv")->u, 2u);
    // Within each head, HF row t*D/2 + j is GGUF row 2j + t.
    at::Tensor wq;
    for (const HfParameter& hp : lm->hf_parameters()) {
      if (hp.hf_name == "model.layers.0.self_attn.q_proj.weight") wq = hp.tensor.detach();
    }
    const std::vector<float> got = f.values("blk.0.attn_q.weight");
    const int64_t d = 32, cols = wq.size(1);
    for (int64_t head : {0, 7}) {
      for (int64_t t = 0; t < 2; ++t) {
        for (int64_t j : {0, 5, 15}) {
          const int64_t hf_row = head * d + t * d / 2 + j, gg_row = head * d + 2 * j + t;
          EXPECT_EQ(got[static_cast<size_t>(gg_row * cols + 3)], wq[hf_row][3].item<float>());
        }
      }
    }
    const std::vector<std::string> notes = gguf::export_notes(c);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_NE(notes[0].find("sliding_window = 64"), std::string::npos) << notes[0];
  }
}

}  // namespace
}  // namespace peft::models
