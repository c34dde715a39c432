//
// The memory a training run will need at its peak, estimated before the
// model is loaded (`peft train --dry_run` prints it; a run whose plan does
// not fit the machine is refused with the numbers and what to change).
//
// Parts: the process as it stands (measured), the frozen base in its storage
// dtype, bf16 compute copies (bf16 autocast over a float32 base), adapter
// weights, their gradients and AdamW state, the activations a step keeps for
// backward at this micro-batch and sequence length (all blocks, or with
// activation checkpointing the blocks' inputs plus one block), the loss head
// (fused row chunks, or whole logits when the head is adapted), the step's
// batches, and the training data. The per-block activation counts follow
// what models/llama.cc and models/gpt2.cc save for backward; the plan is
// checked against measured peaks in docs/benchmarks.md.
//
//   MemoryPlan plan = plan_memory(in);
//   log(plan.table());
//   if (plan.total() > limit) ...
#ifndef PEFT_TRAINERS_MEMORY_PLAN_H_
#define PEFT_TRAINERS_MEMORY_PLAN_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "models/config.h"

namespace peft::trainers {

struct MemoryPlanInput {
  models::ModelConfig config;
  int64_t trainable_parameters = 0;  // adapters (or every parameter: full fine-tuning)
  int64_t adapter_rank = 0;          // the largest LoRA-style rank (activation side paths)
  bool full_finetune = false;
  bool head_is_plain = true;  // the output layer has no adapter and no bias (fused loss)
  int64_t micro_batch = 1;
  int64_t seq_len = 1;
  int64_t grad_accum = 1;
  c10::ScalarType base_dtype = c10::ScalarType::Float;  // storage of the frozen base
  bool bf16_compute = false;
  bool activation_checkpointing = false;
  double process_bytes = 0;  // resident now (LibTorch, tokenizer, ...)
  double data_bytes = 0;     // size of the data files to be tokenized
};

struct MemoryPlan {
  /// (part, bytes), in the order printed.
  std::vector<std::pair<std::string, double>> parts;
  /// The trainable parameters counted (MemoryPlanInput::trainable_parameters).
  int64_t trainable_parameters = 0;
  double total() const;
  /// The parts and the total, one per line, in MB/GB.
  std::string table() const;
};

/// Bytes the activations of one step keep for backward (excluding the loss
/// head), with or without activation checkpointing.
double activation_bytes(const MemoryPlanInput& in, bool checkpointing);

MemoryPlan plan_memory(const MemoryPlanInput& in);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_MEMORY_PLAN_H_
