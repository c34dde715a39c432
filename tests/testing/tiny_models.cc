#include "tests/testing/tiny_models.h"

#include <fstream>
#include <string>
#include <unordered_set>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_format.h"
#include "models/model_io.h"

namespace peft::testing {

// llama2.c layout: int32 max_token_length, then per token float32 score,
// int32 length, bytes.
void write_byte_tokenizer(const std::string& path) {
  std::ofstream out(path, std::ios::binary);
  auto put_i32 = [&](int32_t v) { out.write(reinterpret_cast<const char*>(&v), sizeof v); };
  auto put_piece = [&](const std::string& s) {
    const float score = 0;
    out.write(reinterpret_cast<const char*>(&score), sizeof score);
    put_i32(static_cast<int32_t>(s.size()));
    out.write(s.data(), static_cast<std::streamsize>(s.size()));
  };
  put_i32(8);
  put_piece("<unk>");
  put_piece("\n<s>\n");
  put_piece("\n</s>\n");
  for (int b = 0; b < 256; ++b) put_piece(absl::StrFormat("<0x%02X>", b));
}

models::ModelConfig tiny_llama_config(bool tied) {
  models::ModelConfig c;
  c.arch = models::Architecture::kLlama;
  c.llama.vocab_size = 96;
  c.llama.hidden_size = 32;
  c.llama.intermediate_size = 48;
  c.llama.num_hidden_layers = 2;
  c.llama.num_attention_heads = 4;
  c.llama.num_key_value_heads = 2;
  c.llama.head_dim = 8;
  c.llama.max_position_embeddings = 64;
  c.llama.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

models::ModelConfig llama_100m_config() {
  models::ModelConfig c = tiny_llama_config(false);
  c.llama.vocab_size = 32000;
  c.llama.hidden_size = 640;
  c.llama.intermediate_size = 1728;
  c.llama.num_hidden_layers = 12;
  c.llama.num_attention_heads = 10;
  c.llama.num_key_value_heads = 10;
  c.llama.head_dim = 64;
  return c;
}

models::ModelConfig tiny_gpt2_config() {
  models::ModelConfig c;
  c.arch = models::Architecture::kGpt2;
  c.gpt2.vocab_size = 80;
  c.gpt2.n_embd = 32;
  c.gpt2.n_layer = 2;
  c.gpt2.n_head = 4;
  c.gpt2.n_inner = 128;
  c.gpt2.n_positions = 48;
  c.bos_token_id = 0;
  c.eos_token_ids = {0};
  return c;
}

std::shared_ptr<models::CausalLm> tiny_model(const models::ModelConfig& config, uint64_t seed) {
  std::shared_ptr<models::CausalLm> lm = *models::create_model(config);
  models::init_weights_(*lm, seed, 0.2);
  // Non-trivial norms and biases so that bugs touching them show.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + 1);
  torch::NoGradGuard no_grad;
  for (const models::HfParameter& p : lm->hf_parameters()) {
    if (p.tensor.dim() == 1) p.tensor.add_(at::empty_like(p.tensor).normal_(0.0, 0.1, gen));
  }
  return lm;
}

at::Tensor sample_ids(int64_t vocab, int64_t batch, int64_t len, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(vocab, {batch, len}, gen, at::kLong);
}

int64_t autograd_node_count(const at::Tensor& loss) {
  std::unordered_set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo = {loss.grad_fn().get()};
  while (!todo.empty()) {
    torch::autograd::Node* n = todo.back();
    todo.pop_back();
    if (n == nullptr || !seen.insert(n).second) continue;
    for (const torch::autograd::Edge& e : n->next_edges()) todo.push_back(e.function.get());
  }
  return static_cast<int64_t>(seen.size());
}

}  // namespace peft::testing
