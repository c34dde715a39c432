#include "peft/nora/nora.h"

#include <algorithm>
#include <cmath>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace peft {

double nora_scaling(const proto::NoraOptions& o) {
  const double alpha = o.has_alpha() ? o.alpha() : static_cast<double>(o.r_inner());
  return alpha / static_cast<double>(o.scale_by_outer() ? o.r() : o.r_inner());
}

NoraLinearImpl::NoraLinearImpl(const proto::NoraOptions& o, const at::Tensor& weight, uint64_t seed)
    : options(o), scaling(nora_scaling(o)) {
  const int64_t out = weight.size(0), in = weight.size(1), r = o.r(), ri = o.r_inner();
  TORCH_CHECK(r > 0 && r <= std::min(out, in), "NoRA: outer rank r = ", r, " must be in [1, min(", out, ", ", in, ")]");
  TORCH_CHECK(ri > 0 && ri <= r, "NoRA: inner rank r_inner = ", ri, " must be in [1, r = ", r, "]");
  TORCH_CHECK(o.svd_mode() == proto::NoraOptions::PLAIN, "NoRA: only svd_mode PLAIN is implemented");
  torch::NoGradGuard no_grad;
  // W = U Σ Vᵀ in fp32 whatever the weight's dtype (docs/methods.md §1).
  auto [u, sv, vh] = at::linalg_svd(weight.detach().to(at::kFloat), /*full_matrices=*/false);
  const at::Tensor ur = u.narrow(1, 0, r);   // [out, r]
  const at::Tensor sr = sv.narrow(0, 0, r);  // [r]
  const at::Tensor vr = vh.narrow(0, 0, r);  // [r, in]
  at::Tensor a_outer, b_outer;
  switch (o.sigma_side()) {
    case proto::NoraOptions::SIGMA_A:
      b_outer = ur;
      a_outer = sr.unsqueeze(1) * vr;
      break;
    case proto::NoraOptions::SIGMA_B:
      b_outer = ur * sr.unsqueeze(0);
      a_outer = vr;
      break;
    case proto::NoraOptions::SIGMA_SQRT: {
      const at::Tensor sq = sr.sqrt();
      b_outer = ur * sq.unsqueeze(0);
      a_outer = sq.unsqueeze(1) * vr;
      break;
    }
    default: TORCH_CHECK(false, "NoRA: unknown sigma_side ", static_cast<int>(o.sigma_side()));
  }

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  // kaiming_uniform(a=√5) on a [fan_out, fan_in] matrix is U(±1/√fan_in).
  at::Tensor a_inner = at::empty({ri, r}).uniform_(-1.0 / std::sqrt(static_cast<double>(r)),
                                                   1.0 / std::sqrt(static_cast<double>(r)), gen);
  at::Tensor b_inner = at::zeros({r, ri});
  switch (o.inner_init()) {
    case proto::NoraOptions::ZERO_B: break;
    case proto::NoraOptions::RANDN:
      a_inner.normal_(0.0, 1.0, gen);
      b_inner.normal_(0.0, 1.0, gen);
      break;
    case proto::NoraOptions::KAIMING:
      b_inner.uniform_(-1.0 / std::sqrt(static_cast<double>(ri)), 1.0 / std::sqrt(static_cast<double>(ri)), gen);
      break;
    default: TORCH_CHECK(false, "NoRA: unknown inner_init ", static_cast<int>(o.inner_init()));
  }

  nora_A_outer = register_buffer("nora_A_outer", a_outer.contiguous());
  nora_B_outer = register_buffer("nora_B_outer", b_outer.contiguous());
  nora_A = register_parameter("nora_A", a_inner);
  nora_B = register_parameter("nora_B", b_inner);
  if (o.inner_init() != proto::NoraOptions::ZERO_B && !o.keep_base()) {
    nora_M_init = register_buffer("nora_M_init", at::matmul(b_inner, a_inner));
  }
}

at::Tensor NoraLinearImpl::forward_delta(const at::Tensor& x, const at::Tensor& /*weight*/) {
  at::Tensor h = x.to(nora_A.scalar_type());
  if (options.dropout() > 0 && is_training()) h = at::dropout(h, options.dropout(), /*train=*/true);
  const at::Tensor u = at::linear(h, nora_A_outer);          // [..., r]
  at::Tensor v = at::linear(at::linear(u, nora_A), nora_B);  // [..., r]
  if (nora_M_init.defined()) v = v - at::linear(u, nora_M_init);
  return (at::linear(v, nora_B_outer) * scaling).to(x.scalar_type());
}

at::Tensor NoraLinearImpl::forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias) + forward_delta(x, weight);
}

at::Tensor NoraLinearImpl::delta_weight() const {
  at::Tensor inner = at::matmul(nora_B.to(at::kFloat), nora_A.to(at::kFloat));  // [r, r]
  if (nora_M_init.defined()) inner = inner - nora_M_init.to(at::kFloat);
  return at::matmul(nora_B_outer.to(at::kFloat), at::matmul(inner, nora_A_outer.to(at::kFloat))) * scaling;
}

