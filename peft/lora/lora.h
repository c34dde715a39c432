//
// LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
// eq. 3) as Hugging Face PEFT implements it: y = x Wᵀ + b + s · B A dropout(x),
// A [r, in], B [out, r], s = alpha / r, or alpha / sqrt(r) with rsLoRA
// (Kalajdzievski 2023). Inits: "default" (A kaiming-uniform a=√5 =
// U(±1/√in), B = 0), "gaussian" (A ~ N(0, 1/r²), B = 0), "pissa" (Meng et al.
// 2024: top-r SVD factors, residual left in the base) and "olora" (Büyükakyüz
// 2024: QR factors, residual left in the base); PiSSA/OLoRA leave the model's
// output unchanged at step 0. On disk the tensors are PEFT's
// `lora_A.weight` [r, in] and `lora_B.weight` [out, r].
//
//   proto::AdapterConfig c;
//   c.mutable_lora()->set_r(8);
//   c.mutable_lora()->set_alpha(16);
//   c.mutable_target()->set_preset("attention");
//
// rank_pattern / alpha_pattern give single modules their own r and alpha
// (PEFT's keys of the same names in adapter_config.json).
#ifndef PEFT_LORA_LORA_H_
#define PEFT_LORA_LORA_H_

#include <memory>
#include <vector>

#include <torch/nn/module.h>

#include "absl/status/statusor.h"
#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"

namespace peft {

class LoraLinearImpl final : public torch::nn::Module, public LinearAdapter {
 public:
  /// `weight` is the frozen base [out, in]; PiSSA/OLoRA rewrite it in place.
  LoraLinearImpl(const proto::LoraOptions& options, at::Tensor& weight, uint64_t seed);

  std::shared_ptr<torch::nn::Module> module() override { return shared_from_this(); }
  at::Tensor forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) override;
  at::Tensor forward_delta(const at::Tensor& x, const at::Tensor& weight) override;
  at::Tensor merged_weight(const at::Tensor& weight) const override;
  at::Tensor unmerged_weight(const at::Tensor& merged) const override;
  bool additive() const override { return true; }
  at::Tensor aux_loss() override { return {}; }
  at::Tensor regularizer() override { return {}; }
  std::vector<AdapterTensor> state() override;

  /// s · B A in fp32 [out, in].
  at::Tensor delta_weight() const;

  /// This adapter as an ordinary LoRA on the ORIGINAL base weight, for a
  /// PiSSA/OLoRA init (PEFT's subtract_mutated_init): W_res + s B A =
  /// W + s (B A − B0 A0), so `lora_A.weight` = [A; A0] [2r, in] and
  /// `lora_B.weight` = [B, −B0] [out, 2r], with r and alpha doubled
  /// (lora_plain_options) to keep s. Fails for other inits.
  std::vector<AdapterTensor> plain_lora_state() const;

  const proto::LoraOptions options;
  const double scaling;
  at::Tensor lora_A;  // [r, in]
  at::Tensor lora_B;  // [out, r]
  // PiSSA/OLoRA only: the initial factors A0 [r, in], B0 [out, r]. Plain
  // members, so never trained nor saved: they follow from the original base,
  // and loading the adapter on that base runs the init again.
  at::Tensor lora_A0, lora_B0;
};

/// The registry entry for "lora".
AdapterMethod lora_method();

/// The options of a PiSSA/OLoRA adapter saved as an ordinary LoRA
/// (plain_lora_state), as PEFT's save_pretrained with
/// path_initial_model_for_weight_conversion writes them: init default
/// (init_lora_weights true), r and every rank_pattern value doubled, alpha
/// and every alpha_pattern value doubled (alpha · √2 with rsLoRA), so each
/// module keeps its scaling. Errors: another init, or rsLoRA together with
/// rank_pattern / alpha_pattern (PEFT refuses that too).
absl::StatusOr<proto::LoraOptions> lora_plain_options(const proto::LoraOptions& options);

/// True for the inits that rewrite the base weight into a residual (PiSSA,
/// OLoRA): they keep their initial factors and can be saved as plain LoRA.
bool residual_init(const proto::LoraOptions& options);

/// LoRA's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA.
double lora_scaling(double alpha, int64_t r, bool use_rslora);

/// The options LoRA uses on the module at `path` (dotted, as in the base
/// checkpoint): r and alpha from the first matching rank_pattern /
/// alpha_pattern entry, as PEFT's get_pattern_key picks it, else the
/// adapter's own r and alpha. Patterns are checked by validate().
proto::LoraOptions lora_options_for(const proto::LoraOptions& options, const std::string& path);

}  // namespace peft

#endif  // PEFT_LORA_LORA_H_
