//
// The training and evaluation loss of a causal LM on a batch: per-sample mean
// next-token cross-entropy (what reweighting consumes). When the model's
// output layer is a plain product (CausalLm::plain_head_weight), the head and
// the cross-entropy run fused over row chunks (kernels/linear_cross_entropy.h):
// the [B·T, V] logits, their float32 log-probabilities and their gradient are
// never held whole, and a frozen head's input gradient is formed in the
// forward pass. Otherwise (a head with adapters or a bias) the logits path
// of per_sample_token_loss runs. Both give the same numbers to rounding.
//
//   PerSampleLoss ps = causal_lm_loss(lm, batch.input_ids, batch.labels);  // [B], [B]
#ifndef PEFT_TRAINERS_LOSS_H_
#define PEFT_TRAINERS_LOSS_H_

#include <ATen/core/Tensor.h>

#include "models/causal_lm.h"
#include "peft/core/autocast.h"  // AutocastScope (callers of the loss use it)
#include "trainers/reweighting.h"

namespace peft::trainers {

/// input_ids and labels [B, T] int64 (labels already aligned with the next
/// token, -100 where no loss). Under autocast the head runs in the autocast
/// dtype, as an eager `linear` would. `fused` = false forces the logits path.
PerSampleLoss causal_lm_loss(models::CausalLm& lm, const at::Tensor& input_ids, const at::Tensor& labels,
                             bool fused = true);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_LOSS_H_
