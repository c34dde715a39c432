// Data parallel training through c10d Gloo, 2 local processes: a 2-rank run
// equals a 1-rank run with the same global batch (adapter weights within
// 1e-6 after 20 steps), a 2-rank run resumed from a checkpoint ends bitwise
// equal to the uninterrupted one (each rank's RNG state is in the
// checkpoint), and when one rank dies the other exits with a clear error
// within the configured timeout instead of hanging.
//
// The 1-rank run reaches the global batch of 4 by accumulating two
// micro-batches of 2, the 2-rank run by two ranks of 2: the trainer
// normalises by the whole step's tokens, so both compute the same sums in the
// same order. (With one micro-batch of 4 the summation order inside the
// matmuls differs, and Adam amplifies that fp32 noise: measured 1e-4 at
// lr 1e-2 and 1.5e-6 at lr 5e-4 after 20 steps.)
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string binary() { return testing::runfile("examples/peft"); }

using testing::slurp;

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

int run(const std::string& args, std::string* err = nullptr, std::string* out = nullptr) {
  const std::string tmp = testing::make_temp_dir("dp");
  const int status = std::system((binary() + " " + args + " >" + tmp + "/o 2>" + tmp + "/e").c_str());
  if (err) *err = slurp(tmp + "/e");
  if (out) *out = slurp(tmp + "/o");
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class DataParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string assets = testing::shared_assets_dir();
    if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
    work_ = testing::make_temp_dir("dpw");
    const std::string a = assets + "/llama2c_stories260K";
    ASSERT_EQ(run("convert --from=llama2c --input=" + a + "/stories260K.bin --tokenizer=" + a +
                  "/tok512.model --output=" + work_ + "/base"),
              0);
    std::string text = slurp(assets + "/corpus/tinyshakespeare.txt").substr(0, 40000);
    std::ofstream(work_ + "/train.txt") << text;
    std::ofstream(work_ + "/recipe.textproto") << "model: \"" << work_ << "/base\"\n"
                                               << R"(data { train_file: ")" << work_ << R"(/train.txt" seq_len: 32 }
adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.01 }
training { steps: 20 micro_batch: 4 threads: 1 }
eval { max_batches: 1 }
distributed { timeout_s: 5 }
)";
  }
  // Forks rank `rank` of 2 training the recipe into `out_dir` for (nearly)
  // ever, with torchrun's variables set by hand; stderr goes to `err_file`.
  pid_t start_rank(int rank, int port, const std::string& out_dir, const std::string& err_file,
                   const char* extra = "--set=training.micro_batch=2") {
    const pid_t pid = fork();
    if (pid != 0) return pid;
    setenv("RANK", std::to_string(rank).c_str(), 1);
    setenv("WORLD_SIZE", "2", 1);
    setenv("MASTER_ADDR", "127.0.0.1", 1);
    setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    if (freopen(err_file.c_str(), "w", stderr) == nullptr) _exit(126);
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    const std::string recipe = "--recipe=" + work_ + "/recipe.textproto";
    const std::string out = "--output_dir=" + out_dir;
    execl(binary().c_str(), "peft", "train", recipe.c_str(), out.c_str(), "--set=training.steps=100000",
          "--set=training.micro_batch=2", extra, static_cast<char*>(nullptr));
    _exit(127);
  }
  // Waits until rank 0 has written `bytes` of metrics (training runs).
  void wait_for_metrics(const std::string& out_dir, size_t bytes) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (slurp(out_dir + "/metrics.jsonl").size() < bytes && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  std::string work_;
};

TEST_F(DataParallelTest, TwoRanksEqualOneRankWithTheSameGlobalBatch) {
  std::string err;
  ASSERT_EQ(run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + work_ +
                    "/one --set=training.micro_batch=2 --set=training.grad_accum=2",
                &err),
            0)
      << err;
  std::string out;
  ASSERT_EQ(run("launch --nproc=2 --master_port=" + std::to_string(free_port()) + " -- peft train --recipe=" + work_ +
                    "/recipe.textproto --output_dir=" + work_ + "/two --set=training.micro_batch=2",
                &err, &out),
            0)
      << err;
  // Rank 0 alone prints the summary line.
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  EXPECT_NE(out.find("\"steps\":20"), std::string::npos) << out;
  auto a = io::SafetensorsFile::open(work_ + "/one/adapter/adapter_model.safetensors");
  auto b = io::SafetensorsFile::open(work_ + "/two/adapter/adapter_model.safetensors");
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ((*a)->tensors().size(), (*b)->tensors().size());
  double worst = 0, scale = 0;
  for (const io::TensorInfo& t : (*a)->tensors()) {
    at::Tensor x = *(*a)->load(t.name), y = *(*b)->load(t.name);
    worst = std::max(worst, (x - y).abs().max().item<double>());
    scale = std::max(scale, x.abs().max().item<double>());
  }
  EXPECT_LE(worst, 1e-6) << "largest adapter value " << scale;
  EXPECT_GT(scale, 1e-3) << "the adapters did not train";
  // Only rank 0 wrote the run directory's metrics (20 steps + 2 evals).
  int lines = 0;
  std::ifstream m(work_ + "/two/metrics.jsonl");
  for (std::string l; std::getline(m, l);) ++lines;
  EXPECT_EQ(lines, 22);
}

