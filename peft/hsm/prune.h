//
// PAT's structural export (Liu et al., AAAI 2025, arXiv 2408.14721; official
// script/merge_dimdown.py; docs/methods.md §7 "Merge and export"): turns a
// LLaMA trained with HSMs (peft/hsm/hsm.h) plus linear adapters (LoRA) into a
// plain, smaller LlamaForCausalLM of hidden size H' = |K| with
// K = {c : hard gate g_c = 1} (= {c : m_c > 0}).
//
// With the hard gate, every write into the residual stream is multiplied by
// the 0/1 gate, so channels outside K are exactly zero everywhere in the
// stream and can be removed. Each HSM is folded into the module that writes
// into it, with M = diag(γ)·diag(g)·(I + B A) [H, H] (γ folded: the
// peft-cpp decision; the official script drops γ):
//
//   embed_tokens  E ← (E Mᵀ)[:, K]            (writer, embedding HSM)
//   o_proj        W ← (M W)[K, :],  b ← (M b)[K]   (writer, attention HSM)
//   down_proj     W ← (M W)[K, :],  b ← (M b)[K]   (writer, MLP HSM)
//   q/k/v/gate/up_proj, lm_head   W ← W[:, K]  (readers)
//   every RMSNorm weight          w ← w[K] · √(H / H')
//   rms_norm_eps                  ε ← ε · H / H'
//
// Why the RMSNorm factors: with the pruned channels exactly zero,
// mean_H(x²) = (H'/H)·mean_K(x²), so
//   w_c x_c / √(mean_H(x²) + ε) = (w_c √(H/H')) x_c / √(mean_K(x²) + ε·H/H').
// The official script scales w by √(H/H') but keeps ε, which is exact only
// up to ε; scaling ε too makes the pruned model equal the masked one.
//
// Linear adapters active alongside the HSM (LoRA, weight w) are folded first:
// W ← W + w·(merged_weight(W) − W). A tied head reads the original E, not
// E Mᵀ, so the result keeps tied embeddings only when the two slices are
// identical; otherwise it gets its own lm_head.weight = E[:, K].
#ifndef PEFT_HSM_PRUNE_H_
#define PEFT_HSM_PRUNE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "peft/hsm/hsm.h"
#include "peft/peft_model.h"

namespace peft {

/// The HSM adapter object of `pm` called `name` (to set the hard gate or read
/// the mask). Errors: no such adapter, or not an HSM adapter.
absl::StatusOr<HsmAdapterImpl*> find_hsm_adapter(PeftModel& pm, const std::string& name);

/// The pruned model described in the file comment: a new LlamaForCausalLM
/// (hidden_size H', head_dim unchanged, rms_norm_eps scaled, the base dtype),
/// with no adapters; `pm` is not modified. Its logits equal those of `pm`'s
/// model with the hard gate up to rounding.
/// Preconditions (FailedPrecondition otherwise): `hsm_adapter` is active and
/// its hard gate is on (set_hard_gate_(true)); every other active adapter is
/// a linear one (a second stream adapter cannot be folded: Unimplemented);
/// at least one channel is kept. LLaMA only.
absl::StatusOr<std::shared_ptr<models::CausalLm>> prune_hsm(PeftModel& pm, const std::string& hsm_adapter);

}  // namespace peft

#endif  // PEFT_HSM_PRUNE_H_
