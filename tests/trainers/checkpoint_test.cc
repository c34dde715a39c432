// Training checkpoints: a resumed run continues bitwise like an uninterrupted
// one (tensors, AdamW moments, RNG for dropout), each rank gets its own RNG
// state back, only the newest K are kept, and a mismatching run is refused.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adamw.h>

#include "tests/testing/assets.h"
#include "trainers/checkpoint.h"

namespace peft::trainers {
namespace {

// A few AdamW steps with dropout noise (uses the global CPU generator).
void run_steps(at::Tensor& w, torch::optim::AdamW& opt, int n) {
  for (int i = 0; i < n; ++i) {
    opt.zero_grad();
    at::Tensor x = at::dropout(at::ones({8}), 0.3, /*train=*/true);
    (w * x).pow(2).sum().backward();
    opt.step();
  }
}

TEST(Checkpoint, ResumeIsBitwiseAndKeepsLastK) {
  const std::string run = testing::make_temp_dir("ckpt");
  at::manual_seed(1);
  at::Tensor a = at::randn({8}).requires_grad_(true);
  torch::optim::AdamW oa({a}, torch::optim::AdamWOptions(0.1));
  run_steps(a, oa, 3);
  TrainingState st;
  st.step = 3;
  st.data_epoch = 1;
  st.data_index = 17;
  st.trainable = {{"w", a}};
  ASSERT_TRUE(save_training_state(run, st, oa, 2).ok());
  run_steps(a, oa, 4);  // the uninterrupted run continues

  // A fresh process state: another tensor and optimizer, other RNG state.
  at::manual_seed(999);
  at::Tensor b = at::zeros({8}).requires_grad_(true);
  torch::optim::AdamW ob({b}, torch::optim::AdamWOptions(0.1));
  TrainingState rs;
  rs.trainable = {{"w", b}};
  auto latest = latest_checkpoint(run);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  ASSERT_TRUE(load_training_state(**latest, &rs, ob).ok());
  EXPECT_EQ(rs.step, 3);
  EXPECT_EQ(rs.data_epoch, 1);
  EXPECT_EQ(rs.data_index, 17);
  run_steps(b, ob, 4);
  EXPECT_TRUE(at::equal(a, b)) << "resumed run differs from the uninterrupted one";

  for (int s : {4, 5, 6}) {
    st.step = s;
    ASSERT_TRUE(save_training_state(run, st, oa, 2).ok());
  }
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(run + "/checkpoints")) n += e.is_directory();
  EXPECT_EQ(n, 2);
  EXPECT_EQ(std::filesystem::path(**latest_checkpoint(run)).filename(), "step-00000006");

