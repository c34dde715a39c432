#include "peft/sorsa/sorsa.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace peft {

double sorsa_scaling(const proto::SorsaOptions& o) {
  return o.has_alpha() ? o.alpha() / static_cast<double>(o.r()) : 1.0;
}

SorsaLinearImpl::SorsaLinearImpl(const proto::SorsaOptions& o, at::Tensor& weight)
    : options(o), scaling(sorsa_scaling(o)) {
  const int64_t out = weight.size(0), in = weight.size(1), r = o.r();
  TORCH_CHECK(r > 0 && r <= std::min(out, in), "SORSA: rank r = ", r, " must be in [1, min(", out, ", ", in, ")]");
  torch::NoGradGuard no_grad;
  // SVD in fp32 whatever the weight's dtype (the official code means to).
  const at::Tensor w = weight.detach().to(at::kFloat);
  auto [u, sv, vh] = at::linalg_svd(w, /*full_matrices=*/false);
  sorsa_B = register_parameter("sorsa_B", u.narrow(1, 0, r).contiguous());
  sorsa_S = register_parameter("sorsa_S", sv.narrow(0, 0, r).contiguous());
  sorsa_A = register_parameter("sorsa_A", vh.narrow(0, 0, r).contiguous());
  weight.copy_(w - delta_weight());
}

at::Tensor SorsaLinearImpl::forward_delta(const at::Tensor& x, const at::Tensor& /*weight*/) {
  at::Tensor h = x.to(sorsa_A.scalar_type());
  if (options.dropout() > 0 && is_training()) h = at::dropout(h, options.dropout(), /*train=*/true);
  const at::Tensor z = at::linear(h, sorsa_A) * sorsa_S;  // [..., r]
  return (at::linear(z, sorsa_B) * scaling).to(x.scalar_type());
}

at::Tensor SorsaLinearImpl::forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias) + forward_delta(x, weight);
}

at::Tensor SorsaLinearImpl::delta_weight() const {
  const at::Tensor b = sorsa_B.to(at::kFloat) * sorsa_S.to(at::kFloat).unsqueeze(0);  // [out, r]
  return at::matmul(b, sorsa_A.to(at::kFloat)) * scaling;
}

at::Tensor SorsaLinearImpl::merged_weight(const at::Tensor& weight) const { return weight + delta_weight(); }

at::Tensor SorsaLinearImpl::unmerged_weight(const at::Tensor& merged) const { return merged - delta_weight(); }

at::Tensor SorsaLinearImpl::orthonormality() const {
  const int64_t r = sorsa_A.size(0);
  const at::Tensor eye = at::eye(r, sorsa_A.options());
  const at::Tensor ga = at::matmul(sorsa_A, sorsa_A.t()) - eye;  // V_pᵀV_p − I [r, r]
  const at::Tensor gb = at::matmul(sorsa_B.t(), sorsa_B) - eye;  // U_pᵀU_p − I [r, r]
  if (options.squared_norm()) return (ga.pow(2).sum() + gb.pow(2).sum()) / 2.0;
  // linalg_matrix_norm's backward is 0 (not NaN) at an exactly zero argument.
  return (at::linalg_matrix_norm(ga, "fro") + at::linalg_matrix_norm(gb, "fro")) / 2.0;
}

at::Tensor SorsaLinearImpl::regularizer() {
  if (options.gamma() == 0) return {};
  return orthonormality() * static_cast<double>(options.gamma());
}

std::vector<AdapterTensor> SorsaLinearImpl::state() {
  return {{"sorsa_A", sorsa_A}, {"sorsa_B", sorsa_B}, {"sorsa_S", sorsa_S}};
}

AdapterMethod sorsa_method() {
  AdapterMethod m;
  m.name = "sorsa";
  m.method_case = proto::AdapterConfig::kSorsa;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("SORSA"); };
  m.accepted_peft_types = {"SORSA"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::SorsaOptions& o = c.sorsa();
    if (o.r() <= 0) return absl::InvalidArgumentError(absl::StrCat("sorsa.r must be positive, got ", o.r()));
    if (o.has_alpha() && !(o.alpha() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("sorsa.alpha must be positive when set, got ", o.alpha()));
    }
    if (!(o.dropout() >= 0 && o.dropout() < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("sorsa.dropout must be in [0, 1), got ", o.dropout()));
    }
    if (!(o.gamma() >= 0) || std::isinf(o.gamma())) {
      return absl::InvalidArgumentError(absl::StrCat("sorsa.gamma must be finite and >= 0, got ", o.gamma()));
    }
    return absl::OkStatus();
  };
  m.check_target = [](const proto::AdapterConfig& c, const LinearTarget& t) -> absl::Status {
    const int64_t out = t.linear->options.out_features, in = t.linear->options.in_features;
    if (c.sorsa().r() > std::min(out, in)) {
      return absl::InvalidArgumentError(absl::StrCat("sorsa.r = ", c.sorsa().r(), " is larger than the dimension of ",
                                                     t.path, " [", out, ", ", in, "]"));
    }
    if (!t.linear->options.owns_weight) {
      // The residual would be written into the tied embedding as well.
      return absl::InvalidArgumentError(
          absl::StrCat("sorsa cannot target ", t.path, ": its weight is tied to the embedding"));
    }
    return absl::OkStatus();
  };
  m.rewrites_base = [](const proto::AdapterConfig&) { return true; };  // the residual W - s U S Vᵀ
  m.make_linear = [](const proto::AdapterConfig& c, const LinearTarget& t,
                     uint64_t /*seed*/) -> absl::StatusOr<std::shared_ptr<LinearAdapter>> {
    return std::make_shared<SorsaLinearImpl>(c.sorsa(), t.linear->weight);
  };
  m.config_json = [](const proto::AdapterConfig& c, bool /*fan_in_fan_out*/) {
    const proto::SorsaOptions& o = c.sorsa();
    nlohmann::json j;
    j["r"] = o.r();
    j["alpha"] = o.has_alpha() ? nlohmann::json(o.alpha()) : nlohmann::json(nullptr);
    j["dropout"] = o.dropout();
    j["gamma"] = o.gamma();
    j["reg_mode"] = o.reg_mode() == proto::SorsaOptions::DECOUPLED ? "decoupled" : "official";
    j["squared_norm"] = o.squared_norm();
    return j.dump();
  };
  m.trainable_count = [](const proto::AdapterConfig& c, int64_t out, int64_t in) {
    return int64_t{c.sorsa().r()} * (in + out + 1);
  };
  return m;
}

}  // namespace peft
