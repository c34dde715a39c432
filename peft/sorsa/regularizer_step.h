// File: peft/sorsa/regularizer_step.h
//
// The two ways SORSA's orthonormal regulariser R = PeftModel::regularizer()
// (= γ · calc_ortho, the mean over adapted layers; see peft/sorsa/sorsa.h)
// enters training, for trainers (methods.md §3 "Orthonormal regularizer"):
//
//  - OFFICIAL (the default, SorsaOptions.reg_mode): the official trainer's
//    update. After the task gradient is clipped and before optimizer.step(),
//    back-propagate R / η₀ (η₀ = the configured peak learning rate, not the
//    scheduled one), accumulating into .grad. The regulariser's gradient is
//    thus not clipped and goes through the optimizer (AdamW moments and all).
//    With plain SGD at lr η₀ this is the paper's W_p ← W_p − η∇L − γ∇R₀.
//  - DECOUPLED: the paper's rule taken literally. After optimizer.step(),
//    W_p ← W_p − ∇R (= γ ∇calc_ortho) as a separate plain-gradient step that
//    bypasses the optimizer and leaves .grad untouched.
//
//   loss.backward();
//   clip_grad_norm_(params, max_norm);
//   if (mode == proto::SorsaOptions::OFFICIAL) sorsa_regularizer_step_(pm, mode, peak_lr);
//   optimizer.step();
//   if (mode == proto::SorsaOptions::DECOUPLED) sorsa_regularizer_step_(pm, mode, peak_lr);
//   optimizer.zero_grad();
//
// This lives apart from sorsa.h because it needs PeftModel, which depends on
// the registry, which depends on every method.
#ifndef PEFT_SORSA_REGULARIZER_STEP_H_
#define PEFT_SORSA_REGULARIZER_STEP_H_

#include "peft/peft_model.h"
#include "peft/proto/adapter_config.pb.h"

namespace peft {

/// Applies one regulariser update of kind `mode` (see the file comment) to
/// the parameters the active adapters' regularizer() depends on; `peak_lr`
/// (> 0) is used by OFFICIAL only. Returns R before the update (for logging;
/// 0 when no active layer has a regulariser, e.g. γ = 0, in which case
/// nothing is changed). OFFICIAL writes .grad; DECOUPLED writes the
/// parameters in place.
double sorsa_regularizer_step_(PeftModel& pm, proto::SorsaOptions::RegMode mode, double peak_lr);

/// The official `calc_ortho` without γ: the mean over the active SORSA layers
/// of SorsaLinearImpl::orthonormality(), i.e. (1 / 2L) Σ (‖V_pᵀV_p − I‖_F +
/// ‖U_pᵀU_p − I‖_F) (squared norms for adapters with squared_norm). For
/// logging as "orthonormality", also when γ = 0; 0 with no SORSA layer.
double sorsa_orthonormality(PeftModel& pm);

}  // namespace peft

#endif  // PEFT_SORSA_REGULARIZER_STEP_H_
