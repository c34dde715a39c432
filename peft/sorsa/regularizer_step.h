//
// The two ways SORSA's orthonormal regulariser R (= γ · calc_ortho, the mean
// over the adapted layers of SorsaLinearImpl::regularizer(); see
// peft/sorsa/sorsa.h) enters training, for trainers (docs/methods.md, SORSA
// "Orthonormal regulariser"). Each SORSA adapter chooses with its
// SorsaOptions.reg_mode; R of one mode is the mean over the active layers of
// the adapters in that mode.
//
//  - OFFICIAL (the default): the official trainer's update
//    (Gunale0926/SORSA sorsalib/src/sorsa/trainer.py). After the task
//    gradient is clipped and before optimizer.step(), back-propagate
//    R / (η₀ · grad_accum) (η₀ = the configured peak learning rate, not the
//    scheduled one), accumulating into .grad. The official code calls
//    accelerator.backward on the regulariser, and accelerate divides every
//    backward by the gradient accumulation steps, hence the grad_accum. The
//    regulariser's gradient is thus not clipped and goes through the
//    optimizer (AdamW moments and all). With plain SGD at lr η₀ and no
//    accumulation this is the paper's W_p ← W_p − η∇L − γ∇R₀.
//  - DECOUPLED: the paper's rule taken literally. After optimizer.step(),
//    W_p ← W_p − ∇R (= γ ∇calc_ortho) as a separate plain-gradient step that
//    bypasses the optimizer and leaves .grad untouched (once per optimizer
//    step, whatever the accumulation).
//
//   loss.backward();                       // each micro-batch
//   clip_grad_norm_(params, max_norm);
//   sorsa_regularizer_step_(pm, proto::SorsaOptions::OFFICIAL, peak_lr, grad_accum);
//   optimizer.step();
//   sorsa_regularizer_step_(pm, proto::SorsaOptions::DECOUPLED, peak_lr, grad_accum);
//   optimizer.zero_grad();
//
// This lives apart from sorsa.h because it needs PeftModel, which depends on
// the registry, which depends on every method.
#ifndef PEFT_SORSA_REGULARIZER_STEP_H_
#define PEFT_SORSA_REGULARIZER_STEP_H_

#include "peft/peft_model.h"
#include "peft/proto/adapter_config.pb.h"

namespace peft {

/// Applies one regulariser update of kind `mode` (see the file comment) for
/// the active SORSA adapters whose reg_mode is `mode`; `peak_lr` (> 0) and
/// `grad_accum` (>= 1) are used by OFFICIAL only. Returns R of those layers
/// before the update (for logging; 0 when none has a regulariser, e.g. γ = 0
/// or no adapter in that mode, in which case nothing is changed). OFFICIAL
/// writes .grad; DECOUPLED writes the parameters in place.
double sorsa_regularizer_step_(PeftModel& pm, proto::SorsaOptions::RegMode mode, double peak_lr,
                               int64_t grad_accum = 1);

/// The official `calc_ortho` without γ: the mean over the active SORSA layers
/// of SorsaLinearImpl::orthonormality(), i.e. (1 / 2L) Σ (‖V_pᵀV_p − I‖_F +
/// ‖U_pᵀU_p − I‖_F) (squared norms for adapters with squared_norm). For
/// logging as "orthonormality", also when γ = 0; 0 with no SORSA layer.
double sorsa_orthonormality(PeftModel& pm);

}  // namespace peft

#endif  // PEFT_SORSA_REGULARIZER_STEP_H_