  TrainingState wrong;
  at::Tensor c = at::zeros({9}).requires_grad_(true);
  torch::optim::AdamW oc({c}, torch::optim::AdamWOptions(0.1));
  wrong.trainable = {{"w", c}};
  EXPECT_FALSE(load_training_state(**latest_checkpoint(run), &wrong, oc).ok());
  EXPECT_FALSE(latest_checkpoint(run + "/none")->has_value());
}

// A kill while an old checkpoint was being pruned (found by
// scripts/crash_consistency.sh) left step-N/ without state.json under its
// final name. Pruning now renames first; the next save removes such
// remnants, and hidden ".step-*.removing-*" directories of a dead pruner.
TEST(Checkpoint, PruningLeavesNoPartialCheckpointUnderAFinalName) {
  namespace fs = std::filesystem;
  const std::string run = testing::make_temp_dir("ckpt_prune");
  at::Tensor a = at::randn({8}).requires_grad_(true);
  torch::optim::AdamW oa({a}, torch::optim::AdamWOptions(0.1));
  TrainingState st;
  st.trainable = {{"w", a}};
  for (int s : {1, 2}) {
    st.step = s;
    ASSERT_TRUE(save_training_state(run, st, oa, 2).ok());
  }
  // What a pruner killed half-way leaves, in both orders of deletion.
  fs::remove(run + "/checkpoints/step-00000001/state.json");
  fs::create_directories(run + "/checkpoints/.step-00000000.removing-12345");
  std::ofstream(run + "/checkpoints/.step-00000000.removing-12345/optimizer.pt") << "x";
  st.step = 3;
  ASSERT_TRUE(save_training_state(run, st, oa, 2).ok());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(run + "/checkpoints")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step-00000002", "step-00000003"}));
}

TEST(Checkpoint, EachRankRestoresItsOwnRngState) {
  const std::string run = testing::make_temp_dir("ckpt_rng");
  at::Tensor w = at::zeros({4}).requires_grad_(true);
  torch::optim::AdamW opt({w}, torch::optim::AdamWOptions(0.1));
  TrainingState st;
  st.step = 2;
  st.trainable = {{"w", w}};
  // Two ranks whose generators differ (as after different amounts of dropout).
  at::manual_seed(10);
  st.rng.push_back(capture_rng_state());
  const at::Tensor next0 = at::rand({6});
  at::manual_seed(20);
  st.rng.push_back(capture_rng_state());
  const at::Tensor next1 = at::rand({6});
  EXPECT_FALSE(st.rng[1].cuda.defined());  // CPU training saves no CUDA state
  ASSERT_TRUE(save_training_state(run, st, opt, 2).ok());

  TrainingState rs;
  rs.trainable = {{"w", w}};
  const std::string dir = **latest_checkpoint(run);
  at::manual_seed(999);
  ASSERT_TRUE(load_training_state(dir, &rs, opt, /*rank=*/1).ok());
  EXPECT_TRUE(at::equal(at::rand({6}), next1)) << "rank 1 did not get its own generator back";
  at::manual_seed(999);
  ASSERT_TRUE(load_training_state(dir, &rs, opt, /*rank=*/0).ok());
  EXPECT_TRUE(at::equal(at::rand({6}), next0));

  // A checkpoint of one process gives a later rank 1 rank 0's state.
  const std::string single = testing::make_temp_dir("ckpt_rng1");
  st.rng.resize(1);
  ASSERT_TRUE(save_training_state(single, st, opt, 2).ok());
  at::manual_seed(999);
  ASSERT_TRUE(load_training_state(**latest_checkpoint(single), &rs, opt, /*rank=*/1).ok());
  EXPECT_TRUE(at::equal(at::rand({6}), next0));
}

// Found by fuzz/checkpoint_state_fuzz.cc: a state.json number that is not
// an int64 (1e20, a string) was cast (undefined behaviour: the step became
// INT64_MIN) or threw nlohmann's type_error out of load_training_state.
// Every field is now an error naming the file and the key, before any tensor
// is read, and the state is left as it was.
TEST(Checkpoint, StateJsonNumbersAreTypeAndRangeChecked) {
  const std::string run = testing::make_temp_dir("ckpt_json");
  at::Tensor w = at::zeros({4}).requires_grad_(true);
  torch::optim::AdamW opt({w}, torch::optim::AdamWOptions(0.1));
  TrainingState st;
  st.step = 5;
  st.trainable = {{"w", w}};
  ASSERT_TRUE(save_training_state(run, st, opt, 2).ok());
  const std::string dir = **latest_checkpoint(run);
  for (const char* json : {R"({"step": 99999999222222222222})", R"({"step": "5"})", R"({"step": 5.5})",
                           R"({"step": -1})", R"({"step": 5, "data_epoch": "x"})", R"({"step": 5, "data_index": -3})",
                           R"({"step": 5, "world_size": 1e300})", R"({"step": 5, "data_index": [1]})"}) {
    SCOPED_TRACE(json);
    std::ofstream(dir + "/state.json") << json;
    TrainingState rs;
    rs.step = 77;
    rs.trainable = {{"w", w}};
    const absl::Status s = load_training_state(dir, &rs, opt);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("state.json"), std::string::npos) << s;
    EXPECT_EQ(rs.step, 77);
  }
  TrainingState parsed;
  ASSERT_TRUE(parse_training_state_json(R"({"step": 3, "data_epoch": 1, "data_index": 9})", "s", &parsed).ok());
  EXPECT_EQ(parsed.step, 3);
  EXPECT_EQ(parsed.data_epoch, 1);
  EXPECT_EQ(parsed.data_index, 9);
  EXPECT_EQ(parsed.world_size, 0);  // an older checkpoint that does not say
  const absl::Status bad = parse_training_state_json(R"({"step": "5"})", "run/state.json", &parsed);
  EXPECT_NE(bad.message().find("\"step\""), std::string::npos) << bad;
}

}  // namespace
}  // namespace peft::trainers
