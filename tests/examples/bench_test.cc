// `peft bench --suite=methods` (examples/cli/bench_command.cc) with a tiny
// built-in base (hidden 32, one layer), a few steps and two methods, each
// with and without reweighting: bench.json holds every field for every
// variant, bench.md and stdout hold the table rows, a non-mergeable method
// says why, and bad --methods / --reweighting / --suite values fail with one
// line and write nothing. The real numbers are in docs/benchmarks.md.
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_split.h"
#include "tests/testing/assets.h"
#include "tests/testing/tiny_task.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using Outcome = testing::ProgramRun;
using testing::slurp;

Outcome bench(const std::vector<std::string>& args) {
  std::vector<std::string> all = {"bench"};
  all.insert(all.end(), args.begin(), args.end());
  return testing::run_program(testing::runfile("examples/peft"), all);
}

// The tiny task (tests/testing/tiny_task.h) into `out_dir`.
std::vector<std::string> tiny(const std::string& out_dir) { return testing::tiny_task_flags("--out_dir=" + out_dir); }

using testing::kTinyBaseParameters;
using testing::kTinyLoraParameters;

class BenchTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    out_ = testing::make_temp_dir("bench") + "/out";
    std::vector<std::string> args = tiny(out_);
    args.push_back("--methods=lora,compacter");
    first_ = bench(args);
    if (first_.code == 0) result_ = json::parse(slurp(out_ + "/bench.json"));
  }
  static const json* variant(const std::string& name) {
    for (const json& v : result_["variants"]) {
      if (v["variant"] == name) return &v;
    }
    return nullptr;
  }
  static std::string out_;
  static Outcome first_;
  static json result_;
};
std::string BenchTest::out_;
Outcome BenchTest::first_;
json BenchTest::result_;

TEST_F(BenchTest, JsonHasEveryFieldForEveryVariant) {
  ASSERT_EQ(first_.code, 0) << first_.out << first_.err;
  const json& r = result_;
  EXPECT_EQ(r["suite"], "methods");
  for (const char* k : {"cpu", "cores", "threads", "memory", "libtorch", "date"})
    EXPECT_TRUE(r["machine"].contains(k)) << k;
  EXPECT_EQ(r["machine"]["threads"], 1);
  EXPECT_EQ(r["settings"]["steps"], 3);
  EXPECT_EQ(r["settings"]["micro_batch"], 32);
  EXPECT_EQ(r["base"]["parameters"], kTinyBaseParameters);
  EXPECT_EQ(r["base"]["test_examples"], 8);
  ASSERT_EQ(r["variants"].size(), 4u);
  std::vector<std::string> names;
  for (const json& v : r["variants"]) {
    names.push_back(v["variant"]);
    EXPECT_EQ(v["steps"], 3) << v["variant"];
    EXPECT_EQ(v["base_parameters"], kTinyBaseParameters);
    EXPECT_GT(v["trainable_parameters"].get<int64_t>(), 0);
    EXPECT_LT(v["trainable_parameters"].get<int64_t>(), kTinyBaseParameters);
    EXPECT_GT(v["step_seconds"].get<double>(), 0) << v["variant"];
    EXPECT_GT(v["tokens_per_second"].get<double>(), 0) << v["variant"];
    EXPECT_GT(v["peak_rss_mb"].get<double>(), 10) << v["variant"];
    // Three steps from a 4-step base: the loss is still near uniform (ln 257 = 5.55).
    EXPECT_NEAR(v["final_eval_loss"].get<double>(), std::log(257.0), 1.0) << v["variant"];
    for (const char* k : {"accuracy", "control_accuracy"}) {
      EXPECT_GE(v[k].get<double>(), 0);
      EXPECT_LE(v[k].get<double>(), 1);
    }
    EXPECT_TRUE(v["hsm"].is_null());
  }
  EXPECT_EQ(names, (std::vector<std::string>{"lora", "lora+rw", "compacter", "compacter+rw"}));
}

TEST_F(BenchTest, LoraMergesAndCompacterSaysWhyNot) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  for (const char* name : {"lora", "lora+rw"}) {
    const json* v = variant(name);
    ASSERT_NE(v, nullptr) << name;
    EXPECT_EQ((*v)["trainable_parameters"], kTinyLoraParameters);
    EXPECT_EQ((*v)["merge"]["mergeable"], true);
    EXPECT_GE((*v)["merge"]["seconds"].get<double>(), 0);
  }
  const json* c = variant("compacter");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ((*c)["merge"]["mergeable"], false);
  EXPECT_TRUE((*c)["merge"]["seconds"].is_null());
  EXPECT_NE((*c)["merge"]["note"].get<std::string>().find("cannot be merged"), std::string::npos) << (*c)["merge"];
}

TEST_F(BenchTest, ReweightingIsOnOnlyWhereAsked) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  EXPECT_EQ((*variant("lora"))["reweighting"], "off");
  EXPECT_NE((*variant("lora+rw"))["reweighting"].get<std::string>().find("LIN_UPPER"), std::string::npos);
  // The trainer logs weight statistics only when reweighting is on.
  EXPECT_EQ(slurp(out_ + "/work/runs/lora/metrics.jsonl").find("\"weights\""), std::string::npos);
  EXPECT_NE(slurp(out_ + "/work/runs/lora+rw/metrics.jsonl").find("\"weights\""), std::string::npos);
  EXPECT_NE((*variant("lora"))["final_train_loss"], (*variant("lora+rw"))["final_train_loss"]);
}

