#include "trainers/memory_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace peft::trainers {
namespace {

// Widths of one block, whatever the architecture.
struct BlockShape {
  double hidden = 0, q = 0, kv = 0, mlp = 0, heads = 0;
  int adapted = 0;  // projections per block an adapter may sit on
};

BlockShape block_shape(const models::ModelConfig& c) {
  BlockShape s;
  if (c.arch == models::Architecture::kGpt2) {
    const models::Gpt2Config& g = c.gpt2;
    s.hidden = static_cast<double>(g.n_embd);
    s.q = s.hidden;
    s.kv = s.hidden;
    s.mlp = static_cast<double>(g.n_inner);
    s.heads = static_cast<double>(g.n_head);
    s.adapted = 4;
  } else {
    const models::LlamaConfig& l = c.llama;
    s.hidden = static_cast<double>(l.hidden_size);
    s.q = static_cast<double>(l.num_attention_heads * l.head_dim);
    s.kv = static_cast<double>(l.num_key_value_heads * l.head_dim);
    s.mlp = static_cast<double>(l.intermediate_size);
    s.heads = static_cast<double>(l.num_attention_heads);
    s.adapted = 7;
  }
  return s;
}

std::string size_text(double bytes) {
  return bytes >= 1e9 ? absl::StrFormat("%.2f GB", bytes / 1e9) : absl::StrFormat("%.0f MB", bytes / 1e6);
}

}  // namespace

double MemoryPlan::total() const {
  double t = 0;
  for (const auto& p : parts) t += p.second;
  return t;
}

std::string MemoryPlan::table() const {
  std::string out;
  for (const auto& [name, bytes] : parts) absl::StrAppendFormat(&out, "  %-34s %10s\n", name, size_text(bytes));
  absl::StrAppendFormat(&out, "  %-34s %10s", "expected peak", size_text(total()));
  return out;
}

double activation_bytes(const MemoryPlanInput& in, bool checkpointing) {
  const BlockShape s = block_shape(in.config);
  const double b = static_cast<double>(in.micro_batch), t = static_cast<double>(in.seq_len);
  const double n = b * t;                    // tokens of a micro-batch
  const double f = 4;                        // float32 (residual stream, norm inputs)
  const double e = in.bf16_compute ? 2 : 4;  // the compute dtype (projection inputs and outputs)
  const double layers = static_cast<double>(in.config.num_layers());
  // What one block keeps for backward: its input and the second norm's input
  // (float32), both norm outputs, q and k after RoPE, v, the attention
  // output, the attention probabilities [B, H, T, T], the MLP's hidden
  // activations (LLaMA: gate, silu(gate), up and their product; GPT-2: the
  // GELU input and output), and each adapter's rank-r side path. Under bf16
  // autocast some of these are kept in float32 as well (measured with
  // tests/trainers/memory_plan_bench: about 3.5 hidden-sized and one
  // MLP-sized float32 tensor more per token and block).
  const double mlp_saved = in.config.arch == models::Architecture::kGpt2 ? 2 : 4;
  const double side = in.full_finetune ? 0 : 2.0 * static_cast<double>(in.adapter_rank) * s.adapted;
  double per_token =
      2 * s.hidden * f + 2 * s.hidden * e + (s.q + 2 * s.kv) * e + s.q * e + mlp_saved * s.mlp * e + side * e;
  if (in.bf16_compute) per_token += 3.5 * s.hidden * f + s.mlp * f;
  const double per_block = n * per_token + b * s.heads * t * t * e;
  // Backward's working set on top (the block being differentiated): the
  // gradient of the attention probabilities and of one MLP activation.
  const double workspace = b * s.heads * t * t * f + n * s.mlp * f;
  if (!checkpointing) return layers * per_block + workspace;
  // Checkpointing keeps each block's input and recomputes one block at a time.
  return layers * n * s.hidden * f + per_block + workspace;
}

MemoryPlan plan_memory(const MemoryPlanInput& in) {
  MemoryPlan plan;
  plan.trainable_parameters = in.trainable_parameters;
  const models::ModelConfig& c = in.config;
  const double params = models::estimated_parameters(c);
  // The cos and sin tables a LLaMA-family model keeps, [positions, head_dim]
  // float32 each. (models::estimated_model_bytes also counts the float64
  // tables they are built from: freed before training, and unmapped by the
  // trainer's allocator setting, so not part of the step's peak; 134 MB of
  // Llama 3's 131072 positions.)
  const double rope =
      c.arch == models::Architecture::kLlama
          ? 8.0 * static_cast<double>(c.llama.max_position_embeddings) * static_cast<double>(c.llama.head_dim)
          : 0.0;
  const double base_elem = static_cast<double>(c10::elementSize(in.base_dtype));
  const double vocab = static_cast<double>(c.vocab_size()), hidden = static_cast<double>(c.hidden_size());
  const double head = vocab * hidden;
  const double n = static_cast<double>(in.micro_batch) * static_cast<double>(in.seq_len);
  const double trainable = static_cast<double>(in.trainable_parameters);

  plan.parts.emplace_back("process (LibTorch, tokenizer)", in.process_bytes);
  plan.parts.emplace_back(absl::StrCat("base weights (", c10::toString(in.base_dtype), ")"), params * base_elem + rope);
  if (in.bf16_compute && base_elem > 2) {
    // AdaptableLinear keeps one bf16 copy of each frozen projection (the
    // output layer included; an untied embedding is not a projection).
    const double projections = params - (c.tie_word_embeddings() ? 0 : head);
    plan.parts.emplace_back("bf16 compute copies of the base", projections * 2);
  }
  if (!in.full_finetune) plan.parts.emplace_back("adapter weights (float32)", trainable * 4);
  plan.parts.emplace_back("gradients (float32)", trainable * 4);
  plan.parts.emplace_back("AdamW state (float32)", trainable * 8);
  plan.parts.emplace_back(in.activation_checkpointing ? "activations (checkpointed)" : "activations",
                          activation_bytes(in, in.activation_checkpointing));
  double loss = 0;
  if (in.head_is_plain && !in.bf16_compute && base_elem < 4) {
    // Fused head stored narrower than the float32 compute
    // (kernels/linear_cross_entropy.h): one pass over 4096-row blocks of
    // the head, each converted into one buffer, a [1024, 4096] tile of
    // logits, the hidden states, the row gradient and the label rows of W.
    loss =
        std::min(1024.0, n) * std::min(4096.0, vocab) * 4 + std::min(4096.0, vocab) * hidden * 4 + 3 * n * hidden * 4;
  } else if (in.head_is_plain) {
    // Fused head: one [256, V] block of logits in the compute dtype, the
    // hidden states and their gradient.
    loss = std::min(256.0, n) * vocab * (in.bf16_compute ? 2 : 4) + 2 * n * hidden * 4;
  } else {
    loss = n * vocab * (4 + 4 + (in.bf16_compute ? 2 : 4));  // logits, log-probabilities, their gradient
  }
  plan.parts.emplace_back("loss head", loss);
  plan.parts.emplace_back("batches and data", static_cast<double>(in.grad_accum) * n * 3 * 8 + 3 * in.data_bytes);
  return plan;
}

}  // namespace peft::trainers
