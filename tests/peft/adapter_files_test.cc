// Adapter directories (peft/adapter_files): the keys every Hugging Face PEFT
// config shares are honoured for every method (exclude_modules on a LoRA
// file, layers_to_transform as an int or a list), bad values are clear
// errors, and loading an adapter copies no base weights it does not rewrite
// (peak memory on a 100M-parameter model).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/model_io.h"
#include "peft/adapter_files.h"
#include "peft/io/safetensors.h"
#include "peft/peft_model.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_models.h"
#include "trainers/process_stats.h"

namespace peft {
namespace {

// A hand-written PEFT LoRA directory on the tiny LLaMA (hidden 32, 2 layers;
// q_proj [32, 32], v_proj [16, 32]): q_proj and v_proj targeted, the v_proj
// of block 1 excluded, so the file holds three modules' tensors.
TEST(AdapterFiles, LoraExcludeModulesFromAPeftFile) {
  const std::string dir = testing::make_temp_dir("exclude");
  std::ofstream(dir + "/adapter_config.json") << R"({
  "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 6, "lora_dropout": 0.0,
  "init_lora_weights": true, "bias": "none", "fan_in_fan_out": false,
  "target_modules": ["q_proj", "v_proj"], "exclude_modules": ["layers.1.self_attn.v_proj"]
})";
  struct Module {
    std::string path;
    int64_t out;
  };
  const std::vector<Module> modules = {{"model.layers.0.self_attn.q_proj", 32},
                                       {"model.layers.0.self_attn.v_proj", 16},
                                       {"model.layers.1.self_attn.q_proj", 32}};
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  std::vector<io::NamedTensor> tensors;
  std::vector<std::pair<at::Tensor, at::Tensor>> ab;
  for (const Module& m : modules) {
    const at::Tensor a = at::empty({2, 32}).normal_(0, 0.2, gen), b = at::empty({m.out, 2}).normal_(0, 0.2, gen);
    tensors.push_back({"base_model.model." + m.path + ".lora_A.weight", a});
    tensors.push_back({"base_model.model." + m.path + ".lora_B.weight", b});
    ab.emplace_back(a, b);
  }
  ASSERT_TRUE(io::save_safetensors(dir + "/adapter_model.safetensors", tensors).ok());

  PeftModel pm(testing::tiny_model(testing::tiny_llama_config(), 4));
  const absl::Status st = pm.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  std::vector<std::string> paths;
  for (const LinearTarget& t : pm.targets("default")) paths.push_back(t.path);
  EXPECT_EQ(paths, (std::vector<std::string>{modules[0].path, modules[1].path, modules[2].path}));

  // Logits against the base with W += (alpha / r) B A folded in by hand on
  // exactly those three projections.
  const at::Tensor ids = testing::sample_ids(96, 2, 7, 5);
  pm.model().module().eval();
  torch::NoGradGuard ng;
  const at::Tensor got = pm.model().forward(ids, nullptr);
  auto reference = testing::tiny_model(testing::tiny_llama_config(), 4);
  for (const models::HfParameter& p : reference->hf_parameters()) {
    for (size_t i = 0; i < modules.size(); ++i) {
      if (p.hf_name == modules[i].path + ".weight") p.tensor.add_(3.0 * at::matmul(ab[i].second, ab[i].first));
    }
  }
  reference->module().eval();
  const at::Tensor want = reference->forward(ids, nullptr);
  EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
}

TEST(AdapterFiles, SharedKeysParseOnceForEveryMethod) {
  auto parse = [](const std::string& extra) {
    return parse_hf_adapter_config(
        R"({"peft_type": "MISS", "r": 8, "init_weights": true, "target_modules": ["q_proj"])" + extra + "}",
        "DIR/adapter_config.json");
  };
  absl::StatusOr<proto::AdapterConfig> c = parse(R"(, "layers_to_transform": 1, "exclude_modules": ["a", "b"])");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->target().layers_size(), 1);
  EXPECT_EQ(c->target().layers(0), 1);
  EXPECT_EQ(c->target().exclude_size(), 2);
  c = parse(R"(, "layers_to_transform": [0, 1])");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->target().layers_size(), 2);
  for (const auto& [extra, want] : std::vector<std::pair<std::string, std::string>>{
           {R"(, "exclude_modules": ".*v_proj")", "exclude_modules as a regex"},
           {R"(, "exclude_modules": 3)", "exclude_modules must be a list"},
           {R"(, "layers_to_transform": "1")", "layers_to_transform must be"},
           {R"(, "layers_to_transform": [0.5])", "layers_to_transform must hold integers"}}) {
    c = parse(extra);
    ASSERT_FALSE(c.ok()) << extra;
    EXPECT_NE(std::string(c.status().message()).find(want), std::string::npos) << c.status();
    EXPECT_NE(std::string(c.status().message()).find("DIR/adapter_config.json"), std::string::npos) << c.status();
  }
  c = parse_hf_adapter_config(R"({"peft_type": "LORA", "target_modules": [1]})", "X");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("target_modules must hold strings"), std::string::npos);
}

