// Model directories: save/load round trips for every storage dtype and for
// sharded checkpoints, GPT-2's Conv1D layout and Hub names, and the errors
// for bad configs and checkpoints (each names the problem, nothing written).
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "models/generate.h"
#include "models/model_io.h"
#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"

namespace peft::models {
namespace {
namespace fs = std::filesystem;

ModelConfig tiny_llama(bool tied) { return testing::tiny_llama_config(tied); }
ModelConfig tiny_gpt2() { return testing::tiny_gpt2_config(); }

std::shared_ptr<CausalLm> make(const ModelConfig& c, uint64_t seed) {
  std::shared_ptr<CausalLm> lm = *create_model(c);
  init_weights_(*lm, seed, 0.2);
  return lm;
}

at::Tensor sample_ids(int64_t vocab) { return at::arange(0, 12, at::kLong).remainder(vocab).view({1, 12}); }

std::string read_file(const std::string& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& p, const std::string& s) { std::ofstream(p) << s; }

TEST(ModelIoTest, RoundTripEveryDtype) {
  const std::string base = testing::make_temp_dir("rt");
  for (bool tied : {false, true}) {
    std::shared_ptr<CausalLm> lm = make(tiny_llama(tied), 7);
    for (c10::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      SCOPED_TRACE(dtype_name(dt) + (tied ? " tied" : " untied"));
      const std::string dir = base + "/" + dtype_name(dt) + (tied ? "_t" : "_u");
      SaveOptions so;
      so.dtype = dt;
      ASSERT_TRUE(save_model(*lm, dir, so).ok());
      EXPECT_EQ(read_model_config(dir)->torch_dtype, dtype_name(dt));
      LoadOptions lo;
      lo.dtype = dt;
      absl::StatusOr<std::shared_ptr<CausalLm>> back = load_model(dir, lo);
      ASSERT_TRUE(back.ok()) << back.status();
      std::vector<HfParameter> a = lm->hf_parameters(), b = (*back)->hf_parameters();
      ASSERT_EQ(a.size(), b.size());
      for (size_t i = 0; i < a.size(); ++i) {
        EXPECT_EQ(a[i].hf_name, b[i].hf_name);
        EXPECT_TRUE(at::equal(a[i].tensor.to(dt), b[i].tensor)) << a[i].hf_name;
      }
      // A tied model writes the embedding once and no lm_head.weight.
      auto file = io::SafetensorsFile::open(dir + "/model.safetensors");
      ASSERT_TRUE(file.ok());
      EXPECT_EQ((*file)->find("lm_head.weight") != nullptr, !tied);
    }
  }
}

TEST(ModelIoTest, ExportFilesCarryOneTokenizer) {
  namespace fs = std::filesystem;
  const std::string model = testing::make_temp_dir("expm"), tok = testing::make_temp_dir("expt");
  for (const char* f : {"config.json", "tokenizer.model", "generation_config.json", "notes.txt"}) {
    std::ofstream(model + "/" + f) << f;
  }
  for (const char* f : {"vocab.json", "merges.txt"}) std::ofstream(tok + "/" + f) << f;
  auto names = [](const std::vector<std::pair<std::string, std::string>>& files) {
    std::vector<std::string> out;
    for (const auto& [src, name] : files) {
      EXPECT_EQ(fs::path(src).filename().string(), name);
      out.push_back(name);
    }
    return out;
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(names(models::tokenizer_files(model)), (V{"tokenizer.model", "generation_config.json"}));
  EXPECT_EQ(names(models::export_files(model)), (V{"tokenizer.model", "generation_config.json"}));
  EXPECT_EQ(names(models::export_files(model, model)), (V{"tokenizer.model", "generation_config.json"}));
  // Another tokenizer replaces the model's, which keeps its generation config.
  EXPECT_EQ(names(models::export_files(model, tok)), (V{"vocab.json", "merges.txt", "generation_config.json"}));
  // A tokenizer file is carried under its own name.
  EXPECT_EQ(names(models::export_files(model, tok + "/vocab.json")), (V{"vocab.json", "generation_config.json"}));
  EXPECT_TRUE(models::tokenizer_files(tok + "/missing").empty());
}

TEST(ModelIoTest, ShardedSaveLoadsTheSame) {
  std::shared_ptr<CausalLm> lm = make(tiny_llama(false), 3);
  const std::string dir = testing::make_temp_dir("shard") + "/m";
  SaveOptions so;
  so.max_shard_bytes = 20000;  // several shards for ~100 KB of weights
  ASSERT_TRUE(save_model(*lm, dir, so).ok());
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  absl::StatusOr<std::shared_ptr<CausalLm>> back = load_model(dir);
  ASSERT_TRUE(back.ok()) << back.status();
  at::Tensor ids = sample_ids(96);
  EXPECT_TRUE(at::equal(lm->forward(ids, nullptr), (*back)->forward(ids, nullptr)));
}

TEST(ModelIoTest, Gpt2UsesConv1DLayoutAndAcceptsHubNames) {
  std::shared_ptr<CausalLm> lm = make(tiny_gpt2(), 5);
  const std::string dir = testing::make_temp_dir("gpt2") + "/m";
  ASSERT_TRUE(save_model(*lm, dir).ok());
  auto file = io::SafetensorsFile::open(dir + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  const io::TensorInfo* c_attn = (*file)->find("transformer.h.0.attn.c_attn.weight");
  ASSERT_NE(c_attn, nullptr);
  EXPECT_EQ(c_attn->shape, (std::vector<int64_t>{32, 96}));  // [in, out]
  EXPECT_EQ((*file)->find("lm_head.weight"), nullptr);
  // Rewrite with Hub names (no "transformer." prefix) plus the causal-mask buffers.
  std::vector<io::NamedTensor> hub;
  for (const io::TensorInfo& t : (*file)->tensors()) {
    hub.push_back({t.name.substr(std::string("transformer.").size()), *(*file)->load(t.name)});
  }
  hub.push_back({"h.0.attn.bias", at::ones({1, 1, 48, 48})});
  const std::string hub_dir = testing::make_temp_dir("gpt2hub");
  ASSERT_TRUE(io::save_safetensors(hub_dir + "/model.safetensors", hub).ok());
  fs::copy_file(dir + "/config.json", hub_dir + "/config.json");
  LoadReport report;
  absl::StatusOr<std::shared_ptr<CausalLm>> back = load_model(hub_dir, {}, &report);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(report.ignored_tensors, std::vector<std::string>{"h.0.attn.bias"});
  at::Tensor ids = sample_ids(80);
  EXPECT_TRUE(at::equal(lm->forward(ids, nullptr), (*back)->forward(ids, nullptr)));
}

class BadCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir("bad") + "/m";
    ASSERT_TRUE(save_model(*make(tiny_llama(false), 1), dir_).ok());
  }
  std::string dir_;
};

TEST_F(BadCheckpointTest, ConfigMissingHiddenSize) {
  std::string cfg = read_file(dir_ + "/config.json");
  const size_t at = cfg.find("\"hidden_size\"");
  cfg.erase(at, cfg.find('\n', at) - at + 1);
  write_file(dir_ + "/config.json", cfg);
  absl::Status s = load_model(dir_).status();
  EXPECT_NE(s.message().find("missing required field 'hidden_size'"), std::string::npos) << s;
}

TEST_F(BadCheckpointTest, ShapeNotMatchingConfig) {
  std::string cfg = read_file(dir_ + "/config.json");
  const size_t at = cfg.find("\"intermediate_size\": 48");
  cfg.replace(at, 23, "\"intermediate_size\": 40");
  write_file(dir_ + "/config.json", cfg);
  absl::Status s = load_model(dir_).status();
  EXPECT_NE(
      s.message().find(
          "model.layers.0.mlp.gate_proj.weight' has shape [48, 32] in the checkpoint but config.json implies [40, 32]"),
      std::string::npos)
      << s;
}

TEST_F(BadCheckpointTest, MissingTensor) {
  auto file = io::SafetensorsFile::open(dir_ + "/model.safetensors");
  std::vector<io::NamedTensor> kept;
  for (const io::TensorInfo& t : (*file)->tensors()) {
    if (t.name != "model.norm.weight") kept.push_back({t.name, *(*file)->load(t.name)});
  }
  file->reset();
  ASSERT_TRUE(io::save_safetensors(dir_ + "/model.safetensors", kept).ok());
  absl::Status s = load_model(dir_).status();
  EXPECT_NE(s.message().find("missing 1 tensor(s) the config needs: model.norm.weight"), std::string::npos) << s;
}

TEST_F(BadCheckpointTest, UnsupportedModelType) {
  write_file(dir_ + "/config.json", R"({"model_type": "mamba", "vocab_size": 10})");
  absl::Status s = load_model(dir_).status();
  EXPECT_NE(s.message().find("model_type 'mamba' is not supported"), std::string::npos) << s;
}

// Every loaded number is range-checked before anything is allocated: a
// corrupt size is named with its limit, an implausible model is refused with
// the memory it would take, and a NaN weight is refused at load.
TEST_F(BadCheckpointTest, NumbersAreRangeCheckedBeforeAllocating) {
  const std::string cfg = read_file(dir_ + "/config.json");
  auto edit = [](std::string text, const std::string& key, const std::string& value) {
    const size_t at = text.find("\"" + key + "\"");
    EXPECT_NE(at, std::string::npos) << key;
    const size_t colon = text.find(':', at), end = text.find_first_of(",\n}", colon);
    return text.substr(0, colon + 1) + " " + value + text.substr(end);
  };
  auto with = [&](const std::string& key, const std::string& value) {
    write_file(dir_ + "/config.json", edit(cfg, key, value));
    return load_model(dir_).status();
  };
  absl::Status s = with("num_hidden_layers", "1e9");
  EXPECT_NE(s.message().find("'num_hidden_layers' = 1000000000 is larger than 1024"), std::string::npos) << s;
  s = with("max_position_embeddings", "100000000");
  EXPECT_NE(s.message().find("'max_position_embeddings' = 100000000 is larger than 16777216"), std::string::npos) << s;
  s = with("rope_theta", "0");
  EXPECT_NE(s.message().find("'rope_theta' must be positive, got 0"), std::string::npos) << s;
  s = with("rms_norm_eps", "-1e-5");
  EXPECT_NE(s.message().find("'rms_norm_eps' must be >= 0"), std::string::npos) << s;
  s = with("vocab_size", "1e30");
  EXPECT_NE(s.message().find("field 'vocab_size' is out of range"), std::string::npos) << s;
  // Each size allowed, together far beyond any machine: refused, not allocated.
  write_file(dir_ + "/config.json", edit(edit(cfg, "num_hidden_layers", "1024"), "intermediate_size", "524288"));
  s = load_model(dir_).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find("GB of memory is available"), std::string::npos) << s;
}

TEST_F(BadCheckpointTest, NonFiniteWeightIsRefused) {
  auto file = io::SafetensorsFile::open(dir_ + "/model.safetensors");
  std::vector<io::NamedTensor> tensors;
  for (const io::TensorInfo& t : (*file)->tensors()) {
    at::Tensor v = (*file)->load(t.name)->clone();
    if (t.name == "model.layers.0.self_attn.q_proj.weight") v.view(-1)[3] = std::nan("");
    tensors.push_back({t.name, v});
  }
  file->reset();
  ASSERT_TRUE(io::save_safetensors(dir_ + "/model.safetensors", tensors).ok());
  absl::Status s = load_model(dir_).status();
  EXPECT_NE(s.message().find("tensor 'model.layers.0.self_attn.q_proj.weight' holds NaN or infinite values"),
            std::string::npos)
      << s;
}

TEST_F(BadCheckpointTest, NoCheckpointFiles) {
  fs::remove(dir_ + "/model.safetensors");
  EXPECT_FALSE(load_model(dir_).ok());
}

TEST(ModelIoTest, SaveRefusesNonEmptyDirectoryAndLeavesNothingOnError) {
  std::shared_ptr<CausalLm> lm = make(tiny_llama(false), 1);
  const std::string base = testing::make_temp_dir("atomic");
  fs::create_directory(base + "/full");
  write_file(base + "/full/keep.txt", "x");
  absl::Status s = save_model(*lm, base + "/full");
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_TRUE(fs::exists(base + "/full/keep.txt"));
  SaveOptions so;
  so.extra_files = {{base + "/does-not-exist.model", "tokenizer.model"}};
  EXPECT_FALSE(save_model(*lm, base + "/new", so).ok());
  EXPECT_FALSE(fs::exists(base + "/new"));
  // Only the two directories we made remain: no temporary leftovers.
  EXPECT_EQ(std::distance(fs::directory_iterator(base), fs::directory_iterator()), 1);
  so.extra_files.clear();
  so.overwrite = true;
  EXPECT_TRUE(save_model(*lm, base + "/full", so).ok());
  EXPECT_FALSE(fs::exists(base + "/full/keep.txt"));
}

TEST(ModelIoTest, ConfigSpellings) {
  // transformers v5: rope_parameters with rope_theta inside, dtype instead of torch_dtype.
  absl::StatusOr<ModelConfig> c = parse_model_config(R"({
    "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "dtype": "bfloat16",
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192},
    "eos_token_id": [3, 4], "some_future_field": {"x": 1}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->llama.rope_theta, 500000.0);
  EXPECT_EQ(c->llama.rope_scaling.rope_type, "llama3");
  EXPECT_EQ(c->llama.num_key_value_heads, 2);
  EXPECT_EQ(c->llama.head_dim, 4);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{3, 4}));
  // Older spelling rope_scaling.type; GPT-2 aliases; a missing tie_word_embeddings means tied for GPT-2.
  c = parse_model_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 2, "rope_scaling": {"type": "linear", "factor": 2.0}})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->llama.rope_scaling.rope_type, "linear");
  c = parse_model_config(R"({"model_type": "gpt2", "vocab_size": 10, "hidden_size": 8, "n_layer": 1, "n_head": 2})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->gpt2.n_embd, 8);
  EXPECT_EQ(c->gpt2.n_inner, 32);
  EXPECT_TRUE(c->gpt2.tie_word_embeddings);
  // Wrong type and bad consistency name the field.
  absl::Status s = parse_model_config(R"({"model_type": "llama", "vocab_size": "ten"})").status();
  EXPECT_NE(s.message().find("'vocab_size' must be an integer"), std::string::npos) << s;
  s = parse_model_config(R"({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3})")
          .status();
  EXPECT_NE(s.message().find("multiple of num_key_value_heads"), std::string::npos) << s;
  EXPECT_FALSE(parse_model_config("{not json").ok());
}

