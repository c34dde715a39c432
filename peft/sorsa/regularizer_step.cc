#include "peft/sorsa/regularizer_step.h"

#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/sorsa/sorsa.h"

namespace peft {

double sorsa_regularizer_step_(PeftModel& pm, proto::SorsaOptions::RegMode mode, double peak_lr) {
  TORCH_CHECK(mode != proto::SorsaOptions::OFFICIAL || peak_lr > 0,
              "sorsa_regularizer_step_: peak_lr must be positive, got ", peak_lr);
  // The regulariser needs a graph even when the caller is under NoGradGuard.
  torch::AutoGradMode enable_grad(true);
  const at::Tensor reg = pm.regularizer();
  const double value = reg.item<double>();
  if (!reg.requires_grad()) return value;  // no layer has one (γ = 0, other methods)
  if (mode == proto::SorsaOptions::OFFICIAL) {
    (reg / peak_lr).backward();
    return value;
  }
  TORCH_CHECK(mode == proto::SorsaOptions::DECOUPLED, "sorsa_regularizer_step_: unknown mode ",
              static_cast<int>(mode));
  std::vector<at::Tensor> params;
  for (auto& [name, p] : pm.trainable_parameters()) params.push_back(p);
  const std::vector<at::Tensor> grads = torch::autograd::grad({reg}, params, /*grad_outputs=*/{},
                                                              /*retain_graph=*/false, /*create_graph=*/false,
                                                              /*allow_unused=*/true);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    if (grads[i].defined()) params[i].sub_(grads[i]);
  }
  return value;
}

double sorsa_orthonormality(PeftModel& pm) {
  torch::NoGradGuard no_grad;
  double total = 0;
  int64_t n = 0;
  for (const auto& [name, weight] : pm.active()) {
    const proto::AdapterConfig* c = pm.config(name);
    if (c == nullptr || !c->has_sorsa()) continue;
    for (const LinearTarget& t : pm.targets(name)) {
      const auto* s = dynamic_cast<const SorsaLinearImpl*>(t.linear->adapter(name));
      if (s == nullptr) continue;
      total += s->orthonormality().item<double>();
      ++n;
    }
  }
  return n > 0 ? total / static_cast<double>(n) : 0.0;
}

}  // namespace peft
