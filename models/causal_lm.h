//
// CausalLm is what generation, evaluation, training and export see of a
// model: token ids in, logits out, plus the mapping of its parameters to
// Hugging Face tensor names. LLaMA (models/llama.h) and GPT-2 (models/gpt2.h)
// implement it; a model is a torch::nn::Module reachable through module().
//
// A model also says what adapters may target in it: its named target presets
// (module-name suffixes) and its adaptable projections with the decoder block
// each sits in. Target resolution (peft/target.h) asks for these instead of
// knowing architectures or parsing block numbers out of module paths, so a new
// architecture is added under models/ alone.
//
//   PEFT_ASSIGN_OR_RETURN(std::shared_ptr<CausalLm> lm, load_model(dir));
//   at::Tensor logits = lm->forward(ids, /*cache=*/nullptr);  // [B, T, V]
#ifndef PEFT_MODELS_CAUSAL_LM_H_
#define PEFT_MODELS_CAUSAL_LM_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "models/blocks.h"
#include "models/config.h"
#include "peft/hook_point.h"

namespace peft {
class AdaptableLinearImpl;  // peft/adaptable_linear.h
}  // namespace peft

namespace peft::models {

/// One parameter as it appears in a Hugging Face checkpoint.
struct HfParameter {
  std::string hf_name;  // e.g. "model.layers.0.self_attn.q_proj.weight"
  at::Tensor tensor;    // our parameter (shares storage with the module)
  bool transposed;      // stored [in, out] in the checkpoint (GPT-2 Conv1D)
};

/// Where a model lets adapters wrap the residual-stream writes: defined by
/// the adapter interface (peft/hook_point.h).
using peft::HookPoint;
using peft::StreamHook;

/// One projection an adapter may wrap, as the model reports it.
struct AdaptableSlot {
  std::string path;    // module path under module(): "model.layers.0.self_attn.q_proj"
  int64_t layer = -1;  // decoder block index; -1 outside the blocks (lm_head, tied or not)
  AdaptableLinearImpl* linear = nullptr;
};

/// A named set of module-name suffixes (PEFT's list form of target_modules).
struct TargetPreset {
  std::string name;                  // "attention", "mlp", "all_linear", "default", ...
  std::vector<std::string> modules;  // "q_proj", "attn.c_attn", ...
};

class CausalLm {
 public:
  virtual ~CausalLm() = default;

  virtual const ModelConfig& config() const = 0;

  /// The torch module owning all parameters (names follow Hugging Face).
  virtual torch::nn::Module& module() = 0;

  /// Final normalised hidden states [B, T, C] for ids [B, T] (int64). With a
  /// cache, the ids continue the cached sequence and the cache advances.
  virtual at::Tensor forward_hidden(const at::Tensor& input_ids, KvCache* cache) = 0;

  /// lm_head: hidden [..., C] -> logits [..., V].
  virtual at::Tensor logits_from_hidden(const at::Tensor& hidden) = 0;

  /// The output layer's weight [V, C] when logits_from_hidden is exactly
  /// hidden · Wᵀ (no bias, no live adapter on the head), so a loss may fuse
  /// the product with the cross-entropy (kernels/linear_cross_entropy.h);
  /// under autocast, the frozen head's compute copy. Undefined otherwise.
  virtual at::Tensor plain_head_weight() = 0;

  /// logits [B, T, V] = logits_from_hidden(forward_hidden(ids, cache)).
  at::Tensor forward(const at::Tensor& input_ids, KvCache* cache) {
    return logits_from_hidden(forward_hidden(input_ids, cache));
  }

  /// An empty cache for `batch` sequences of up to `capacity` positions.
  virtual KvCache make_cache(int64_t batch, int64_t capacity) const = 0;

  /// Every parameter once, under its Hugging Face name (a tied head is
  /// omitted, as transformers does).
  virtual std::vector<HfParameter> hf_parameters() = 0;

  /// Installs (or clears, with nullptr) the residual-stream hook.
  virtual void set_stream_hook(StreamHook hook) = 0;

  /// Activation checkpointing per decoder block (models/checkpoint.h): while
  /// on, a forward in training mode, under grad mode and without a KV cache
  /// keeps only each block's input and recomputes the block (with the stream
  /// hook calls inside it) during backward. Loss and gradients are those of
  /// the plain forward; only backward() (not torch::autograd::grad) reaches
  /// the parameters of checkpointed blocks. Off by default; evaluation and
  /// no-grad forwards are never affected.
  virtual void set_activation_checkpointing(bool on) = 0;
  virtual bool activation_checkpointing() const = 0;

  /// Every adaptable projection in module order (that of
  /// module().named_modules()), each with its decoder block index.
  virtual std::vector<AdaptableSlot> adaptable_slots() = 0;

  /// The model's target presets in the order error messages list them.
  /// "default" is PEFT's per-model default (an empty TargetSpec uses it).
  virtual std::vector<TargetPreset> target_presets() const = 0;

  /// The module-name suffixes of preset `name`; empty when the model has no
  /// such preset. "gpt2" is accepted as the former name of "all_linear".
  std::vector<std::string> target_preset(const std::string& name) const {
    const std::string wanted = name == "gpt2" ? "all_linear" : name;
    for (TargetPreset& p : target_presets()) {
      if (p.name == wanted) return std::move(p.modules);
    }
    return {};
  }
};

}  // namespace peft::models

#endif  // PEFT_MODELS_CAUSAL_LM_H_
