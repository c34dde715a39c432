#include "peft/sorsa/regularizer_step.h"

#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/sorsa/sorsa.h"

namespace peft {

namespace {

// The SORSA layers of the active adapters whose reg_mode is `mode`.
std::vector<SorsaLinearImpl*> sorsa_layers(PeftModel& pm, std::optional<proto::SorsaOptions::RegMode> mode) {
  std::vector<SorsaLinearImpl*> out;
  for (const auto& [name, weight] : pm.active()) {
    const proto::AdapterConfig* c = pm.config(name);
    if (c == nullptr || !c->has_sorsa() || (mode && c->sorsa().reg_mode() != *mode)) continue;
    for (const LinearTarget& t : pm.targets(name)) {
      if (auto* s = dynamic_cast<SorsaLinearImpl*>(t.linear->adapter(name))) out.push_back(s);
    }
  }
  return out;
}

}  // namespace

double sorsa_regularizer_step_(PeftModel& pm, proto::SorsaOptions::RegMode mode, double peak_lr, int64_t grad_accum) {
  TORCH_CHECK(mode != proto::SorsaOptions::OFFICIAL || peak_lr > 0,
              "sorsa_regularizer_step_: peak_lr must be positive, got ", peak_lr);
  TORCH_CHECK(grad_accum >= 1, "sorsa_regularizer_step_: grad_accum must be >= 1, got ", grad_accum);
  // The regulariser needs a graph even when the caller is under NoGradGuard.
  torch::AutoGradMode enable_grad(true);
  at::Tensor reg;
  int64_t n = 0;
  for (SorsaLinearImpl* s : sorsa_layers(pm, mode)) {
    at::Tensor r = s->regularizer();
    if (!r.defined()) continue;
    reg = reg.defined() ? reg + r : r;
    ++n;
  }
  if (n == 0) return 0.0;  // no layer has one (γ = 0, another mode, other methods)
  reg = reg / static_cast<double>(n);
  const double value = reg.item<double>();
  if (mode == proto::SorsaOptions::OFFICIAL) {
    (reg / (peak_lr * static_cast<double>(grad_accum))).backward();
    return value;
  }
  TORCH_CHECK(mode == proto::SorsaOptions::DECOUPLED, "sorsa_regularizer_step_: unknown mode ", static_cast<int>(mode));
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
  const std::vector<SorsaLinearImpl*> layers = sorsa_layers(pm, std::nullopt);
  for (SorsaLinearImpl* s : layers) total += s->orthonormality().item<double>();
  return layers.empty() ? 0.0 : total / static_cast<double>(layers.size());
}

}  // namespace peft