TEST_F(DataParallelTest, TwoRankResumeIsBitwiseWithEveryRanksRng) {
  // LoRA dropout draws from each rank's CPU generator.
  const std::string sets =
      " --set=training.micro_batch=2 --set=training.steps=8 --set=checkpoint.every_steps=4"
      " --set=checkpoint.keep_last=5 --set=adapters.0.lora.dropout=0.1";
  auto launch = [&](const std::string& out, const std::string& extra, std::string* err) {
    return run("launch --nproc=2 --master_port=" + std::to_string(free_port()) + " -- peft train --recipe=" + work_ +
                   "/recipe.textproto --output_dir=" + out + sets + extra,
               err);
  };
  std::string err;
  ASSERT_EQ(launch(work_ + "/straight", "", &err), 0) << err;
  // Another run directory holding only the step-4 checkpoint, resumed.
  const std::string ckpt = "/checkpoints/step-00000004";
  fs::create_directories(work_ + "/resumed/checkpoints");
  fs::copy(work_ + "/straight" + ckpt, work_ + "/resumed" + ckpt, fs::copy_options::recursive);
  auto saved = io::SafetensorsFile::open(work_ + "/resumed" + ckpt + "/trainable.safetensors");
  ASSERT_TRUE(saved.ok());
  EXPECT_NE((*saved)->find("__rng_cpu__"), nullptr);
  EXPECT_NE((*saved)->find("__rng_cpu_rank1__"), nullptr) << "rank 1's generator is not in the checkpoint";
  ASSERT_EQ(launch(work_ + "/resumed", " --resume", &err), 0) << err;
  EXPECT_EQ(slurp(work_ + "/straight/adapter/adapter_model.safetensors"),
            slurp(work_ + "/resumed/adapter/adapter_model.safetensors"))
      << "resumed 2-rank adapter differs from the uninterrupted run";
  // Resumed by one process instead of two: allowed, and said.
  fs::create_directories(work_ + "/one_rank/checkpoints");
  fs::copy(work_ + "/straight" + ckpt, work_ + "/one_rank" + ckpt, fs::copy_options::recursive);
  ASSERT_EQ(
      run("train --recipe=" + work_ + "/recipe.textproto --output_dir=" + work_ + "/one_rank" + sets + " --resume",
          &err),
      0)
      << err;
  EXPECT_NE(err.find("written by 2 ranks and this run has 1: the global batch changes from 4 to 2 examples"),
            std::string::npos)
      << err;
}

TEST_F(DataParallelTest, DeadRankIsReportedWithinTheTimeout) {
  const int port = free_port();
  pid_t pids[2];
  const std::string errfile = work_ + "/rank0.err";
  for (int rank = 0; rank < 2; ++rank) {
    pids[rank] = start_rank(rank, port, work_ + "/dead", rank == 0 ? errfile : "/dev/null");
    ASSERT_GE(pids[rank], 0);
  }
  // Let training start (rank 0 writes metrics), then kill rank 1.
  wait_for_metrics(work_ + "/dead", 200);
  kill(pids[1], SIGKILL);
  waitpid(pids[1], nullptr, 0);
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  bool exited = false;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20)) {
    if (waitpid(pids[0], &status, WNOHANG) == pids[0]) {
      exited = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!exited) {
    kill(pids[0], SIGKILL);
    waitpid(pids[0], nullptr, 0);
  }
  ASSERT_TRUE(exited) << "rank 0 hung after rank 1 died";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_LE(secs, 5.0 + 3.0) << "configured timeout 5 s";
  const std::string err = slurp(errfile);
  EXPECT_NE(err.find("rank"), std::string::npos) << err;
}