at::Tensor NoraLinearImpl::merged_weight(const at::Tensor& weight) const { return weight + delta_weight(); }

at::Tensor NoraLinearImpl::unmerged_weight(const at::Tensor& merged) const { return merged - delta_weight(); }

std::vector<AdapterTensor> NoraLinearImpl::state() {
  std::vector<AdapterTensor> s = {
      {"nora_A_outer", nora_A_outer}, {"nora_B_outer", nora_B_outer}, {"nora_A", nora_A}, {"nora_B", nora_B}};
  if (nora_M_init.defined()) s.push_back({"nora_M_init", nora_M_init});
  return s;
}

namespace {

const char* svd_mode_name(proto::NoraOptions::SvdMode m) {
  return m == proto::NoraOptions::ACTIVATION_AWARE ? "activation_aware" : "plain";
}

const char* sigma_side_name(proto::NoraOptions::SigmaSide s) {
  switch (s) {
    case proto::NoraOptions::SIGMA_B: return "B";
    case proto::NoraOptions::SIGMA_SQRT: return "sqrt";
    default: return "A";
  }
}

const char* inner_init_name(proto::NoraOptions::InnerInit i) {
  switch (i) {
    case proto::NoraOptions::RANDN: return "randn";
    case proto::NoraOptions::KAIMING: return "kaiming";
    default: return "zero_B";
  }
}

}  // namespace

AdapterMethod nora_method() {
  AdapterMethod m;
  m.name = "nora";
  m.method_case = proto::AdapterConfig::kNora;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("NORA"); };
  m.accepted_peft_types = {"NORA"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::NoraOptions& o = c.nora();
    if (o.r() <= 0) return absl::InvalidArgumentError(absl::StrCat("nora.r must be positive, got ", o.r()));
    if (o.r_inner() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("nora.r_inner must be positive, got ", o.r_inner()));
    }
    if (o.r_inner() > o.r()) {
      return absl::InvalidArgumentError(
          absl::StrCat("nora.r_inner = ", o.r_inner(), " must not exceed the outer rank nora.r = ", o.r()));
    }
    if (o.has_alpha() && !(o.alpha() > 0)) {
      return absl::InvalidArgumentError(absl::StrCat("nora.alpha must be positive, got ", o.alpha()));
    }
    if (!(o.dropout() >= 0 && o.dropout() < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("nora.dropout must be in [0, 1), got ", o.dropout()));
    }
    return absl::OkStatus();
  };
  m.check_target = [](const proto::AdapterConfig& c, const LinearTarget& t) -> absl::Status {
    const int64_t out = t.linear->options.out_features, in = t.linear->options.in_features;
    if (c.nora().r() > std::min(out, in)) {
      return absl::InvalidArgumentError(absl::StrCat("nora.r = ", c.nora().r(), " is larger than the dimension of ",
                                                     t.path, " [", out, ", ", in, "]"));
    }
    return absl::OkStatus();
  };
  m.make_linear = [](const proto::AdapterConfig& c, const LinearTarget& t,
                     uint64_t seed) -> absl::StatusOr<std::shared_ptr<LinearAdapter>> {
    if (c.nora().svd_mode() == proto::NoraOptions::ACTIVATION_AWARE) {
      return absl::UnimplementedError(
          absl::StrCat("nora.svd_mode = ACTIVATION_AWARE needs calibration activations for ", t.path,
                       ", which peft-cpp does not collect yet; use svd_mode PLAIN"));
    }
    return std::make_shared<NoraLinearImpl>(c.nora(), t.linear->weight, seed);
  };
  m.config_json = [](const proto::AdapterConfig& c, bool /*fan_in_fan_out*/) {
    const proto::NoraOptions& o = c.nora();
    nlohmann::json j;
    j["r"] = o.r();
    j["r_inner"] = o.r_inner();
    j["alpha"] = o.has_alpha() ? o.alpha() : static_cast<float>(o.r_inner());
    j["scale_by_outer"] = o.scale_by_outer();
    j["svd_mode"] = svd_mode_name(o.svd_mode());
    if (o.svd_mode() == proto::NoraOptions::ACTIVATION_AWARE) j["asvd_exponent"] = o.asvd_exponent();
    j["sigma_side"] = sigma_side_name(o.sigma_side());
    j["inner_init"] = inner_init_name(o.inner_init());
    j["keep_base"] = o.keep_base();
    j["dropout"] = o.dropout();
    return j.dump();
  };
  m.trainable_count = [](const proto::AdapterConfig& c, int64_t /*out*/, int64_t /*in*/) {
    return int64_t{2} * c.nora().r() * c.nora().r_inner();
  };
  return m;
}

}  // namespace peft
