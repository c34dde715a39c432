//
// Tiny seeded LLaMA and GPT-2 models for adapter and trainer tests.
#ifndef PEFT_TESTS_TESTING_TINY_MODELS_H_
#define PEFT_TESTS_TESTING_TINY_MODELS_H_

#include <cstdint>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "models/causal_lm.h"
#include "models/config.h"

namespace peft::testing {

/// LLaMA: vocab 96, hidden 32, FFN 48, 2 layers, 4 heads, 2 KV heads, head_dim 8, 64 positions.
models::ModelConfig tiny_llama_config(bool tied = false);
/// A ~100M-parameter untied LLaMA for tests that measure memory: vocab 32000, hidden 640, FFN 1728,
/// 12 layers, 10 heads (head_dim 64, no grouping), 64 positions.
models::ModelConfig llama_100m_config();
/// GPT-2: vocab 80, hidden 32, FFN 128, 2 layers, 4 heads, 48 positions.
models::ModelConfig tiny_gpt2_config();

/// A model with weights ~ N(0, 0.2) from `seed` (norms 1, biases 0.1 N).
std::shared_ptr<models::CausalLm> tiny_model(const models::ModelConfig& config, uint64_t seed);

/// Writes a llama2.c tokenizer.bin of 259 tokens: <unk>, BOS, EOS and the
/// 256 byte pieces (<0x00>..<0xFF>), so that any text tokenizes.
void write_byte_tokenizer(const std::string& path);

/// Deterministic ids [batch, len] below `vocab`.
at::Tensor sample_ids(int64_t vocab, int64_t batch, int64_t len, uint64_t seed);

/// The number of autograd nodes reachable from `loss` (0 when it has none).
int64_t autograd_node_count(const at::Tensor& loss);

}  // namespace peft::testing

#endif  // PEFT_TESTS_TESTING_TINY_MODELS_H_
