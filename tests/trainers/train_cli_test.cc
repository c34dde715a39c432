// `peft train` end to end on stories260K: a LoRA recipe lowers the held-out
// loss and writes the run directory; a run killed with SIGKILL and resumed
// ends with adapter weights bitwise equal to an uninterrupted run; recipe
// and run-directory errors are clear.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tests/testing/assets.h"
#include "tests/testing/safetensors_compare.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string binary() { return testing::runfile("examples/peft"); }

struct Result {
  int code;
  std::string out, err;
};

using testing::slurp;

Result run(const std::string& args) {
  const std::string tmp = testing::make_temp_dir("tr");
  const int status = std::system((binary() + " " + args + " >" + tmp + "/o 2>" + tmp + "/e").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, slurp(tmp + "/o"), slurp(tmp + "/e")};
}

class TrainCliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) return;
    work_ = testing::make_temp_dir("train");
    const std::string a = assets_ + "/llama2c_stories260K";
    Result c = run("convert --from=llama2c --input=" + a + "/stories260K.bin --tokenizer=" + a +
                   "/tok512.model --output=" + work_ + "/base");
    ASSERT_EQ(c.code, 0) << c.err;
    // A small Shakespeare slice as JSON lines, one paragraph per record.
    std::string text = slurp(assets_ + "/corpus/tinyshakespeare.txt").substr(0, 60000);
    std::ofstream data(work_ + "/train.jsonl");
    size_t pos = 0;
    while (pos < text.size()) {
      size_t end = text.find("\n\n", pos);
      if (end == std::string::npos) end = text.size();
      data << json{{"text", text.substr(pos, end - pos)}}.dump() << "\n";
      pos = end + 2;
    }
    std::ofstream(work_ + "/recipe.textproto") << "model: \"" << work_ << "/base\"\n"
                                               << "output_dir: \"" << work_ << "/run\"\n"
                                               << R"(data { train_file: ")" << work_ << R"(/train.jsonl" seq_len: 64 }
adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.01 }
schedule { kind: COSINE warmup_steps: 2 }
training { steps: 16 micro_batch: 4 grad_accum: 2 threads: 1 }
eval { max_batches: 4 }
checkpoint { every_steps: 4 keep_last: 2 }
logging { every_steps: 4 }
)";
  }
  void SetUp() override {
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  }
  static std::string assets_, work_;
};
std::string TrainCliTest::assets_, TrainCliTest::work_;

TEST_F(TrainCliTest, LoraRecipeLearnsAndWritesTheRunDirectory) {
  const std::string out = work_ + "/basic";
  Result r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out);
  ASSERT_EQ(r.code, 0) << r.err;
  json s = json::parse(r.out);
  EXPECT_EQ(s["steps"], 16);
  EXPECT_LT(s["final_eval_loss"].get<double>(), s["initial_eval_loss"].get<double>() - 0.3) << r.out;
  for (const char* f : {"recipe.textproto", "metrics.jsonl", "loss.svg", "summary.json", "adapter/adapter_config.json",
                        "adapter/adapter_model.safetensors"}) {
    EXPECT_TRUE(fs::exists(out + "/" + f)) << f;
  }
  std::istringstream lines(slurp(out + "/metrics.jsonl"));
  std::string line;
  int train_lines = 0;
  while (std::getline(lines, line)) {
    json m = json::parse(line);
    if (m.contains("loss")) {
      ++train_lines;
      EXPECT_TRUE(m.contains("lr") && m.contains("grad_norm") && m.contains("tokens_per_s") &&
                  m.contains("peak_rss_mb"));
    }
  }
  EXPECT_EQ(train_lines, 16);
  EXPECT_EQ(slurp(out + "/loss.svg").rfind("<svg", 0), 0u);
  // A second run into the same directory must not silently mix with it.
  Result again = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out);
  EXPECT_EQ(again.code, 1);
  EXPECT_NE(again.err.find("--resume"), std::string::npos) << again.err;
}

