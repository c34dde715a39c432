// Smoke tests of the quickstart program (examples/quickstart.cc) with a tiny
// built-in base (hidden 32, one layer) and a few steps, one thread: it runs
// end to end, writes summary.json with the accuracy fields, the merged export
// answers exactly as base + adapter, a second run reuses the cached base,
// --base runs the same recipe on a given model directory, and bad input fails
// with one line on stderr and writes nothing. The real default (and its
// accuracy) is measured by scripts/quickstart.sh and documented in the README.
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"
#include "tests/testing/tiny_task.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using Outcome = testing::ProgramRun;

Outcome run(const std::vector<std::string>& args) {
  return testing::run_program(testing::runfile("examples/quickstart"), args);
}

// The tiny task (tests/testing/tiny_task.h) into `work_dir`.
std::vector<std::string> tiny(const std::string& work_dir) {
  return testing::tiny_task_flags("--work_dir=" + work_dir);
}

using testing::kTinyBaseParameters;
using testing::kTinyLoraParameters;

json read_json(const std::string& path) {
  std::ifstream in(path);
  return json::parse(in);
}

void expect_unit_interval(const json& s, const char* key) {
  ASSERT_TRUE(s.contains(key)) << key;
  ASSERT_TRUE(s[key].is_number()) << key;
  EXPECT_GE(s[key].get<double>(), 0.0) << key;
  EXPECT_LE(s[key].get<double>(), 1.0) << key;
}

int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

class QuickstartTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    work_ = testing::make_temp_dir("quickstart") + "/run";
    first_ = run(tiny(work_));
    if (first_.code == 0) first_summary_ = read_json(work_ + "/summary.json");
  }
  static std::string work_;
  static Outcome first_;
  static json first_summary_;
};
std::string QuickstartTest::work_;
Outcome QuickstartTest::first_;
json QuickstartTest::first_summary_;

TEST_F(QuickstartTest, RunsEndToEndAndWritesSummary) {
  ASSERT_EQ(first_.code, 0) << first_.out << first_.err;
  const json& s = first_summary_;
  EXPECT_EQ(s["task"], "reverse");
  EXPECT_EQ(s["control_task"], "copy");
  EXPECT_EQ(s["prompt_template"], "{instruction}: {input} -> ");
  for (const char* k : {"accuracy_before", "accuracy_after", "accuracy_merged", "control_accuracy_before",
                        "control_accuracy_after", "control_accuracy_merged"}) {
    expect_unit_interval(s, k);
  }
  EXPECT_EQ(s["test_examples"], 8);
  EXPECT_EQ(s["train_examples"], 100);
  EXPECT_EQ(s["threads"], 1);
  EXPECT_EQ(s["base"]["source"], "built-in");
  EXPECT_EQ(s["base"]["cached"], false);
  EXPECT_EQ(s["base"]["parameters"], kTinyBaseParameters);
  EXPECT_EQ(s["base"]["pretrain"]["steps"], 4);
  // A random init (std 0.02) starts near the uniform loss ln 257 = 5.55.
  EXPECT_NEAR(s["base"]["pretrain"]["first_train_loss"].get<double>(), std::log(257.0), 0.3);
  EXPECT_EQ(s["lora"]["steps"], 3);
  EXPECT_EQ(s["lora"]["micro_batch"], 32);
  EXPECT_EQ(s["lora"]["trainable_parameters"], kTinyLoraParameters);
  EXPECT_TRUE(std::isfinite(s["lora"]["final_eval_loss"].get<double>()));
  ASSERT_EQ(s["examples"].size(), 3u);
  EXPECT_EQ(s["examples"][0]["prompt"], "reverse: hello -> ");
  EXPECT_EQ(s["examples"][0]["expected"], "olleh");
  EXPECT_NE(first_.out.find("quickstart summary"), std::string::npos) << first_.out;
  EXPECT_NE(first_.out.find("[pretrain]"), std::string::npos) << first_.out;
}

TEST_F(QuickstartTest, MergedExportAnswersLikeBasePlusAdapter) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  const json& s = first_summary_;
  EXPECT_EQ(s["merged_matches_unmerged"], true);
  EXPECT_EQ(s["merged_identical_answers"], 8);
  EXPECT_EQ(s["accuracy_merged"].get<double>(), s["accuracy_after"].get<double>());
  EXPECT_EQ(s["control_accuracy_merged"].get<double>(), s["control_accuracy_after"].get<double>());
}

// merged.gguf: the built-in base's byte-level BPE has no merges, and
// llama.cpp refuses a gpt2 vocabulary without the key: it is written empty.
TEST_F(QuickstartTest, WritesMergedGgufForLlamaCpp) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  EXPECT_EQ(first_summary_["merged_gguf"], work_ + "/merged.gguf");
  const testing::GgufFile f = testing::read_gguf(work_ + "/merged.gguf");
  ASSERT_EQ(f.error, "");
  EXPECT_EQ(f.get("general.architecture")->s, "llama");
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "gpt-2");
  ASSERT_NE(f.get("tokenizer.ggml.merges"), nullptr);
  EXPECT_TRUE(f.get("tokenizer.ggml.merges")->array.empty());
  const json config = read_json(work_ + "/merged/config.json");
  EXPECT_EQ(f.strings("tokenizer.ggml.tokens").size(), config["vocab_size"].get<size_t>());
  EXPECT_EQ(f.get("llama.block_count")->u, config["num_hidden_layers"].get<uint64_t>());
  EXPECT_NE(f.tensor("blk.0.attn_q.weight"), nullptr);
}

