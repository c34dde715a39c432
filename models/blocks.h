//
// Building blocks shared by the LLaMA and GPT-2 models: norms, token
// embedding, rotary tables, causal attention with grouped KV heads, and the
// KV cache used by generation.
//
// Shape notation used across models/:
//   B batch, T new (query) positions, S key positions (cache + new),
//   C hidden size, H query heads, G key/value heads (G divides H),
//   D head dim, F feed-forward width, V vocabulary, P max positions.
#ifndef PEFT_MODELS_BLOCKS_H_
#define PEFT_MODELS_BLOCKS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace peft::models {

/// RMSNorm as in transformers' LlamaRMSNorm: normalise in fp32, cast back to
/// the input dtype, then scale by `weight`.
class RmsNormImpl : public torch::nn::Module {
 public:
  RmsNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);  // [..., C] -> [..., C]
  at::Tensor weight;                        // [C]
  const double eps;
};
TORCH_MODULE(RmsNorm);

/// LayerNorm with bias (GPT-2's ln_1/ln_2/ln_f).
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);  // [..., C] -> [..., C]
  at::Tensor weight;                        // [C]
  at::Tensor bias;                          // [C]
  const double eps;
};
TORCH_MODULE(LayerNorm);

/// Lookup table with parameter `weight` [N, C]; allocated uninitialised.
class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num, int64_t dim);
  at::Tensor forward(const at::Tensor& ids);  // [B, T] int64 -> [B, T, C]
  at::Tensor weight;                          // [N, C]
  /// The dtype of the rows returned, when it differs from the weight's: a
  /// base stored in bf16 under a float32 residual stream sets kFloat.
  std::optional<at::ScalarType> output_dtype;
};
TORCH_MODULE(Embedding);

/// cos/sin tables [P, D] for rotate-half RoPE (`emb = [f | f]`), computed in
/// double and stored fp32. `inv_freq` [D/2] is the per-pair frequency.
struct RopeTables {
  at::Tensor inv_freq;  // [D/2]
  at::Tensor cos;       // [P, D]
  at::Tensor sin;       // [P, D]
};

/// Scaling of the base frequencies theta^(-2i/D); see models/config.h.
struct RopeSpec {
  int64_t head_dim = 0;
  int64_t max_positions = 0;
  double theta = 10000.0;
  std::string rope_type = "default";  // "default", "linear", "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};
RopeTables make_rope_tables(const RopeSpec& spec);

/// x [B, H, T, D] rotated for absolute positions past..past+T-1.
at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope, int64_t past);

/// Causal attention with grouped KV heads: q [B, H, T, D], k/v [B, G, S, D],
/// where the T queries sit at absolute positions S-T..S-1. Query head h reads
/// KV head h / (H/G), as transformers' repeat_kv. Softmax in fp32.
/// With `window` W > 0 (sliding-window attention) the query at position i
/// sees only the keys j with i - W < j <= i, transformers' convention
/// (masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window);
/// keys no query can see are dropped before the product, so decoding with a
/// long cache costs O(W) per token. Returns [B, H, T, D].
at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                            int64_t window = 0);

/// Per-layer key/value cache for incremental decoding. Preallocated to
/// `capacity` positions; `length` positions are filled.
struct KvCache {
  std::vector<at::Tensor> k;  // per layer [B, G, capacity, D]
  std::vector<at::Tensor> v;  // per layer [B, G, capacity, D]
  int64_t length = 0;
  int64_t capacity = 0;

  /// Allocates `layers` zeroed buffers.
  static KvCache create(int64_t layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_dim,
                        at::TensorOptions options);
  /// Writes k/v [B, G, T, D] of `layer` at positions length..length+T-1 and
  /// returns the filled views [B, G, length+T, D]. `length` itself advances
  /// only through advance() once every layer has been written.
  std::pair<at::Tensor, at::Tensor> append(int64_t layer, const at::Tensor& k_new, const at::Tensor& v_new);
  void advance(int64_t t) { length += t; }
};

}  // namespace peft::models

#endif  // PEFT_MODELS_BLOCKS_H_