// training.activation_checkpointing recomputes each block in backward: the
// same 16 fp32 steps (LoRA, gradient accumulation) end with the same
// adapter as without it, to float rounding.
TEST_F(TrainCliTest, ActivationCheckpointingTrainsTheSameAdapter) {
  const std::string plain = work_ + "/ac_off", ckpt = work_ + "/ac_on";
  const std::string common = "train --recipe=" + work_ + "/recipe.textproto ";
  Result a = run(common + "--output_dir=" + plain);
  ASSERT_EQ(a.code, 0) << a.err;
  Result b = run(common + "--set=training.activation_checkpointing=true --output_dir=" + ckpt);
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(slurp(ckpt + "/recipe.textproto").find("activation_checkpointing: true") != std::string::npos, true);
  const testing::SafetensorsDifference d = testing::compare_safetensors(plain + "/adapter/adapter_model.safetensors",
                                                                        ckpt + "/adapter/adapter_model.safetensors");
  ASSERT_EQ(d.error, "");
  EXPECT_GT(d.max_abs_value, 1e-3) << "the adapters did not train";
  EXPECT_LE(d.max_abs_difference, 1e-5) << "largest adapter value " << d.max_abs_value;
}

// --merge_on_finish writes <run>/merged, a Hugging Face directory that
// generates exactly like the base with the run's adapter.
TEST_F(TrainCliTest, MergeOnFinishWritesAModelThatGeneratesLikeBasePlusAdapter) {
  const std::string out = work_ + "/merge_run";
  Result r =
      run("train --recipe=" + work_ + "/recipe.textproto --set=training.steps=6 --merge_on_finish --output_dir=" + out);
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(fs::exists(out + "/merged/config.json"));
  const std::string gen = " --prompt_ids=1,403,407,261 --max_new_tokens=12 --format=json";
  Result merged = run("generate --model=" + out + "/merged" + gen);
  Result unmerged = run("generate --model=" + work_ + "/base --adapter=" + out + "/adapter" + gen);
  Result base = run("generate --model=" + work_ + "/base" + gen);
  ASSERT_EQ(merged.code, 0) << merged.err;
  ASSERT_EQ(unmerged.code, 0) << unmerged.err;
  ASSERT_EQ(base.code, 0) << base.err;
  EXPECT_EQ(json::parse(merged.out)["generated_ids"], json::parse(unmerged.out)["generated_ids"]) << merged.out;
  EXPECT_EQ(json::parse(merged.out)["generated_ids"].size(), 12u);
  // The adapter trained: the merged model is not the base.
  EXPECT_NE(json::parse(merged.out)["generated_ids"], json::parse(base.out)["generated_ids"]) << base.out;
  // The export carries the base's tokenizer, so it generates from text alone.
  ASSERT_TRUE(fs::exists(work_ + "/base/tokenizer.model"));
  EXPECT_EQ(slurp(out + "/merged/tokenizer.model"), slurp(work_ + "/base/tokenizer.model"));
  Result text = run("generate --model=" + out + "/merged --prompt='Once upon a time' --max_new_tokens=8");
  ASSERT_EQ(text.code, 0) << text.err;
  EXPECT_EQ(text.out.rfind("Once upon a time", 0), 0u) << text.out;
}

TEST_F(TrainCliTest, KilledAndResumedRunIsBitwiseEqual) {
  const std::string straight = work_ + "/straight", killed = work_ + "/killed";
  Result a = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + straight);
  ASSERT_EQ(a.code, 0) << a.err;

  // Start the same run, SIGKILL it once the step-8 checkpoint exists.
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string recipe = "--recipe=" + work_ + "/recipe.textproto", dir = "--output_dir=" + killed;
    if (freopen("/dev/null", "w", stderr) == nullptr) _exit(126);
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    execl(binary().c_str(), "peft", "train", recipe.c_str(), dir.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(killed + "/checkpoints/step-00000008/state.json") && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(fs::exists(killed + "/checkpoints/step-00000008/state.json"));
  ASSERT_FALSE(fs::exists(killed + "/summary.json")) << "the run finished before it was killed";

  Result b = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + killed + " --resume");
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_GE(json::parse(b.out)["resumed_from_step"].get<int>(), 8);
  EXPECT_EQ(slurp(straight + "/adapter/adapter_model.safetensors"),
            slurp(killed + "/adapter/adapter_model.safetensors"))
      << "resumed adapter differs from the uninterrupted run";
  // The resumed run's metrics hold each step once (the lines the killed run
  // wrote after its checkpoint are dropped), with the same losses, and its
  // loss curve is the whole run's.
  auto losses = [](const std::string& path) {
    std::vector<std::pair<int64_t, double>> out;
    std::istringstream lines(slurp(path));
    for (std::string l; std::getline(lines, l);) {
      const json m = json::parse(l);
      if (m.contains("loss")) out.emplace_back(m["step"].get<int64_t>(), m["loss"].get<double>());
    }
    return out;
  };
  const auto a_losses = losses(straight + "/metrics.jsonl"), b_losses = losses(killed + "/metrics.jsonl");
  ASSERT_EQ(a_losses.size(), 16u);
  EXPECT_EQ(a_losses, b_losses);
  EXPECT_EQ(slurp(straight + "/loss.svg"), slurp(killed + "/loss.svg"));
  const json sa = json::parse(slurp(straight + "/summary.json")), sb = json::parse(slurp(killed + "/summary.json"));
  for (const char* k : {"steps", "first_train_loss", "final_train_loss", "initial_eval_loss", "final_eval_loss"}) {
    EXPECT_EQ(sa[k], sb[k]) << k;
  }
}

