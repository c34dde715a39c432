//
// A model as a GGUF file that llama.cpp loads and runs (LLaMA, Mistral, Qwen2
// and GPT-2), following llama.cpp's convert_hf_to_gguf.py conventions:
//
//   - architecture keys (general.architecture, <arch>.context_length,
//     embedding_length, block_count, feed_forward_length, attention.*,
//     rope.*, vocab_size) and llama.cpp's tensor names: token_embd,
//     blk.N.attn_q / attn_k / attn_v / attn_output / ffn_gate / ffn_up /
//     ffn_down / attn_norm / ffn_norm, output_norm, output; GPT-2 adds
//     position_embd and uses attn_qkv, and biases keep their names with
//     ".bias";
//   - Mistral is written as architecture "llama" (the converter's
//     LlamaModel; llama.cpp's llama graph has no sliding window, see
//     export_notes), Qwen2 as "qwen2" with its q/k/v biases
//     (blk.N.attn_q.bias, ...);
//   - LLaMA's (and Mistral's) q and k rows (and biases) are permuted from
//     Hugging Face's rotate-half layout to the interleaved pairs ggml's RoPE
//     rotates (the inverse of models/llama2c.h's permute_rotary_rows);
//     Qwen2 keeps them (llama.cpp rotates qwen2 in the NEOX, rotate-half way);
//   - a tied head writes no `output` tensor (llama.cpp then uses token_embd);
//   - llama3 RoPE scaling is a `rope_freqs` tensor of per-frequency divisors,
//     linear scaling the rope.scaling.* keys;
//   - storage types: 1-D tensors, norms and GPT-2's position embedding stay
//     f32; the other matrices take the requested type, except that q8_0
//     falls back to f16 for rows that are not whole 32-value blocks.
//
// Tensors are converted and written one at a time (gguf_writer.h), so the
// export needs little memory beyond the model itself.
//
//   PEFT_ASSIGN_OR_RETURN(Vocab v, vocab_from_tokenizer(*tok, dir));
//   PEFT_RETURN_IF_ERROR(export_model(*lm, v, "model.gguf", {TensorType::kQ8_0}));
#ifndef PEFT_MODELS_GGUF_EXPORT_H_
#define PEFT_MODELS_GGUF_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "models/config.h"
#include "models/gguf/gguf_writer.h"
#include "models/gguf/vocab.h"

namespace peft::models::gguf {

struct ExportOptions {
  /// Storage type of the weight matrices (see the file comment).
  TensorType dtype = TensorType::kF32;
  /// Replace an existing output file.
  bool overwrite = false;
  /// general.name (e.g. the model directory's name); omitted when empty.
  std::string name;
};

/// What an export wrote.
struct ExportStats {
  int64_t tensors = 0;
  int64_t parameters = 0;
  uint64_t file_bytes = 0;
};

/// "llama" (model_type llama and mistral), "qwen2" or "gpt2":
/// general.architecture and the key prefix.
std::string architecture_name(const ModelConfig& config);

/// What llama.cpp will compute differently from this model, one sentence
/// each (empty when nothing): a Mistral window shorter than the context is
/// not applied by llama.cpp's llama graph.
std::vector<std::string> export_notes(const ModelConfig& config);

/// The GGUF name of a Hugging Face parameter ("model.layers.3.self_attn.q_proj.weight" ->
/// "blk.3.attn_q.weight"); empty when llama.cpp has no such tensor.
std::string tensor_name(const ModelConfig& config, const std::string& hf_name);

/// The storage type of tensor `gguf_name` of `shape` (PyTorch order) when
/// `requested` is asked for (see the file comment).
TensorType storage_type(const std::string& gguf_name, const std::vector<int64_t>& shape, TensorType requested);

/// Hugging Face rotate-half rows -> ggml's interleaved pairs, per head: rows
/// of w [heads * D, ...] (a weight or a 1-D bias) viewed [heads, 2, D/2],
/// the last two axes swapped. permute_rotary_rows (models/llama2c.h) undoes it.
at::Tensor interleave_rotary_rows(const at::Tensor& w, int64_t heads);

/// The number of heads whose rows `gguf_name` holds when its rows need
/// interleave_rotary_rows (attn_q: heads, attn_k: KV heads), else 0.
int64_t rotary_heads(const ModelConfig& config, const std::string& gguf_name);

/// llama3 RoPE as llama.cpp's rope_freqs [head_dim / 2]: the factor each base
/// frequency theta^(-2i/D) is divided by, from the model's own tables.
std::vector<float> llama3_rope_divisors(const LlamaConfig& config);

/// general.* and <arch>.* keys for `config`. Errors for configurations
/// llama.cpp computes differently (GPT-2 without scaled attention or with
/// scale_attn_by_inverse_layer_idx; Qwen2 with llama3 RoPE scaling or a
/// sliding window).
absl::Status add_architecture_metadata(const ModelConfig& config, const ExportOptions& options, Metadata* metadata);

/// Writes `model` with `vocab` (already fit_vocab_to_model'ed or not: it is
/// fitted here) to `path`. Nothing appears at `path` on error.
absl::StatusOr<ExportStats> export_model(CausalLm& model, Vocab vocab, const std::string& path,
                                         const ExportOptions& options);

}  // namespace peft::models::gguf

#endif  // PEFT_MODELS_GGUF_EXPORT_H_
