//
// The two interfaces every PEFT method implements one of:
//  - LinearAdapter modifies one projection (an AdaptableLinear): LoRA, NoRA,
//    SORSA, Bone. Its math is y = x Wᵀ + b + delta(x; W); merging folds the
//    delta into W.
//  - StreamAdapter inserts modules on the residual stream through the model's
//    hook points (after the embedding, attention output, MLP output):
//    Compacter bottlenecks, HSM masks.
// Method code is math only: injection, freezing, merging, naming on disk and
// the summary are written once in peft/peft_model.cc.
#ifndef PEFT_ADAPTER_H_
#define PEFT_ADAPTER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

#include "peft/hook_point.h"

namespace peft {

/// A tensor as stored in an adapter file, under its key relative to the
/// adapted module (e.g. "lora_A.weight"; Hugging Face PEFT names for LoRA).
struct AdapterTensor {
  std::string key;
  at::Tensor tensor;
  /// A name older files used for the same tensor, read when `key` is absent
  /// (empty: none). Files are always written under `key`.
  std::string legacy_key = {};
};

class LinearAdapter {
 public:
  virtual ~LinearAdapter() = default;

  /// The module that owns this adapter's tensors: trainable ones are
  /// parameters (requires_grad), frozen factors are buffers.
  virtual std::shared_ptr<torch::nn::Module> module() = 0;

  /// The adapted projection for x [..., in], given the frozen base weight
  /// [out, in] and bias [out] (undefined when absent). Implementations choose
  /// the cheapest order of products.
  virtual at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) = 0;

  /// What this adapter adds to the base output: forward(x, W, b) - (x Wᵀ + b).
  /// Used when several adapters are active at once.
  virtual at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) = 0;

  /// The merged weight for base weight W [out, in], computed in fp32 and
  /// returned in fp32 (the caller casts once).
  virtual at::Tensor merged_weight(const at::Tensor& weight) const = 0;

  /// The exact inverse of merged_weight, in fp32.
  virtual at::Tensor unmerged_weight(const at::Tensor& merged) const = 0;

  /// True when merged_weight(W) - W does not depend on W, so that weighted
  /// sums of several adapters' deltas are meaningful.
  virtual bool additive() const = 0;

  /// Extra loss term for this layer, added to the task loss and clipped with
  /// it; undefined when none.
  virtual at::Tensor aux_loss() = 0;

  /// This layer's share of a regulariser that is not part of the loss:
  /// trainers apply its gradient outside the clipped task gradient (SORSA:
  /// peft/sorsa/regularizer_step.h, by the adapter's reg_mode);
  /// PeftModel::regularizer() averages it over layers. Undefined when none.
  virtual at::Tensor regularizer() = 0;

  /// Tensors written to and read from the adapter file.
  virtual std::vector<AdapterTensor> state() = 0;
};

class StreamAdapter {
 public:
  virtual ~StreamAdapter() = default;

  virtual std::shared_ptr<torch::nn::Module> module() = 0;

  /// Transforms the sublayer output h [B, T, C] at `point` of block `layer`
  /// (-1 for the embedding) before it is added to the residual stream.
  virtual at::Tensor forward(HookPoint point, int64_t layer, const at::Tensor& h) = 0;

  /// Extra loss term (summed over the adapter's modules), or undefined.
  virtual at::Tensor aux_loss() = 0;

  /// Tensors written to and read from the adapter file, keys relative to the
  /// model root.
  virtual std::vector<AdapterTensor> state() = 0;

  /// Called once per optimizer step with the global step (schedules).
  virtual void on_step(int64_t step) = 0;
};

}  // namespace peft

#endif  // PEFT_ADAPTER_H_