// The last step is checkpointed too: --resume of a finished run does nothing,
// with more training.steps it continues from the end (saying what changed),
// and with fewer it is refused.
TEST_F(TrainCliTest, ResumingAFinishedRunKeepsItOrExtendsIt) {
  const std::string out = work_ + "/finished";
  const std::string train = "train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out;
  Result r = run(train);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out + "/checkpoints/step-00000016/state.json"));
  const std::string adapter = slurp(out + "/adapter/adapter_model.safetensors");
  const json first = json::parse(r.out);

  r = run(train + " --resume");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("already complete at step 16"), std::string::npos) << r.err;
  json again = json::parse(r.out);
  EXPECT_EQ(again["steps"], 16);
  EXPECT_EQ(again["final_train_loss"], first["final_train_loss"]);
  EXPECT_EQ(again["final_eval_loss"], first["final_eval_loss"]);
  EXPECT_EQ(slurp(out + "/adapter/adapter_model.safetensors"), adapter) << "a finished run was changed";

  r = run(train + " --resume --set=training.steps=20");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("modified: training.steps: 16 -> 20"), std::string::npos) << r.err;
  json longer = json::parse(r.out);
  EXPECT_EQ(longer["resumed_from_step"], 16);
  EXPECT_EQ(longer["steps"], 20);
  EXPECT_NE(slurp(out + "/adapter/adapter_model.safetensors"), adapter);

  r = run(train + " --resume --set=training.steps=12");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("training.steps: 12 is fewer than the 20 steps"), std::string::npos) << r.err;
}

// SIGTERM (a preemption, scancel, Ctrl-C's SIGINT alike) ends the run after
// the current step with a checkpoint of that step, and --resume goes on
// from it.
TEST_F(TrainCliTest, SigtermStopsAfterTheStepWithACheckpoint) {
  const std::string out = work_ + "/signalled";
  auto start = [&](bool resume) {
    const pid_t pid = fork();
    if (pid == 0) {
      const std::string recipe = "--recipe=" + work_ + "/recipe.textproto", dir = "--output_dir=" + out;
      if (freopen((out + (resume ? ".err2" : ".err")).c_str(), "w", stderr) == nullptr) _exit(126);
      if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
      execl(binary().c_str(), "peft", "train", recipe.c_str(), dir.c_str(), "--set=training.steps=2000",
            resume ? "--resume" : static_cast<char*>(nullptr), static_cast<char*>(nullptr));
      _exit(127);
    }
    return pid;
  };
  auto train_lines = [&] {
    std::istringstream lines(slurp(out + "/metrics.jsonl"));
    int n = 0;
    for (std::string l; std::getline(lines, l);) n += l.find("\"loss\"") != std::string::npos ? 1 : 0;
    return n;
  };
  auto stop_after = [&](pid_t pid, int lines) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (train_lines() < lines && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    return status;
  };
  const pid_t pid = start(false);
  ASSERT_GT(pid, 0);
  int status = stop_after(pid, 3);
  ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping";
  EXPECT_EQ(WEXITSTATUS(status), 1);
  const int steps = train_lines();
  ASSERT_GE(steps, 3);
  const std::string ckpt = absl::StrFormat("%s/checkpoints/step-%08d", out, steps);
  const std::string err = slurp(out + ".err");
  EXPECT_NE(err.find(absl::StrCat("stopped by SIGTERM after step ", steps, " of 2000; checkpoint ", ckpt)),
            std::string::npos)
      << err;
  EXPECT_TRUE(fs::exists(ckpt + "/state.json")) << ckpt;
  EXPECT_EQ(json::parse(slurp(ckpt + "/state.json"))["step"], steps);
  EXPECT_FALSE(fs::exists(out + "/summary.json"));

  // Resumed, it starts from that step (and stops again the same way).
  const pid_t again = start(true);
  ASSERT_GT(again, 0);
  status = stop_after(again, steps + 2);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  const std::string err2 = slurp(out + ".err2");
  EXPECT_NE(err2.find(absl::StrCat("resumed from ", ckpt, " at step ", steps)), std::string::npos) << err2;
  EXPECT_NE(err2.find("stopped by SIGTERM after step "), std::string::npos) << err2;
}

