#include "trainers/loss.h"

#include <ATen/ATen.h>

#include "kernels/linear_cross_entropy.h"

namespace peft::trainers {

PerSampleLoss causal_lm_loss(models::CausalLm& lm, const at::Tensor& input_ids, const at::Tensor& labels, bool fused) {
  const at::Tensor h = lm.forward_hidden(input_ids, nullptr);  // [B, T, C]
  const at::Tensor w = fused ? lm.plain_head_weight() : at::Tensor();
  if (!w.defined()) return per_sample_token_loss(lm.logits_from_hidden(h), labels);
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == h.size(0) && labels.size(1) == h.size(1),
              "causal_lm_loss: labels must be [", h.size(0), ", ", h.size(1), "], got ", labels.sizes());
  const at::ScalarType dtype = autocast_dtype_for(h).value_or(h.scalar_type());
  const int64_t b = h.size(0), t = h.size(1);
  const at::Tensor target = labels.to(h.device(), at::kLong);
  // A frozen head goes to the kernel in its own dtype: the kernel widens a
  // narrower one (a bf16 base under float32 compute) by blocks instead of a
  // whole float32 copy for the step (1 GB for Llama 3's head). A trainable
  // one is converted here, where autograd sees it.
  const at::Tensor per_token = kernels::linear_cross_entropy(
      h.reshape({b * t, h.size(2)}).to(dtype), w.requires_grad() ? w.to(dtype) : w, target.reshape({b * t}));
  PerSampleLoss out;
  out.token_counts = (target != -100).sum(1);  // [B] int64
  out.loss = per_token.view({b, t}).sum(1).to(at::kFloat) / out.token_counts.clamp_min(1).to(at::kFloat);
  return out;
}

}  // namespace peft::trainers