// Every method key is read strictly: a wrong type or an out-of-range value is
// an error naming the key and the value, never the default (a string alpha
// read as 8 would merge at half strength) nor a truncated integer.
TEST(AdapterFiles, MethodKeysAreTypeAndRangeChecked) {
  auto parse = [](const std::string& keys) {
    return parse_hf_adapter_config(R"({"peft_type": "LORA", "target_modules": ["q_proj"], )" + keys + "}",
                                   "DIR/adapter_config.json");
  };
  absl::StatusOr<proto::AdapterConfig> ok = parse(R"("r": 8, "lora_alpha": 16.5, "use_rslora": false)");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->lora().r(), 8);
  EXPECT_FLOAT_EQ(ok->lora().alpha(), 16.5f);
  for (const auto& [keys, want] : std::vector<std::pair<std::string, std::string>>{
           {R"("r": 8, "lora_alpha": "x")", R"("lora_alpha" must be a number, got string "x")"},
           {R"("r": 1099511627776)", R"("r" must be in [1, 65536], got 1099511627776)"},
           {R"("r": 0)", R"("r" must be in [1, 65536], got 0)"},
           {R"("r": 8.5)", R"("r" must be an integer, got number 8.5)"},
           {R"("r": 8, "lora_dropout": 1.5)", R"("lora_dropout" must be in [0, 0.999999], got 1.5)"},
           {R"("r": 8, "use_rslora": "yes")", R"("use_rslora" must be true or false, got string "yes")"},
           {R"("r": 8, "bias": 1)", R"("bias" must be a string, got number 1)"},
           {R"("r": 8, "init_lora_weights": 3)", R"("init_lora_weights" must be true, false or a string)"},
           {R"("r": 8, "rank_pattern": {"q": 4294967300})", "rank_pattern['q'] must be an integer rank in [1, 65536]"},
           {R"("r": 8, "alpha_pattern": {"q": "big"})", "alpha_pattern['q'] must be a finite number"},
           {R"("r": 8, "layers_to_transform": 4294967296)",
            "layers_to_transform must hold block indices in [0, 1024), got 4294967296"},
           {R"("r": 8, "layers_to_transform": [0, -1])",
            "layers_to_transform must hold block indices in [0, 1024), got -1"}}) {
    absl::StatusOr<proto::AdapterConfig> c = parse(keys);
    ASSERT_FALSE(c.ok()) << keys;
    EXPECT_NE(std::string(c.status().message()).find(want), std::string::npos) << keys << ": " << c.status();
  }
  // A truncated file is named as such, not as "no peft_type".
  absl::StatusOr<proto::AdapterConfig> cut = parse_hf_adapter_config(R"({"peft_type": "LORA", "r": 8, "lora_al)", "D");
  ASSERT_FALSE(cut.ok());
  EXPECT_NE(std::string(cut.status().message()).find("D: not valid JSON at byte "), std::string::npos) << cut.status();
  EXPECT_NE(std::string(cut.status().message()).find(" of 38"), std::string::npos) << cut.status();
  absl::StatusOr<proto::AdapterConfig> miss = parse_hf_adapter_config(
      R"({"peft_type": "MISS", "target_modules": ["q_proj"], "r": 8, "miss_dropout": "x"})", "D");
  ASSERT_FALSE(miss.ok());
  EXPECT_NE(std::string(miss.status().message()).find(R"("miss_dropout" must be a number)"), std::string::npos)
      << miss.status();
}