// Starts `peft train` in the background (stdout to /dev/null, stderr to
// `err`); returns its pid.
pid_t start_train(const std::vector<std::string>& args, const std::string& err) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (freopen(err.c_str(), "w", stderr) == nullptr) _exit(126);
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    std::vector<char*> argv = {const_cast<char*>("peft"), const_cast<char*>("train")};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(binary().c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

bool wait_for(const std::function<bool()>& ready, int seconds = 120) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (!ready()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A second `peft train` (or --resume) into a directory a run is writing is
// refused, naming the holder; the holder goes on undisturbed.
TEST_F(TrainCliTest, OneWriterPerRunDirectory) {
  const std::string out = work_ + "/locked";
  const pid_t pid = start_train(
      {"--recipe=" + work_ + "/recipe.textproto", "--output_dir=" + out, "--set=training.steps=2000"}, out + ".err");
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for([&] { return slurp(out + "/metrics.jsonl").find("\"loss\"") != std::string::npos; }));
  for (const std::string extra : {"", " --resume"}) {
    Result r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out + extra);
    EXPECT_EQ(r.code, 1) << extra;
    EXPECT_NE(r.err.find(absl::StrCat("run directory ", out, " is in use by another peft process (pid ", pid)),
              std::string::npos)
        << r.err;
  }
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_NE(slurp(out + ".err").find("stopped by SIGTERM after step"), std::string::npos) << slurp(out + ".err");
}

// A run that ends before its first step leaves nothing that blocks the
// next: a sequence longer than the context is refused by --dry_run, and a
// SIGTERM while the run starts removes what it wrote.
TEST_F(TrainCliTest, FailedStartsLeaveNothingBehind) {
  const std::string out = work_ + "/failed_start";
  Result r =
      run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out + " --set=data.seq_len=100000 --dry_run");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("data.seq_len = 100000 is longer than the model's context"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // A micro-batch whose logits alone exceed the machine's memory.
  r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out +
          " --set=training.micro_batch=1000000 --dry_run");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("training.micro_batch = 1000000 x data.seq_len = 64 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GB of memory is available: lower training.micro_batch"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--ignore_memory_plan trains anyway"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("store the base in bf16 (training.base_dtype: BF16) or turn on "
                       "training.activation_checkpointing"),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(out));
  // The refusal suggests only settings not already in effect.
  r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out +
          " --set=training.micro_batch=1000000 --set=training.base_dtype=BF16"
          " --set=training.activation_checkpointing=true --dry_run");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("available: lower training.micro_batch, data.seq_len or training.grad_accum (--ignore"),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.err.find("store the base in bf16"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("turn on training.activation_checkpointing"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // --ignore_memory_plan turns the refusal into a warning (a dry run: nothing
  // is allocated for the batch).
  r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out +
          " --set=training.micro_batch=1000000 --dry_run --ignore_memory_plan");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: the memory plan's expected peak"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("going on as --ignore_memory_plan asks"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));

  // The lock is taken after the stop handler is installed: once the
  // directory exists, a SIGTERM stops the run cleanly.
  const pid_t pid = start_train({"--recipe=" + work_ + "/recipe.textproto", "--output_dir=" + out,
                                 "--set=eval.max_batches=100000", "--set=data.validation_fraction=0.5"},
                                work_ + "/failed_start.err");
  ASSERT_GT(pid, 0);
  ASSERT_TRUE(wait_for([&] { return fs::exists(out); }));
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  const std::string err = slurp(work_ + "/failed_start.err");
  ASSERT_TRUE(WIFEXITED(status)) << err;
  EXPECT_EQ(WEXITSTATUS(status), 1) << err;
  EXPECT_NE(err.find("stopped by SIGTERM"), std::string::npos) << err;
  EXPECT_NE(err.find("nothing kept"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(out)) << err;
  // So the same command starts afresh.
  r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out + " --set=training.steps=2");
  EXPECT_EQ(r.code, 0) << r.err;
}

