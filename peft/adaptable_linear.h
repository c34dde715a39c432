//
// AdaptableLinear is every projection an adapter may target (LLaMA q/k/v/o,
// gate/up/down, lm_head; GPT-2 c_attn/c_proj/c_fc). It owns the frozen base
// `weight` [out, in] and optional `bias` [out] under the nn::Linear names, so
// checkpoint keys stay `...q_proj.weight`. Models construct these and never
// name an adapter method; the adapter core (peft/peft_model.h) fills the
// slots: named adapters, which of them are active (with weights), and which
// are merged into the weight.
//
// GPT-2's Conv1D stores its weight [in, out]; the model transposes once at
// load/save (`fan_in_fan_out` records it), so adapters always see [out, in].
#ifndef PEFT_ADAPTABLE_LINEAR_H_
#define PEFT_ADAPTABLE_LINEAR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include "peft/adapter.h"

namespace peft {

/// Options for an adaptable projection y = x Wᵀ + b.
/// Example: `AdaptableLinearOptions{/*in=*/64, /*out=*/192, /*bias=*/true, /*fan_in_fan_out=*/true}`.
struct AdaptableLinearOptions {
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = false;
  /// True when the checkpoint stores the weight [in, out] (GPT-2 Conv1D).
  bool fan_in_fan_out = false;
  /// False for a head tied to the embedding: `weight` then aliases a
  /// parameter owned elsewhere and is not registered here.
  bool owns_weight = true;
};

class AdaptableLinearImpl : public torch::nn::Module {
 public:
  /// Allocates uninitialised parameters (see models/model_io.h for init).
  explicit AdaptableLinearImpl(const AdaptableLinearOptions& options);

  /// y [..., out]: the base projection plus every active, unmerged adapter.
  at::Tensor forward(const at::Tensor& x);

  /// The plain projection x Wᵀ + b, ignoring adapters.
  at::Tensor base_forward(const at::Tensor& x) const;

  /// The weight the base product runs with: `weight` itself, or, while
  /// autocast is on for its device and `weight` is frozen (no grad) and wider
  /// than the autocast dtype, a cached copy in that dtype. Eager autocast
  /// casts a frozen weight again at every call (its cache only keeps leaves
  /// that require grad); this copy is made once and rebuilt only when the
  /// weight changes (merge, unmerge, load: its version or storage moves).
  /// Additive adapters and the fused output layer receive it too.
  at::Tensor compute_weight() const;

  /// compute_weight() when forward() is exactly x · Wᵀ (no bias and no
  /// adapter that is active and not merged), so that a caller may fuse the
  /// product with what follows (trainers/loss.h); undefined otherwise.
  at::Tensor plain_weight() const;

  /// Makes this head share `weight` with an embedding [out, in] (tied heads).
  void tie_weight_(const at::Tensor& weight);

  /// Adds adapter `name` (registered as submodule `name`). Not active yet.
  void add_adapter(const std::string& name, std::shared_ptr<LinearAdapter> adapter);
  /// Removes adapter `name` (unmerging it first if merged).
  void remove_adapter_(const std::string& name);
  /// Drops every adapter but keeps merged weights as they are (the end of
  /// merge-and-unload).
  void forget_adapters_();
  LinearAdapter* adapter(const std::string& name) const;
  std::vector<std::string> adapter_names() const;

  /// The adapters used by forward(), each with its weight (1 = plain).
  void set_active(std::vector<std::pair<std::string, double>> active);
  const std::vector<std::pair<std::string, double>>& active() const { return active_; }

  /// Folds adapter `name` (times `scale`) into `weight` in fp32, casting
  /// once. Merged adapters are skipped by forward().
  void merge_(const std::string& name, double scale = 1.0);
  /// Undoes the most recent merge (adapters come off in reverse order).
  void unmerge_last_();
  const std::vector<std::pair<std::string, double>>& merged() const { return merged_; }

  const AdaptableLinearOptions options;
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined

 private:
  std::vector<std::pair<std::string, std::shared_ptr<LinearAdapter>>> adapters_;
  std::vector<std::pair<std::string, double>> active_;
  std::vector<std::pair<std::string, double>> merged_;  // merge order
  bool is_merged(const std::string& name) const;
  // compute_weight()'s copy and what it was made from.
  mutable at::Tensor compute_cache_;
  mutable const void* cache_source_ = nullptr;
  mutable int64_t cache_version_ = -1;
};
TORCH_MODULE(AdaptableLinear);

}  // namespace peft

#endif  // PEFT_ADAPTABLE_LINEAR_H_