TEST(GenerateTest, PromptLongerThanContextIsAnError) {
  std::shared_ptr<CausalLm> lm = make(tiny_llama(false), 2);
  std::vector<int64_t> prompt(64, 5);
  absl::Status s = generate(*lm, prompt, GenerateOptions{}).status();
  EXPECT_NE(s.message().find("leaves no room in the model's context of 64"), std::string::npos) << s;
  EXPECT_FALSE(generate(*lm, {}, GenerateOptions{}).ok());
  s = generate(*lm, {1, 500}, GenerateOptions{}).status();
  EXPECT_NE(s.message().find("token id 500 at position 1 is outside the vocabulary"), std::string::npos) << s;
}

TEST(GenerateTest, CacheMatchesFullRecomputation) {
  for (const ModelConfig& c : {tiny_llama(true), tiny_gpt2()}) {
    std::shared_ptr<CausalLm> lm = make(c, 11);
    GenerateOptions o;
    o.max_new_tokens = 20;
    o.use_config_eos = false;
    std::vector<int64_t> prompt = {3, 4, 5};
    absl::StatusOr<GenerateResult> r = generate(*lm, prompt, o);
    ASSERT_TRUE(r.ok());
    // Greedy without a cache: recompute the whole prefix each step.
    std::vector<int64_t> seq = prompt;
    for (int i = 0; i < 20; ++i) {
      at::Tensor ids = at::tensor(seq, at::kLong).view({1, -1});
      seq.push_back(lm->forward(ids, nullptr)[0][-1].argmax().item<int64_t>());
    }
    EXPECT_EQ(r->generated_ids, std::vector<int64_t>(seq.begin() + 3, seq.end()));
  }
}

