//
// Bone: block-affine adaptation (Kang & Yin, arXiv 2409.15371; docs/methods.md
// §5). The block size r cuts the base weight W [out, in] into r×r
// blocks W_ij (i over out/r row blocks, j over in/r column blocks). Two
// variants, chosen by proto::BoneOptions::variant:
//
//  - BAT (default; paper v1 "Bone" with the Weight Guide, PEFT
//    init_weights="bat"): T [out/r, r, r], zeros at init, trainable, and
//
//        W'_ij = W_ij (I + T_i) + T_i,          y = x W'ᵀ + b.
//
//    The update depends on W itself, so every forward materialises W' once
//    (kernels/block_affine.h) and applies it; merging writes W', unmerging
//    solves W_ij = (W'_ij − T_i)(I + T_i)⁻¹ exactly (fp64). Needs r to divide
//    out and in. Not additive: cannot be scaled or summed with other
//    adapters on the same projection. Trainable: out·r. No dropout.
//
//  - MISS (PEFT MiSS / later-paper "Bone" default, init_weights=true):
//    D [r, out], zeros at init, trainable, and
//
//        y = x Wᵀ + b + (Σ_j dropout(x)_j) D,   ΔW[:, j·r : (j+1)·r] = Dᵀ,
//
//    where x_j is the j-th r-wide chunk of x's last dim, right-padded with
//    zeros when in % r ≠ 0 (the trailing in % r columns of ΔW then get the
//    first in % r columns of Dᵀ). Additive; trainable r·out.
//
// On disk (adapter_model.safetensors, key relative to the module), both as
// current PEFT's MiSS writes them: BAT's T as `miss_block` [out/r, r, r] with
// peft_type "MISS", init_weights "bat"; MISS's D as `miss_block` [r, out]
// with init_weights true; mini_r 1, miss_dropout and MissConfig's other
// keys. Old BONE directories (older PEFT: `bone_block`, peft_type
// "BONE") load too and BoneOptions::block_key makes them save back alike;
// peft-cpp's own earlier Bat files (`bone_block`) are read as well.
//
//   proto::AdapterConfig c;
//   c.mutable_bone()->set_r(16);                                  // BAT
//   c.mutable_bone()->set_variant(proto::BoneOptions::MISS);      // or MiSS
//   c.mutable_target()->set_preset("all_linear");
#ifndef PEFT_BONE_BONE_H_
#define PEFT_BONE_BONE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

/// Bone's BAT variant on one projection [out, in]; r must divide both.
class BatLinearImpl final : public torch::nn::Module, public LinearAdapter {
 public:
  BatLinearImpl(const proto::BoneOptions& options, int64_t out_features, int64_t in_features);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  /// x W'ᵀ + b with W' built once from `weight` and T.
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) override;
  /// x (W' − W)ᵀ.
  at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) override;
  /// W' in fp32, computed in fp64 and rounded once.
  at::Tensor merged_weight(const at::Tensor& weight) const override;
  /// (W'_ij − T_i)(I + T_i)⁻¹ per block, solved in fp64, returned in fp32.
  at::Tensor unmerged_weight(const at::Tensor& merged) const override;
  bool additive() const override { return false; }
  at::Tensor aux_loss() override { return {}; }
  at::Tensor regularizer() override { return {}; }
  std::vector<AdapterTensor> state() override;

  /// W' [out, in] in the promoted dtype of `weight` and T, differentiable
  /// w.r.t. T; the one materialisation a forward performs.
  at::Tensor adapted_weight(const at::Tensor& weight) const;

  const proto::BoneOptions options;
  at::Tensor bone_block;  // T [out/r, r, r] (`miss_block` on disk)
};

/// Bone's MISS variant on one projection [out, in]; any r ≥ 1.
class MissLinearImpl final : public torch::nn::Module, public LinearAdapter {
 public:
  MissLinearImpl(const proto::BoneOptions& options, int64_t out_features, int64_t in_features);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) override;
  /// (Σ_j dropout(x)_j) D without materialising ΔW.
  at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) override;
  at::Tensor merged_weight(const at::Tensor& weight) const override;
  at::Tensor unmerged_weight(const at::Tensor& merged) const override;
  bool additive() const override { return true; }
  at::Tensor aux_loss() override { return {}; }
  at::Tensor regularizer() override { return {}; }
  std::vector<AdapterTensor> state() override;

  /// ΔW [out, in] in fp32: Dᵀ tiled along the input, cut to `in` columns.
  at::Tensor delta_weight() const;

  const proto::BoneOptions options;
  const int64_t in_features;
  at::Tensor miss_block;  // D [r, out]
};

/// The registry entry for "bone" (peft_types "BONE" and "MISS").
AdapterMethod bone_method();

}  // namespace peft

#endif  // PEFT_BONE_BONE_H_