TEST_F(BenchTest, MarkdownAndStdoutHoldTheTable) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  const std::string md = slurp(out_ + "/bench.md");
  EXPECT_NE(md.find("Machine: "), std::string::npos) << md;
  EXPECT_NE(md.find("| method | reweighting | trainable |"), std::string::npos) << md;
  for (const char* row :
       {"| base, no fine-tuning |", "| LoRA r=8 | off | 4,864 |", "| LoRA r=8 | LinUpper | 4,864 |",
        "| Compacter n=4, k=d/8 | off |", "| Compacter n=4, k=d/8 | LinUpper |", "Compacter n=4, k=d/8: merge n/a ("}) {
    EXPECT_NE(md.find(row), std::string::npos) << row << "\n" << md;
    EXPECT_NE(first_.out.find(row), std::string::npos) << row << "\n" << first_.out;
  }
}

TEST_F(BenchTest, SubsetReusesTheBaseAndRunsOneVariant) {
  ASSERT_EQ(first_.code, 0) << first_.err;
  std::vector<std::string> args = tiny(out_);
  args.push_back("--methods=full");
  args.push_back("--reweighting=off");
  const Outcome r = bench(args);
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out.find("[pretrain]"), std::string::npos) << r.out;
  const json j = json::parse(slurp(out_ + "/bench.json"));
  EXPECT_EQ(j["base"]["cached"], true);
  ASSERT_EQ(j["variants"].size(), 1u);
  const json& v = j["variants"][0];
  EXPECT_EQ(v["variant"], "full");
  EXPECT_EQ(v["trainable_parameters"], kTinyBaseParameters);
  EXPECT_EQ(v["merge"]["mergeable"], false);
}

// --suite=perf at the tiny size: one child per precision, every field of
// trainers/perf_bench.h, LoRA's trainable count, no gradient on the frozen
// base, and the table with each target's verdict (the eager reference is
// the target model's only, so it says why it did not run).
TEST(BenchPerfTest, TinyRunReportsEveryFieldAndTheTargets) {
  const std::string out = testing::make_temp_dir("bench_perf") + "/out";
  const Outcome r = bench({"--suite=perf", "--perf_model=tiny", "--steps=2", "--threads=1", "--out_dir=" + out});
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const json j = json::parse(slurp(out + "/bench.json"));
  EXPECT_EQ(j["suite"], "perf");
  EXPECT_EQ(j["device"], "cpu");
  ASSERT_EQ(j["runs"].size(), 2u);
  // LoRA r=8 on q, k, v, o (64 -> 64), gate, up (64 -> 172), down (172 -> 64), 2 layers.
  constexpr int64_t kLora = 2 * 8 * (4 * (64 + 64) + 3 * (64 + 172));
  constexpr int64_t kBase = 2 * 512 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 172 + 2 * 64) + 64;
  for (const json& run : j["runs"]) {
    const json& o = run["peft_cpp"];
    EXPECT_EQ(o["precision"], run["precision"]);
    EXPECT_EQ(o["trainable_parameters"], kLora);
    EXPECT_EQ(o["base_parameters"], kBase);
    EXPECT_EQ(o["base_parameters_with_grad"], 0);
    EXPECT_EQ(o["measured_steps"], 2);
    EXPECT_GT(o["tokens_per_s"].get<double>(), 0);
    EXPECT_GT(o["mfu"].get<double>(), 0);
    EXPECT_GT(o["peak_matmul_gflops"].get<double>(), 0);
    EXPECT_GT(o["peak_rss_mb"].get<double>(), 0);
    EXPECT_TRUE(std::isfinite(o["last_loss"].get<double>()));
    EXPECT_TRUE(run["eager"].is_null());
    EXPECT_NE(run["eager_note"].get<std::string>().find("target model"), std::string::npos);
  }
  EXPECT_EQ(j["runs"][0]["precision"], "bf16");
  EXPECT_EQ(j["runs"][1]["precision"], "fp32");
  const std::string md = slurp(out + "/bench.md");
  EXPECT_NE(md.find("| peft-cpp | bf16 |"), std::string::npos) << md;
  EXPECT_NE(md.find("- fp32: MFU"), std::string::npos) << md;
  EXPECT_NE(md.find("frozen base weights with a gradient: 0"), std::string::npos) << md;
}

TEST(BenchErrorsTest, BadValuesFailWithOneLineAndWriteNothing) {
  const std::string out = testing::make_temp_dir("bench_err") + "/out";
  struct Case {
    std::string flag, names;
  };
  for (const Case& c : std::vector<Case>{{"--methods=lora,bogus", "'bogus'"},
                                         {"--methods=lora,lora", "given twice"},
                                         {"--reweighting=sometimes", "--reweighting"},
                                         {"--suite=nope", "'nope'"},
                                         {"--steps=-1", "--steps"},
                                         {"--no_such_flag", "no_such_flag"},
                                         {"--suite=perf --precisions=bf16,fp16", "'fp16'"},
                                         {"--suite=perf --device=tpu", "--device"},
                                         {"--suite=perf --perf_model=huge", "--perf_model"}}) {
    std::vector<std::string> args = {"--out_dir=" + out};
    for (absl::string_view a : absl::StrSplit(c.flag, ' ')) args.emplace_back(a);
    const Outcome r = bench(args);
    EXPECT_NE(r.code, 0) << c.flag;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << c.flag << ": " << r.err;
    EXPECT_NE(r.err.find(c.names), std::string::npos) << c.flag << ": " << r.err;
    EXPECT_TRUE(r.out.empty()) << c.flag << ": " << r.out;
    EXPECT_FALSE(fs::exists(out)) << c.flag;
  }
}

}  // namespace
}  // namespace peft
