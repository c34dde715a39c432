// End-to-end tests of the `peft` binary: convert stories260K with
// `peft convert`, reproduce llama2.c's greedy output through
// `peft generate --format=json`, tokenize and eval, tokenizer.json options
// (--split_special_tokens, --chat), `peft init --config` for llama, mistral
// and qwen2 configs followed by generate, a LoRA train, merge and GGUF
// export, and the error contract (non-zero exit, one-line message, no output
// directory) for bad input.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/testing/assets.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using CliRun = testing::ProgramRun;

std::string peft_binary() { return testing::runfile("examples/peft"); }

// Runs the binary with `args`, feeding `input` on stdin.
CliRun run(const std::vector<std::string>& args, const std::string& input = "") {
  return testing::run_program(peft_binary(), args, input);
}

class CliStoriesTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) return;
    model_ = testing::make_temp_dir("cli") + "/stories260K";
    CliRun r = run({"convert", "--from=llama2c", "--input=" + assets_ + "/llama2c_stories260K/stories260K.bin",
                    "--output=" + model_, "--tokenizer=" + assets_ + "/llama2c_stories260K/tok512.model"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  void SetUp() override {
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  }
  static std::string assets_, model_;
};
std::string CliStoriesTest::assets_, CliStoriesTest::model_;

TEST_F(CliStoriesTest, ConvertWritesHuggingFaceDirectory) {
  EXPECT_TRUE(fs::exists(model_ + "/config.json"));
  EXPECT_TRUE(fs::exists(model_ + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(model_ + "/tokenizer.model"));
  std::ifstream in(model_ + "/config.json");
  json cfg = json::parse(in);
  EXPECT_EQ(cfg["model_type"], "llama");
  EXPECT_EQ(cfg["num_key_value_heads"], 4);
  EXPECT_EQ(cfg["tie_word_embeddings"], true);
}

TEST_F(CliStoriesTest, GreedyGenerationMatchesRunC) {
  std::ifstream in(assets_ + "/llama2c_stories260K/reference_greedy.json");
  json ref = json::parse(in);
  for (const json& c : ref["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    const std::vector<int64_t> expected = c["generated_ids"].get<std::vector<int64_t>>();
    CliRun r = run({"generate", "--model=" + model_,
                    "--prompt=" + (c["prompt"].is_string() ? c["prompt"].get<std::string>() : std::string()),
                    "--max_new_tokens=" + std::to_string(expected.size()), "--format=json", "--threads=1"});
    ASSERT_EQ(r.code, 0) << r.err;
    json out = json::parse(r.out);
    EXPECT_EQ(out["prompt_ids"].get<std::vector<int64_t>>(), c["prompt_ids"].get<std::vector<int64_t>>());
    EXPECT_EQ(out["generated_ids"].get<std::vector<int64_t>>(), expected);
    // The decoded text is run.c's stdout after the prompt.
    const std::string text = c["stdout_text"].get<std::string>();
    EXPECT_NE(text.find(out["text"].get<std::string>()), std::string::npos);
    EXPECT_NE(r.err.find("tok/s"), std::string::npos);
  }
}

TEST_F(CliStoriesTest, TokenizeAndEval) {
  CliRun r =
      run({"tokenize", "--tokenizer=" + model_}, "{\"text\": \"Hello world\"}\n{\"text\": \"Once upon a time\"}\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\":[346,306,414,263,304,341]}\n{\"ids\":[403,407,261,378]}\n");
  r = run({"tokenize", "--tokenizer=" + model_, "--add_bos"}, "{\"text\": \"Once upon a time\"}\n");
  EXPECT_EQ(r.out, "{\"ids\":[1,403,407,261,378]}\n");
  r = run({"tokenize", "--tokenizer=" + model_}, "{\"text\": \"ok\"}\nnot json\n");
  EXPECT_NE(r.code, 0);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("stdin line 2"), std::string::npos) << r.err;

  // Teacher-forced loss equals the float64 reference mean NLL.
  std::ifstream in(assets_ + "/llama2c_stories260K/reference_teacher_forced.json");
  json ref = json::parse(in);
  const json& c = ref["cases"][1];
  auto as_json = [](const json& j) { return j.is_string() ? json::parse(j.get<std::string>()) : j; };
  const std::string data = testing::make_temp_dir("eval") + "/d.jsonl";
  std::ofstream(data) << json{{"ids", as_json(c["ids"])}}.dump() << "\n";
  r = run({"eval", "--model=" + model_, "--data=" + data});
  ASSERT_EQ(r.code, 0) << r.err;
  json out = json::parse(r.out);
  EXPECT_NEAR(out["loss"].get<double>(), as_json(c["mean_nll"]).get<double>(), 1e-5);
  EXPECT_NEAR(out["perplexity"].get<double>(), std::exp(as_json(c["mean_nll"]).get<double>()), 1e-4);
}

// `peft eval` reads --data by the training loader's rules: plain text is one
// document per paragraph, instruction records score only the response, and
// a bad line is named by file and line.
TEST_F(CliStoriesTest, EvalReadsDataLikeTraining) {
  const std::string dir = testing::make_temp_dir("eval_rules");
  auto eval = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir + "/" + name) << content;
    return run({"eval", "--model=" + model_, "--data=" + dir + "/" + name});
  };
  CliRun a = eval("a.jsonl", "{\"text\": \"Once upon a time there was a cat.\"}\n");
  CliRun b = eval("b.jsonl", "{\"text\": \"The dog ran to the park.\"}\n");
  CliRun both = eval("both.txt", "Once upon a time there was a cat.\n\nThe dog ran to the park.\n");
  ASSERT_EQ(a.code, 0) << a.err;
  ASSERT_EQ(b.code, 0) << b.err;
  ASSERT_EQ(both.code, 0) << both.err;
  const json ja = json::parse(a.out), jb = json::parse(b.out), jboth = json::parse(both.out);
  const int64_t na = ja["tokens"], nb = jb["tokens"];
  EXPECT_EQ(jboth["sequences"].get<int64_t>(), 2);
  EXPECT_EQ(jboth["tokens"].get<int64_t>(), na + nb);
  EXPECT_NEAR(jboth["loss"].get<double>(),
              (ja["loss"].get<double>() * na + jb["loss"].get<double>() * nb) / static_cast<double>(na + nb), 1e-9);

  // Only the response is scored: as many tokens as the response alone has.
  CliRun out = eval("out.jsonl", "{\"text\": \"The dog ran.\"}\n");
  CliRun inst = eval("inst.jsonl", "{\"instruction\": \"Tell a story.\", \"output\": \"The dog ran.\"}\n");
  ASSERT_EQ(out.code, 0) << out.err;
  ASSERT_EQ(inst.code, 0) << inst.err;
  EXPECT_EQ(json::parse(inst.out)["tokens"], json::parse(out.out)["tokens"]);

  CliRun bad = eval("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 3}\n");
  EXPECT_EQ(bad.code, 1);
  EXPECT_EQ(bad.out, "");
  EXPECT_NE(bad.err.find("bad.jsonl:2: \"text\" is a number"), std::string::npos) << bad.err;
}

