// File: peft/adaptable_linear.h
//
// AdaptableLinear is every projection an adapter may target (LLaMA q/k/v/o,
// gate/up/down, lm_head; GPT-2 c_attn/c_proj/c_fc). It owns the frozen base
// `weight` [out, in] and optional `bias` [out] under the nn::Linear names, so
// checkpoint keys stay `...q_proj.weight`. Models construct these and never
// name an adapter method; the adapter core (peft/) fills the slot.
//
// GPT-2's Conv1D stores its weight [in, out]; the model transposes once at
// load/save (`fan_in_fan_out` records it), so adapters always see [out, in].
#ifndef PEFT_ADAPTABLE_LINEAR_H_
#define PEFT_ADAPTABLE_LINEAR_H_

#include <cstdint>
#include <memory>

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

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

/// The computation that an adapter substitutes for the plain projection.
/// Implemented by the adapter core; models only call AdaptableLinear.
class ProjectionOverride {
 public:
  virtual ~ProjectionOverride() = default;
  /// Output for input x [..., in] given the frozen base weight [out, in] and
  /// bias [out] (undefined when absent). Must equal the plain projection when
  /// the adapter is a no-op.
  virtual at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) = 0;
};

class AdaptableLinearImpl : public torch::nn::Module {
 public:
  /// Allocates uninitialised parameters (see models/model_io.h for init).
  explicit AdaptableLinearImpl(const AdaptableLinearOptions& options);

  /// y [..., out] = override ? override(x) : x Wᵀ + b.
  at::Tensor forward(const at::Tensor& x);

  /// The plain projection, ignoring any override.
  at::Tensor base_forward(const at::Tensor& x) const;

  /// Makes this head share `weight` with an embedding [out, in] (tied heads).
  void tie_weight_(const at::Tensor& weight);

  const AdaptableLinearOptions options;
  at::Tensor weight;  // [out, in]
  at::Tensor bias;    // [out] or undefined
  /// Set by the adapter core; null means plain projection.
  std::shared_ptr<ProjectionOverride> override_forward;
};
TORCH_MODULE(AdaptableLinear);

}  // namespace peft

#endif  // PEFT_ADAPTABLE_LINEAR_H_