// A metrics.jsonl that cannot be written (here: /dev/full, a full disk)
// stops the run with an error naming the file instead of training on.
TEST_F(TrainCliTest, MetricsWriteFailureStopsTheRun) {
  const std::string out = work_ + "/full_disk";
  fs::create_directories(out);
  fs::create_symlink("/dev/full", out + "/metrics.jsonl");
  Result r = run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + out + " --resume");
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find(absl::StrCat("cannot write ", out, "/metrics.jsonl: No space left on device")),
            std::string::npos)
      << r.err;
  EXPECT_FALSE(fs::exists(out + "/summary.json"));
}

// A corrupt newest checkpoint fails --resume with a way on: the previous
// checkpoint is named, and moving the corrupt one aside resumes from it.
TEST_F(TrainCliTest, CorruptNewestCheckpointNamesThePreviousOne) {
  const std::string out = work_ + "/corrupt_ckpt";
  const std::string train = "train --recipe=" + work_ + "/recipe.textproto --set=training.steps=8 --output_dir=" + out;
  Result r = run(train);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string newest = absl::StrFormat("%s/checkpoints/step-%08d", out, 8);
  const std::string older = absl::StrFormat("%s/checkpoints/step-%08d", out, 4);
  ASSERT_TRUE(fs::exists(older + "/state.json"));
  std::ofstream(newest + "/trainable.safetensors", std::ios::trunc) << "garbage";
  r = run(train + " --resume --set=training.steps=12");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("the previous checkpoint " + older + " may be intact: move " + newest + " aside"),
            std::string::npos)
      << r.err;
  fs::rename(newest, out + "/step-8.bad");
  r = run(train + " --resume --set=training.steps=12");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("resumed from " + older + " at step 4"), std::string::npos) << r.err;
}

// checkpoint.every_steps = 0 keeps no checkpoint: a second run into the same
// directory is refused instead of overwriting the first one's outputs.
TEST_F(TrainCliTest, ARunWithoutCheckpointsIsNeverOverwritten) {
  const std::string out = work_ + "/nockpt";
  const std::string train = "train --recipe=" + work_ + "/recipe.textproto --set=training.steps=4 " +
                            "--set=checkpoint.every_steps=0 --output_dir=" + out;
  Result r = run(train);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(fs::exists(out + "/checkpoints"));
  const std::string adapter = slurp(out + "/adapter/adapter_model.safetensors");
  r = run(train);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already holds the output of a run (summary.json)"), std::string::npos) << r.err;
  r = run(train + " --resume");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("already complete at step 4"), std::string::npos) << r.err;
  r = run(train + " --resume --set=training.steps=6");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("finished at step 4 without checkpoints"), std::string::npos) << r.err;
  EXPECT_EQ(slurp(out + "/adapter/adapter_model.safetensors"), adapter);
}

// PAT's gate schedule depends on the optimizer step: a run with HSM stopped
// after step 5 of 10 and resumed ends bitwise equal to the uninterrupted run
// (the schedule continues at the checkpoint's step instead of restarting at
// t = 0). A constant learning rate makes the 5-step first half the same run.
TEST_F(TrainCliTest, HsmRunResumedHalfWayIsBitwiseEqual) {
  const std::string hsm =
      " --set='adapters.0={ name: \"default\" hsm { target_hidden: 48 bottleneck: 8 global_step: 10 } }'"
      " --set=schedule.kind=CONSTANT --set=schedule.warmup_steps=0 --set=checkpoint.every_steps=5";
  const std::string straight = work_ + "/hsm_straight", halves = work_ + "/hsm_halves";
  const std::string train = "train --recipe=" + work_ + "/recipe.textproto" + hsm;
  Result a = run(train + " --set=training.steps=10 --output_dir=" + straight);
  ASSERT_EQ(a.code, 0) << a.err;
  Result b = run(train + " --set=training.steps=5 --output_dir=" + halves);
  ASSERT_EQ(b.code, 0) << b.err;
  b = run(train + " --set=training.steps=10 --output_dir=" + halves + " --resume");
  ASSERT_EQ(b.code, 0) << b.err;
  EXPECT_EQ(json::parse(b.out)["resumed_from_step"], 5);
  EXPECT_EQ(slurp(straight + "/adapter/adapter_model.safetensors"),
            slurp(halves + "/adapter/adapter_model.safetensors"))
      << "the resumed HSM adapter differs from the uninterrupted run";
}

