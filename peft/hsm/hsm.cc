#include "peft/hsm/hsm.h"

#include <algorithm>
#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/modules/container/modulelist.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace peft {
namespace {

double temperature_at(int64_t t, int64_t g) {
  if (t >= g) return 1e6;
  return 1.0 / (1.0 - std::log(static_cast<double>(std::max<int64_t>(1, t))) / std::log(static_cast<double>(g)) + 1e-6);
}

// mean of `x` over the selected entries, 0 when none are selected.
at::Tensor masked_mean(const at::Tensor& x, const at::Tensor& select) {
  const at::Tensor v = x.masked_select(select);
  return v.numel() > 0 ? v.mean() : at::zeros({}, x.options());
}

}  // namespace

HsmSchedule hsm_schedule(int64_t step, int64_t global_step) {
  TORCH_CHECK(global_step > 1, "HSM: global_step must be > 1, got ", global_step);
  HsmSchedule s;
  // The official code freezes at int(0.8·G) and computes β from the real step.
  const int64_t freeze = static_cast<int64_t>(static_cast<double>(global_step) * 0.8);
  s.detach = step >= freeze;
  s.temperature = temperature_at(s.detach ? freeze : step, global_step);
  s.beta = std::max(0.5 - static_cast<double>(step) / static_cast<double>(global_step), 0.0);
  return s;
}

at::Tensor hsm_soft_gate(const at::Tensor& mask, const HsmSchedule& s) {
  const at::Tensor m = s.detach ? mask.detach() : mask;
  return at::reciprocal(1.0 + at::exp(at::clamp_max(m * (-s.temperature), 10.0))) + s.beta;
}

at::Tensor hsm_hard_gate(const at::Tensor& mask) {
  const at::Tensor m = mask.detach();
  return at::round(at::reciprocal(1.0 + at::exp(at::clamp_max(m * -1e6, 10.0))));
}

at::Tensor binarize_ste(const at::Tensor& m) {
  // (m − m.detach()) is exactly 0 in the forward pass and has gradient 1.
  return (m >= 0).to(m.scalar_type()) + (m - m.detach());
}

at::Tensor hsm_mask_loss(const at::Tensor& mask, int64_t target_hidden) {
  TORCH_CHECK(target_hidden > 0, "HSM: target_hidden must be positive, got ", target_hidden);
  const double d = static_cast<double>(target_hidden);
  at::Tensor loss = 10.0 * at::abs(binarize_ste(mask).sum() - d) / d;
  loss = loss + masked_mean((mask - 0.5).pow(2), mask > 0);
  loss = loss + masked_mean((mask + 0.5).pow(2), mask <= 0);
  return loss;
}

at::Tensor hsm_identity_loss(const at::Tensor& A) {
  TORCH_CHECK(A.dim() == 2, "HSM: A must be [e, H], got ", A.sizes());
  const at::Tensor eye = at::eye(A.size(0), A.options());
  return (at::matmul(A, A.t()) - eye).pow(2).mean();
}

HsmModuleImpl::HsmModuleImpl(int64_t hidden, int64_t bottleneck, bool with_scale, at::Generator& gen) {
  torch::NoGradGuard no_grad;
  // kaiming_uniform_(a = √5) on [e, H]: U(±1/√H).
  const double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  A = register_parameter("A", at::empty({bottleneck, hidden}).uniform_(-bound, bound, gen));
  B = register_parameter("B", at::zeros({hidden, bottleneck}));
  if (with_scale) scale = register_parameter("scale", at::ones({hidden}));
}

at::Tensor HsmModuleImpl::channel_factor(const at::Tensor& gate) const { return scale.defined() ? gate * scale : gate; }

at::Tensor HsmModuleImpl::forward(const at::Tensor& h, const at::Tensor& gate) {
  const at::Tensor x = h.to(A.scalar_type());
  at::Tensor z = x + at::linear(at::linear(x, A), B);  // x (I + B A)ᵀ
  z = z * gate.to(x.scalar_type());                    // mask first, then scale (official order)
  if (scale.defined()) z = z * scale;
  return z.to(h.scalar_type());
}