// SIGTERM to one rank (a Kubernetes eviction, say) stops every rank after the
// same step: the flag travels in the step's all-reduce, and rank 0 saves a
// checkpoint holding both ranks' generators.
TEST_F(DataParallelTest, SigtermToOneRankStopsAllRanksAtTheSameStep) {
  const int port = free_port();
  pid_t pids[2];
  for (int rank = 0; rank < 2; ++rank) {
    pids[rank] = start_rank(rank, port, work_ + "/stopped", work_ + "/rank" + std::to_string(rank) + ".err");
    ASSERT_GE(pids[rank], 0);
  }
  wait_for_metrics(work_ + "/stopped", 400);
  kill(pids[1], SIGTERM);
  int status[2] = {0, 0};
  for (int rank = 0; rank < 2; ++rank) waitpid(pids[rank], &status[rank], 0);
  for (int rank = 0; rank < 2; ++rank) {
    EXPECT_TRUE(WIFEXITED(status[rank]) && WEXITSTATUS(status[rank]) == 1) << "rank " << rank;
  }
  const std::string err0 = slurp(work_ + "/rank0.err"), err1 = slurp(work_ + "/rank1.err");
  const size_t at = err1.find("stopped by SIGTERM after step ");
  ASSERT_NE(at, std::string::npos) << err1;
  const int step = std::atoi(err1.c_str() + at + std::strlen("stopped by SIGTERM after step "));
  ASSERT_GT(step, 0);
  EXPECT_NE(err0.find("stopped by a stop signal on another rank after step " + std::to_string(step) + " "),
            std::string::npos)
      << err0;
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08d", step);
  auto saved = io::SafetensorsFile::open(work_ + "/stopped/checkpoints/" + name + "/trainable.safetensors");
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_NE((*saved)->find("__rng_cpu_rank1__"), nullptr);
}

// Ranks that see different run directories (no shared filesystem) are told
// so at once, instead of some resuming and others starting afresh.
TEST_F(DataParallelTest, RanksThatSeeDifferentRunDirectoriesAreAnError) {
  const std::string a = work_ + "/seen_by_0", b = work_ + "/seen_by_1";
  const std::string ckpt = "/checkpoints/step-00000004";
  fs::create_directories(a + ckpt);
  std::ofstream(a + ckpt + "/state.json") << "{\"step\": 4}\n";
  const int port = free_port();
  const pid_t p0 = start_rank(0, port, a, work_ + "/r0.err", "--resume");
  const pid_t p1 = start_rank(1, port, b, work_ + "/r1.err", "--resume");
  ASSERT_GT(p0, 0);
  ASSERT_GT(p1, 0);
  int s0 = 0, s1 = 0;
  waitpid(p0, &s0, 0);
  waitpid(p1, &s1, 0);
  EXPECT_TRUE(WIFEXITED(s0) && WEXITSTATUS(s0) == 1);
  EXPECT_TRUE(WIFEXITED(s1) && WEXITSTATUS(s1) == 1);
  for (const char* f : {"/r0.err", "/r1.err"}) {
    const std::string err = slurp(work_ + f);
    EXPECT_NE(err.find("the ranks see different run directories"), std::string::npos) << err;
    EXPECT_NE(err.find("rank 0: step 4; rank 1: no checkpoint"), std::string::npos) << err;
  }
  EXPECT_FALSE(fs::exists(b)) << "rank 1 started a run of its own";
}

// `peft launch` passes a SIGTERM on to its ranks and says so.
TEST_F(DataParallelTest, LaunchForwardsSigtermToItsRanks) {
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (freopen((work_ + "/launch.err").c_str(), "w", stderr) == nullptr) _exit(126);
    if (freopen("/dev/null", "w", stdout) == nullptr) _exit(126);
    const std::string port = "--master_port=" + std::to_string(free_port());
    const std::string recipe = "--recipe=" + work_ + "/recipe.textproto";
    const std::string out = "--output_dir=" + work_ + "/launched";
    execl(binary().c_str(), "peft", "launch", "--nproc=2", port.c_str(), "--", binary().c_str(), "train",
          recipe.c_str(), out.c_str(), "--set=training.steps=100000", "--set=training.micro_batch=2",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  wait_for_metrics(work_ + "/launched", 400);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  const std::string err = slurp(work_ + "/launch.err");
  EXPECT_NE(err.find("(stopped by SIGTERM)"), std::string::npos) << err;
  // Both ranks stopped themselves (exit code 1), none was killed.
  EXPECT_NE(err.find("rank 0 (pid"), std::string::npos) << err;
  EXPECT_EQ(err.find("killed by signal"), std::string::npos) << err;
  EXPECT_NE(err.find("checkpoint " + work_ + "/launched/checkpoints/step-"), std::string::npos) << err;
}

}  // namespace
}  // namespace peft