TEST(GenerateTest, SamplingIsSeededAndRespectsTopK) {
  std::shared_ptr<CausalLm> lm = make(tiny_llama(false), 4);
  GenerateOptions o;
  o.max_new_tokens = 30;
  o.temperature = 1.0;
  o.seed = 42;
  o.use_config_eos = false;
  std::vector<int64_t> a = generate(*lm, {1, 2}, o)->generated_ids;
  EXPECT_EQ(a, generate(*lm, {1, 2}, o)->generated_ids);
  o.seed = 43;
  EXPECT_NE(a, generate(*lm, {1, 2}, o)->generated_ids);
  // top_k = 1 and a tiny top_p are both greedy.
  o.top_k = 1;
  GenerateOptions greedy;
  greedy.max_new_tokens = 30;
  greedy.use_config_eos = false;
  std::vector<int64_t> g = generate(*lm, {1, 2}, greedy)->generated_ids;
  EXPECT_EQ(generate(*lm, {1, 2}, o)->generated_ids, g);
  o.top_k = 0;
  o.top_p = 1e-9;
  EXPECT_EQ(generate(*lm, {1, 2}, o)->generated_ids, g);
  // Sampled frequencies follow softmax(logits / T) for a fixed distribution.
  at::Tensor logits = at::tensor(std::vector<float>{0.0f, std::log(3.0f), -100.0f});
  GenerateOptions s;
  s.temperature = 1.0;
  uint64_t state = 9;
  int ones = 0;
  for (int i = 0; i < 4000; ++i) ones += sample_next(logits, s, &state) == 1;
  EXPECT_NEAR(ones / 4000.0, 0.75, 0.03);
}

}  // namespace
}  // namespace peft::models