HsmAdapterImpl::HsmAdapterImpl(const proto::HsmOptions& o, int64_t hidden_, int64_t num_layers, uint64_t seed)
    : options(o), hidden(hidden_) {
  TORCH_CHECK(o.target_hidden() > 0 && o.target_hidden() <= hidden, "HSM: target_hidden must be in (0, ", hidden,
              "], got ", o.target_hidden());
  TORCH_CHECK(o.bottleneck() > 0, "HSM: bottleneck must be positive, got ", o.bottleneck());
  TORCH_CHECK(o.global_step() > 1, "HSM: global_step must be > 1, got ", o.global_step());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const bool with_scale = o.identity_loss();
  embed = register_module("embed", HsmModule(hidden, o.bottleneck(), with_scale, gen));
  mask = embed->register_parameter("mask", at::zeros({hidden}));
  auto layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < num_layers; ++l) {
    auto block = std::make_shared<torch::nn::Module>();
    attn.push_back(block->register_module("attn", HsmModule(hidden, o.bottleneck(), with_scale, gen)));
    mlp.push_back(block->register_module("mlp", HsmModule(hidden, o.bottleneck(), with_scale, gen)));
    layers->push_back(block);
  }
}

at::Tensor HsmAdapterImpl::gate() const {
  return hard_ ? hsm_hard_gate(mask) : hsm_soft_gate(mask, hsm_schedule(step_, options.global_step()));
}

at::Tensor HsmAdapterImpl::forward(HookPoint point, int64_t layer, const at::Tensor& h) {
  HsmModuleImpl* m = nullptr;
  if (point == HookPoint::kEmbedding) {
    m = embed.get();
  } else {
    std::vector<HsmModule>& v = point == HookPoint::kAttentionOutput ? attn : mlp;
    TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(v.size()), "HSM: no module for block ", layer);
    m = v[layer].get();
  }
  return m->forward(h, gate());
}

std::vector<HsmModuleImpl*> HsmAdapterImpl::modules_in_order() {
  std::vector<HsmModuleImpl*> out = {embed.get()};
  for (size_t l = 0; l < attn.size(); ++l) {
    out.push_back(attn[l].get());
    out.push_back(mlp[l].get());
  }
  return out;
}

at::Tensor HsmAdapterImpl::aux_loss() {
  at::Tensor loss = hsm_mask_loss(mask, options.target_hidden());
  if (!options.identity_loss()) return loss;
  std::vector<HsmModuleImpl*> with_il = modules_in_order();
  if (options.official_last_layer_only() && !attn.empty()) {
    with_il = {embed.get(), attn.back().get(), mlp.back().get()};
  }
  for (HsmModuleImpl* m : with_il) loss = loss + hsm_identity_loss(m->A);
  return loss;
}

std::vector<AdapterTensor> HsmAdapterImpl::state() {
  std::vector<AdapterTensor> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) out.push_back({"hsm." + item.key(), item.value()});
  return out;
}

AdapterMethod hsm_method() {
  AdapterMethod m;
  m.name = "hsm";
  m.method_case = proto::AdapterConfig::kHsm;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("HSM"); };
  m.accepted_peft_types = {"HSM"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::HsmOptions& o = c.hsm();
    if (!o.has_target_hidden()) {
      return absl::InvalidArgumentError("hsm.target_hidden (D, the hidden size kept after pruning) is required");
    }
    if (o.target_hidden() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("hsm.target_hidden must be positive, got ", o.target_hidden()));
    }
    if (o.bottleneck() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("hsm.bottleneck must be positive, got ", o.bottleneck()));
    }
    if (o.global_step() <= 1) {
      return absl::InvalidArgumentError(absl::StrCat("hsm.global_step must be greater than 1, got ", o.global_step()));
    }
    return absl::OkStatus();
  };
  m.make_stream = [](const proto::AdapterConfig& c, models::CausalLm& lm,
                     uint64_t seed) -> absl::StatusOr<std::shared_ptr<StreamAdapter>> {
    if (lm.config().arch != models::Architecture::kLlama) {
      return absl::UnimplementedError(
          absl::StrCat("hsm (PAT) supports LLaMA models only, not ", lm.config().model_type()));
    }
    const int64_t h = lm.config().hidden_size();
    if (c.hsm().target_hidden() > h) {
      return absl::InvalidArgumentError(
          absl::StrCat("hsm.target_hidden = ", c.hsm().target_hidden(), " exceeds the model's hidden size ", h));
    }
    return std::make_shared<HsmAdapterImpl>(c.hsm(), h, lm.config().num_layers(), seed);
  };
  m.mergeable = false;
  m.config_json = [](const proto::AdapterConfig& c, bool) {
    const proto::HsmOptions& o = c.hsm();
    nlohmann::json j;
    // The official train-args names where they exist.
    j["dimdown_dim"] = o.target_hidden();
    j["eff"] = o.bottleneck();
    j["global_step"] = o.global_step();
    j["trainable_mask"] = true;
    j["identity_loss"] = o.identity_loss();
    j["pat_il_mode"] = o.official_last_layer_only() ? "official_last_layer_only" : "all";
    return j.dump();
  };
  return m;
}

}  // namespace peft
