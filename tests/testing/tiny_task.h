//
// The built-in task (examples/bench_task) at a size that runs in seconds,
// shared by the quickstart and `peft bench` tests: a 1-layer hidden-32 base
// (2 heads, 1 kv head, FFN 96), a handful of steps, 8 test words, one thread.
#ifndef PEFT_TESTS_TESTING_TINY_TASK_H_
#define PEFT_TESTS_TESTING_TINY_TASK_H_

#include <cstdint>
#include <string>
#include <vector>

namespace peft::testing {

/// The flags both programs take for that size, after `output_flag` (each
/// names its output directory its own way: --work_dir=..., --out_dir=...).
inline std::vector<std::string> tiny_task_flags(const std::string& output_flag) {
  return {
      output_flag,          "--hidden_size=32",        "--num_layers=1",       "--num_heads=2",     "--num_kv_heads=1",
      "--pretrain_steps=4", "--pretrain_examples=200", "--train_examples=100", "--test_examples=8", "--steps=3",
      "--threads=1"};
}

/// Parameters of that base: embedding and untied head 257 x 32 each; q, o
/// 32x32; k, v 16x32; gate, up 96x32, down 32x96; two norms of 32; final norm.
constexpr int64_t kTinyBaseParameters = 2 * 257 * 32 + (2 * 32 * 32 + 2 * 16 * 32 + 3 * 96 * 32 + 2 * 32) + 32;
/// LoRA r=8 on the 7 projections: r * (in + out) each.
constexpr int64_t kTinyLoraParameters = 8 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 96) * 3);

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_TINY_TASK_H_