// Found by fuzz/adapter_config_fuzz.cc: a number beyond a double
// ("2E7777777777", "lora_alpha": 1e999) made nlohmann throw out_of_range,
// which the parser did not catch: the process terminated.
TEST(AdapterFiles, NumberBeyondADoubleIsInvalidJson) {
  for (const char* text : {"2E7777777777", R"({"peft_type": "LORA", "r": 8, "lora_alpha": 1e999})",
                           R"({"peft_type": "LORA", "layers_to_transform": [-1e400]})"}) {
    absl::StatusOr<proto::AdapterConfig> c = parse_hf_adapter_config(text, "D");
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
    EXPECT_NE(std::string(c.status().message()).find("D: not valid JSON: a number is out of range ("),
              std::string::npos)
        << c.status();
  }
}

// Loading a LoRA adapter onto a 100M-parameter model (fp32, 400 MB) raises
// the peak RSS by at most the adapter's size plus 10% of the model's: the
// load copies no base weight that LoRA does not rewrite (a copy of every
// base parameter as a rollback would add the whole model). PiSSA rewrites
// its targets, so their weights are copied: a failed PiSSA load leaves the
// base exactly as it was.
TEST(AdapterFiles, LoadingALoraAdapterCopiesNoBaseWeights) {
  if (testing::address_sanitizer()) GTEST_SKIP() << "AddressSanitizer keeps freed blocks resident (quarantine)";
  const models::ModelConfig c = testing::llama_100m_config();
  absl::StatusOr<std::shared_ptr<models::CausalLm>> lm = models::create_model(c);
  ASSERT_TRUE(lm.ok()) << lm.status();
  models::init_weights_(**lm, 1);
  PeftModel pm(*lm);
  const int64_t n = pm.num_parameters();
  ASSERT_GT(n, 95'000'000);
  ASSERT_LT(n, 110'000'000);
  proto::AdapterConfig a;
  a.mutable_lora()->set_r(8);
  a.mutable_target()->set_preset("all_linear");
  ASSERT_TRUE(pm.add_adapter(a, 1).ok());
  const std::string dir = testing::make_temp_dir("big_lora") + "/adapter";
  ASSERT_TRUE(pm.save_adapter(dir).ok());
  ASSERT_TRUE(pm.delete_adapter("default").ok());
  const double adapter_mb = static_cast<double>(std::filesystem::file_size(dir + "/adapter_model.safetensors")) / 1e6;
  const double model_mb = 4.0 * static_cast<double>(n) / 1e6;

  const double before = trainers::proc_status_mb("VmRSS");
  if (!trainers::reset_peak_rss()) GTEST_SKIP() << "/proc/self/clear_refs is not writable: the peak cannot be reset";
  const absl::Status st = pm.load_adapter(dir);
  ASSERT_TRUE(st.ok()) << st;
  const double rise = trainers::proc_status_mb("VmHWM") - before;
  std::printf("loading a %.1f MB LoRA adapter onto a %.0f MB model raised the peak RSS by %.1f MB\n", adapter_mb,
              model_mb, rise);
  EXPECT_LE(rise, adapter_mb + 0.1 * model_mb);

  // A PiSSA load that fails (a tensor of the wrong shape) restores the
  // rewritten weights exactly.
  ASSERT_TRUE(pm.delete_adapter("default").ok());
  std::vector<at::Tensor> before_weights;
  for (const LinearTarget& t : adaptable_modules(pm.model())) before_weights.push_back(t.linear->weight.clone());
  const std::string bad = testing::make_temp_dir("bad_pissa");
  std::ofstream(bad + "/adapter_config.json") << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8,
    "init_lora_weights": "pissa", "target_modules": "^(model\\.layers\\.0\\.self_attn\\.q_proj)$"})";
  ASSERT_TRUE(
      io::save_safetensors(bad + "/adapter_model.safetensors",
                           {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", at::zeros({3, 640})},
                            {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", at::zeros({640, 2})}})
          .ok());
  const absl::Status failed = pm.load_adapter(bad);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(std::string(failed.message()).find("has shape [3, 640]"), std::string::npos) << failed;
  size_t i = 0;
  for (const LinearTarget& t : adaptable_modules(pm.model())) {
    ASSERT_TRUE(at::equal(t.linear->weight, before_weights[i++])) << t.path << " was not restored";
  }
}

}  // namespace
}  // namespace peft