// SORSA through the recipe: each step logs calc_ortho (without gamma) as
// "orthonormality", and the DECOUPLED regulariser keeps it lower than a run
// without it.
TEST_F(TrainCliTest, SorsaLogsOrthonormalityAndDecoupledActs) {
  auto last_ortho = [&](const std::string& name, double gamma) {
    const std::string out = work_ + "/" + name;
    Result r = run("train --recipe=" + work_ + "/recipe.textproto --set=training.steps=6 --output_dir=" + out +
                   " --set='adapters.0={ name: \"default\" sorsa { r: 4 gamma: " + std::to_string(gamma) +
                   " reg_mode: DECOUPLED squared_norm: true } target { preset: \"attention\" } }'");
    EXPECT_EQ(r.code, 0) << r.err;
    std::istringstream lines(slurp(out + "/metrics.jsonl"));
    int logged = 0;
    double ortho = -1;
    for (std::string l; std::getline(lines, l);) {
      const json m = json::parse(l);
      if (!m.contains("loss")) continue;
      EXPECT_TRUE(m.contains("orthonormality")) << l;
      ortho = m.value("orthonormality", -1.0);
      ++logged;
    }
    EXPECT_EQ(logged, 6);
    return ortho;
  };
  const double free = last_ortho("sorsa_free", 0.0), held = last_ortho("sorsa_held", 0.5);
  EXPECT_GT(free, 0.01);
  EXPECT_LT(held, 0.5 * free)
      << "DECOUPLED gamma = 0.5 (squared norms) must pull the factors back toward orthonormality";
}

// Reweighting keeps uniform weights for the official 1000 warm-up steps by
// default, and says so when that covers the whole run.
TEST_F(TrainCliTest, ReweightingWarmupCoveringTheRunIsSaid) {
  Result r = run("train --recipe=" + work_ + "/recipe.textproto --dry_run --set='reweighting={ strategy: LIN_UPPER }'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("reweighting never starts: warm-up 1000 >= 16 steps"), std::string::npos) << r.err;
  r = run("train --recipe=" + work_ +
          "/recipe.textproto --dry_run "
          "--set='reweighting={ strategy: LIN_UPPER warmup_steps: 0 }'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.err.find("reweighting never starts"), std::string::npos) << r.err;
}

TEST_F(TrainCliTest, BadRecipesNameTheField) {
  Result r = run("train --recipe=" + work_ + "/recipe.textproto --set=training.stepz=3");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("training.stepz"), std::string::npos) << r.err;
  r = run("train --recipe=" + work_ + "/recipe.textproto --set=training.micro_batch=0");
  EXPECT_NE(r.err.find("training.micro_batch must be positive"), std::string::npos) << r.err;
  r = run("train --recipe=" + work_ +
          "/recipe.textproto --set=data.train_file=/nonexistent.jsonl --output_dir=" + work_ + "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent.jsonl"), std::string::npos) << r.err;
  // --dry_run checks everything and writes nothing; it finds the same errors.
  r = run("train --recipe=" + work_ + "/recipe.textproto --dry_run --output_dir=" + work_ + "/dry");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("dry run: the recipe, model, tokenizer, data and adapters are valid"), std::string::npos)
      << r.err;
  EXPECT_EQ(json::parse(r.out)["dry_run"], true);
  EXPECT_FALSE(fs::exists(work_ + "/dry"));
  r = run("train --recipe=" + work_ + "/recipe.textproto --dry_run --set=data.train_file=/nonexistent.jsonl");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("/nonexistent.jsonl"), std::string::npos) << r.err;
  // A run that cannot start leaves no run directory behind.
  EXPECT_FALSE(fs::exists(work_ + "/bad")) << "a failed start created the run directory";
  r = run("train --recipe=" + work_ + "/recipe.textproto --set=model=/nonexistent_model --output_dir=" + work_ +
          "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("model: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("/nonexistent_model"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(work_ + "/bad"));
  r = run("train --recipe=" + work_ +
          "/recipe.textproto --set='adapters.0.target.preset=\"nope\"' --output_dir=" + work_ + "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("adapters.0 'default': unknown target preset 'nope'"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(work_ + "/bad"));
}

}  // namespace
}  // namespace peft