TEST_F(CliStoriesTest, BadInputFailsCleanly) {
  const std::string tmp = testing::make_temp_dir("bad");
  // A truncated checkpoint: error, and no output directory.
  {
    std::ifstream src(assets_ + "/llama2c_stories260K/stories260K.bin", std::ios::binary);
    std::string bytes(std::istreambuf_iterator<char>(src), {});
    std::ofstream(tmp + "/cut.bin", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  CliRun r = run({"convert", "--from=llama2c", "--input=" + tmp + "/cut.bin", "--output=" + tmp + "/out"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("header implies"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(tmp + "/out"));
  // A tokenizer of the wrong kind: the model weights are not a tokenizer.
  r = run({"convert", "--from=llama2c", "--input=" + assets_ + "/llama2c_stories260K/stories260K.bin",
           "--output=" + tmp + "/out", "--tokenizer=" + model_ + "/model.safetensors"});
  EXPECT_EQ(r.code, 1);
  EXPECT_FALSE(fs::exists(tmp + "/out"));
  r = run({"generate", "--model=" + model_, "--tokenizer=" + model_ + "/config.json", "--prompt=hi"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("config.json"), std::string::npos) << r.err;
  // A prompt longer than the 512-position context.
  std::string long_prompt;
  for (int i = 0; i < 300; ++i) long_prompt += "Once upon a time ";
  r = run({"generate", "--model=" + model_, "--prompt=" + long_prompt});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("longer than the model's context of 512"), std::string::npos) << r.err;
  // Flags: unknown, missing required, malformed.
  r = run({"generate", "--model=" + model_, "--prompt=hi", "--max_new_token=3"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown flag --max_new_token"), std::string::npos) << r.err;
  r = run({"generate", "--prompt=hi"});
  EXPECT_NE(r.err.find("missing required flag --model"), std::string::npos) << r.err;
  r = run({"generate", "--model=" + model_, "--prompt=hi", "--top_k=many"});
  EXPECT_NE(r.err.find("--top_k must be an integer"), std::string::npos) << r.err;
  // Errors are one line.
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// tokenizer.json end to end: `peft tokenize --split_special_tokens` and
// `peft generate --chat`, against the Llama 3 reference ids
// (llama3_tokenizer/reference_ids.jsonl, category special_text).
TEST(CliTokenizerJsonTest, SplitSpecialTokensAndChatPrompt) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string tok = assets + "/llama3_tokenizer";
  CliRun r = run({"tokenize", "--tokenizer=" + tok}, "{\"text\": \"Hello<|eot_id|>world\"}\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\":[9906,128009,14957]}\n");
  r = run({"tokenize", "--tokenizer=" + tok, "--split_special_tokens"}, "{\"text\": \"Hello<|eot_id|>world\"}\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "{\"ids\":[9906,27,91,68,354,851,91,29,14957]}\n");

  // A random model with Llama 3's vocabulary; only the prompt ids matter.
  const std::string model = testing::make_temp_dir("cli_chat") + "/m";
  r = run({"init", "--arch=llama", "--output=" + model, "--vocab_size=128256", "--hidden_size=16",
           "--intermediate_size=32", "--num_layers=1", "--num_heads=2", "--max_positions=64"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = run({"generate", "--model=" + model, "--tokenizer=" + tok, "--chat", "--prompt=Hi!", "--max_new_tokens=2",
           "--format=json"});
  ASSERT_EQ(r.code, 0) << r.err;
  // The reference line for the rendered "<|begin_of_text|>...user...Hi!...assistant...\n\n".
  EXPECT_EQ(json::parse(r.out)["prompt_ids"].get<std::vector<int64_t>>(),
            (std::vector<int64_t>{128000, 128006, 882, 128007, 271, 13347, 0, 128009, 128006, 78191, 128007, 271}));
  r = run({"generate", "--model=" + model, "--tokenizer=" + tok, "--chat", "--prompt_ids=1,2"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--chat needs --prompt"), std::string::npos) << r.err;
  r = run({"generate", "--model=" + model, "--tokenizer=" + tok, "--system=be brief", "--prompt=Hi"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--system needs --chat"), std::string::npos) << r.err;
}

// `peft init --config=FILE` on real configs: the written config keeps the
// file's keys (model_type, window, biases, tying, torch_dtype), generate runs
// on it, and a short LoRA train, merge and GGUF export go through the CLI on
// the two tiny configs (training at 80 tokens, past Mistral's 64 window).
class CliArchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) return;
    work_ = testing::make_temp_dir("cli_arch");
    const std::string text = testing::slurp(assets_ + "/corpus/tinyshakespeare.txt").substr(0, 4000);
    std::ofstream data(work_ + "/train.jsonl");
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find("\n\n", pos);
      if (end == std::string::npos) end = text.size();
      data << json{{"text", text.substr(pos, end - pos)}}.dump() << "\n";
      pos = end + 2;
    }
  }
  void SetUp() override {
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  }
  static std::string config(const std::string& name) { return assets_ + "/configs/" + name + ".json"; }
  static json read_json(const std::string& path) {
    std::ifstream in(path);
    return json::parse(in);
  }
  static std::string assets_, work_;
};
std::string CliArchTest::assets_, CliArchTest::work_;

TEST_F(CliArchTest, InitFromConfigKeepsItsKeysAndGenerates) {
  struct Case {
    const char* name;
    const char* model_type;
    const char* dtype;  // the file's torch_dtype, kept without --dtype
  };
  for (const Case& c : {Case{"smollm2-135m", "llama", "bfloat16"}, Case{"mistral-tiny-window", "mistral", "float32"},
                        Case{"qwen2-tiny-bias", "qwen2", "float32"}}) {
    SCOPED_TRACE(c.name);
    const std::string out = work_ + "/init_" + c.name;
    CliRun r = run({"init", "--config=" + config(c.name), "--output=" + out, "--seed=3"});
    ASSERT_EQ(r.code, 0) << r.err;
    const json j = json::parse(r.out);
    EXPECT_EQ(j["model_type"], c.model_type);
    EXPECT_EQ(j["dtype"], c.dtype);
    const json original = read_json(config(c.name));
    const json written = read_json(out + "/config.json");
    for (const char* key : {"model_type", "architectures", "sliding_window", "use_sliding_window", "max_window_layers",
                            "tie_word_embeddings", "torch_dtype", "num_key_value_heads", "rope_theta", "vocab_size",
                            "bos_token_id", "eos_token_id", "initializer_range"}) {
      if (!original.contains(key)) continue;
      if (original[key].is_number()) {
        EXPECT_EQ(written[key].get<double>(), original[key].get<double>()) << key;
      } else {
        EXPECT_EQ(written[key], original[key]) << key;
      }
    }
    r = run({"generate", "--model=" + out, "--prompt_ids=1,2,3", "--max_new_tokens=4", "--format=json"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["generated_ids"].size(), 4u) << r.out;
  }
  // Qwen2's q/k/v biases are in the checkpoint (zero-initialised), o_proj's is not.
  const std::string st = testing::slurp(work_ + "/init_qwen2-tiny-bias/model.safetensors").substr(0, 20000);
  EXPECT_NE(st.find("model.layers.1.self_attn.k_proj.bias"), std::string::npos);
  EXPECT_EQ(st.find("o_proj.bias"), std::string::npos);
}

TEST_F(CliArchTest, InitRejectsShapeFlagsWithConfig) {
  for (const char* flag : {"--hidden_size=8", "--arch=llama", "--num_kv_heads=1", "--tie_word_embeddings"}) {
    const std::string out = work_ + "/bad";
    CliRun r = run({"init", "--config=" + config("qwen2-tiny-bias"), "--output=" + out, flag});
    EXPECT_EQ(r.code, 1) << flag;
    const std::string name = std::string(flag).substr(0, std::string(flag).find('='));
    EXPECT_NE(r.err.find(name + " cannot be combined with --config"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
  }
  CliRun r = run({"init", "--config=" + work_ + "/missing.json", "--output=" + work_ + "/bad"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("--config"), std::string::npos) << r.err;
  r = run({"init", "--arch=mistral", "--output=" + work_ + "/bad"});
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.err.find("use --config=FILE for mistral and qwen2"), std::string::npos) << r.err;
}

TEST_F(CliArchTest, LoraTrainMergeAndExportOnTinyConfigs) {
  struct Case {
    const char* name;
    const char* tokenizer;     // a real tokenizer no larger than the config's vocabulary
    const char* architecture;  // GGUF general.architecture
  };
  for (const Case& c : {Case{"mistral-tiny-window", "mistral_tokenizer", "llama"},
                        Case{"qwen2-tiny-bias", "llama3_tokenizer", "qwen2"}}) {
    SCOPED_TRACE(c.name);
    const std::string base = work_ + "/train_base_" + c.name;
    CliRun r = run({"init", "--config=" + config(c.name), "--output=" + base});
    ASSERT_EQ(r.code, 0) << r.err;
    const std::string tok = assets_ + "/" + c.tokenizer;
    const std::string recipe = work_ + "/" + c.name + ".textproto";
    std::ofstream(recipe) << "model: \"" << base << "\"\ntokenizer: \"" << tok << "\"\n"
                          << "data { train_file: \"" << work_ << "/train.jsonl\" seq_len: 80 }\n"
                          << R"(adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.01 }
training { steps: 4 micro_batch: 2 threads: 2 }
)";
    const std::string run_dir = work_ + "/run_" + c.name;
    r = run({"train", "--recipe=" + recipe, "--output_dir=" + run_dir});
    ASSERT_EQ(r.code, 0) << r.err;
    const std::string summary = r.out.substr(
        r.out.rfind('\n', r.out.size() - 2) == std::string::npos ? 0 : r.out.rfind('\n', r.out.size() - 2) + 1);
    EXPECT_EQ(json::parse(summary)["steps"], 4) << r.out;
    const json adapter = read_json(run_dir + "/adapter/adapter_config.json");
    EXPECT_EQ(adapter["target_modules"].size(), 7u) << adapter.dump();
    const std::string merged = work_ + "/merged_" + c.name;
    r = run({"merge", "--model=" + base, "--adapter=" + run_dir + "/adapter", "--output=" + merged});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(read_json(merged + "/config.json")["model_type"], read_json(config(c.name))["model_type"]);
    r = run({"generate", "--model=" + merged, "--tokenizer=" + tok, "--prompt=To be", "--max_new_tokens=3"});
    EXPECT_EQ(r.code, 0) << r.err;
    r = run({"export", "--model=" + merged, "--tokenizer=" + tok, "--format=gguf",
             "--output=" + work_ + "/" + c.name + ".gguf"});
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_EQ(json::parse(r.out)["architecture"], c.architecture);
    // llama.cpp's llama graph has no window: the export says so for Mistral.
    EXPECT_EQ(r.err.find("no sliding window") != std::string::npos, std::string(c.name) == "mistral-tiny-window")
        << r.err;
  }
}

TEST(CliTest, HelpAndUnknownCommand) {
  CliRun r = run({"--help"});
  EXPECT_EQ(r.code, 0);
  for (const char* c : {"  train ", "  launch ", "  convert ", "  generate ", "  tokenize ", "  eval ", "  merge ",
                        "  init ", "  bench "}) {
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
  }
  r = run({"frobnicate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown command 'frobnicate'"), std::string::npos);
  r = run({"generate", "--help"});
  EXPECT_NE(r.out.find("--max_new_tokens"), std::string::npos);
}

}  // namespace
}  // namespace peft