TEST_F(QuickstartTest, WritesDataAdapterAndSelfContainedExport) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  for (const char* f :
       {"data/train.jsonl", "data/test.jsonl", "data/pretrain.jsonl", "base/config.json", "base/model.safetensors",
        "base/tokenizer.json", "base/quickstart_base.json", "lora/adapter/adapter_config.json",
        "lora/adapter/adapter_model.safetensors", "lora/metrics.jsonl", "merged/config.json",
        "merged/model.safetensors", "merged/tokenizer.json"}) {
    EXPECT_TRUE(fs::is_regular_file(work_ + "/" + f)) << f;
  }
  EXPECT_FALSE(fs::exists(work_ + "/base_init"));
  // Test words are held out of the training data; half the records replay copy.
  std::ifstream test(work_ + "/data/test.jsonl"), train(work_ + "/data/train.jsonl");
  std::vector<std::string> words;
  for (std::string line; std::getline(test, line);) words.push_back(json::parse(line)["input"]);
  ASSERT_EQ(words.size(), 8u);
  int copies = 0, records = 0;
  for (std::string line; std::getline(train, line); ++records) {
    const json r = json::parse(line);
    const std::string in = r["input"];
    if (r["instruction"] == "copy") {
      ++copies;
      EXPECT_EQ(r["output"], in);
    } else {
      EXPECT_EQ(r["instruction"], "reverse");
      EXPECT_EQ(r["output"], std::string(in.rbegin(), in.rend()));
    }
    for (const std::string& w : words) ASSERT_NE(in, w);
  }
  EXPECT_EQ(records, 100);
  EXPECT_EQ(copies, 50);
}

TEST_F(QuickstartTest, SecondRunReusesTheCachedBase) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  const Outcome again = run(tiny(work_));
  ASSERT_EQ(again.code, 0) << again.out << again.err;
  EXPECT_EQ(again.out.find("[pretrain]"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("cached"), std::string::npos) << again.out;
  const json s = read_json(work_ + "/summary.json");
  EXPECT_EQ(s["base"]["cached"], true);
  // The same base, data, seed and thread count: the same numbers.
  EXPECT_EQ(s["base"]["pretrain"], first_summary_["base"]["pretrain"]);
  EXPECT_EQ(s["lora"]["final_train_loss"], first_summary_["lora"]["final_train_loss"]);
  EXPECT_EQ(s["merged_matches_unmerged"], true);
  // Other base settings: rebuilt, not reused.
  // (Flags may be given once: replace the two values.)
  std::vector<std::string> args = tiny(work_);
  for (std::string& a : args) {
    if (a.rfind("--pretrain_steps=", 0) == 0) a = "--pretrain_steps=3";
    if (a.rfind("--steps=", 0) == 0) a = "--steps=1";
  }
  const Outcome changed = run(args);
  ASSERT_EQ(changed.code, 0) << changed.out << changed.err;
  EXPECT_NE(changed.out.find("rebuilding"), std::string::npos) << changed.out;
  EXPECT_EQ(read_json(work_ + "/summary.json")["base"]["cached"], false);
}

TEST_F(QuickstartTest, BaseFlagRunsTheSameRecipeOnAGivenModel) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  const std::string other = testing::make_temp_dir("quickstart_base") + "/run";
  const Outcome r = run({"--work_dir=" + other, "--base=" + work_ + "/base", "--train_examples=100",
                         "--test_examples=5", "--steps=2", "--threads=1", "--set=training.micro_batch=4"});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const json s = read_json(other + "/summary.json");
  EXPECT_EQ(s["base"]["source"], work_ + "/base");
  EXPECT_EQ(s["base"]["parameters"], kTinyBaseParameters);
  EXPECT_EQ(s["lora"]["micro_batch"], 4);
  EXPECT_EQ(s["lora"]["steps"], 2);
  EXPECT_EQ(s["merged_matches_unmerged"], true);
  EXPECT_FALSE(fs::exists(other + "/pretrain"));
  EXPECT_FALSE(fs::exists(other + "/base"));
}

TEST(QuickstartErrorsTest, BadInputFailsWithOneLineAndWritesNothing) {
  const std::string work = testing::make_temp_dir("quickstart_err") + "/run";
  struct Case {
    std::vector<std::string> args;
    int code;
    std::string names;
  };
  const std::vector<Case> cases = {
      {{"--no_such_flag=1"}, 2, "no_such_flag"},
      {{"--steps=many"}, 2, "steps"},  // a malformed number is a usage error, found at parse
      {{"--set=training.no_such_field=3"}, 1, "no_such_field"},
      {{"--min_len=5", "--max_len=4"}, 1, "--max_len"},
      {{"--hidden_size=30", "--num_heads=4"}, 1, "--num_heads"},
      {{"--base=" + work + "_missing"}, 1, "_missing"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--work_dir=" + work};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const Outcome r = run(args);
    EXPECT_EQ(r.code, c.code) << c.args[0] << ": " << r.err;
    EXPECT_EQ(count_lines(r.err), 1) << c.args[0] << ": " << r.err;
    EXPECT_NE(r.err.find(c.names), std::string::npos) << r.err;
    EXPECT_TRUE(r.out.empty()) << c.args[0] << ": " << r.out;
    EXPECT_FALSE(fs::exists(work)) << c.args[0] << " left " << work << " behind";
  }
}

}  // namespace
}  // namespace peft
