#include "peft/compacter/compacter.h"

#include <cmath>
#include <string>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/nn/modules/container/modulelist.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"

namespace peft {

CompacterBottleneckImpl::CompacterBottleneckImpl(int64_t d, int64_t k, int64_t rank, bool reference_kernel,
                                                 const at::Tensor& rule, at::Generator& gen) {
  down = register_module("down", PhmLinear(PhmLinearOptions{d, k, rank, reference_kernel}, rule, gen));
  up = register_module("up", PhmLinear(PhmLinearOptions{k, d, rank, reference_kernel}, rule, gen));
}

at::Tensor CompacterBottleneckImpl::forward(const at::Tensor& h) {
  const at::Tensor x = h.to(up->W_left.scalar_type());
  // gelu_new = GELU with the tanh approximation.
  return (x + up->forward(at::gelu(down->forward(x), "tanh"))).to(h.scalar_type());
}

CompacterAdapterImpl::CompacterAdapterImpl(const proto::CompacterOptions& o, int64_t d_, int64_t num_layers,
                                           uint64_t seed)
    : options(o), d(d_), k(o.reduction_factor() > 0 ? d_ / o.reduction_factor() : 0) {
  const int64_t n = o.phm_dim();
  TORCH_CHECK(n > 0 && k > 0, "Compacter: bottleneck k = d / reduction_factor = ", d, " / ", o.reduction_factor(),
              " must be at least 1");
  TORCH_CHECK(d % n == 0 && k % n == 0, "Compacter: phm_dim ", n, " must divide the model width ", d,
              " and the bottleneck ", k);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  {
    torch::NoGradGuard no_grad;
    phm_rule = register_parameter("phm_rule", at::empty({n, n, n}).normal_(0.0, o.phm_init_range(), gen));
  }
  const bool ref = o.kernel() == proto::CompacterOptions::REFERENCE;
  auto layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < num_layers; ++l) {
    auto block = std::make_shared<torch::nn::Module>();
    if (!o.plus_plus()) {
      attn.push_back(block->register_module("attn", CompacterBottleneck(d, k, o.phm_rank(), ref, phm_rule, gen)));
    }
    mlp.push_back(block->register_module("mlp", CompacterBottleneck(d, k, o.phm_rank(), ref, phm_rule, gen)));
    layers->push_back(block);
  }
}

at::Tensor CompacterAdapterImpl::forward(HookPoint point, int64_t layer, const at::Tensor& h) {
  switch (point) {
    case HookPoint::kEmbedding: return h;
    case HookPoint::kAttentionOutput:
      if (attn.empty()) return h;
      TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(attn.size()), "Compacter: no adapter for block ", layer);
      return attn[layer]->forward(h);
    case HookPoint::kMlpOutput:
      TORCH_CHECK(layer >= 0 && layer < static_cast<int64_t>(mlp.size()), "Compacter: no adapter for block ", layer);
      return mlp[layer]->forward(h);
  }
  return h;
}

std::vector<AdapterTensor> CompacterAdapterImpl::state() {
  std::vector<AdapterTensor> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) out.push_back({"compacter." + item.key(), item.value()});
  return out;
}

std::vector<PhmLinearImpl*> CompacterAdapterImpl::phm_layers() {
  std::vector<PhmLinearImpl*> out;
  for (size_t l = 0; l < mlp.size(); ++l) {
    if (!attn.empty()) {
      out.push_back(attn[l]->down.get());
      out.push_back(attn[l]->up.get());
    }
    out.push_back(mlp[l]->down.get());
    out.push_back(mlp[l]->up.get());
  }
  return out;
}

namespace {

// The module a parameter belongs to ("model.layers.0.input_layernorm.weight"
// -> "input_layernorm").
std::string owner_module(const std::string& param) {
  const size_t last = param.rfind('.');
  if (last == std::string::npos) return "";
  const size_t prev = param.rfind('.', last - 1);
  return param.substr(prev == std::string::npos ? 0 : prev + 1, last - (prev == std::string::npos ? 0 : prev + 1));
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

AdapterMethod compacter_method() {
  AdapterMethod m;
  m.name = "compacter";
  m.method_case = proto::AdapterConfig::kCompacter;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("COMPACTER"); };
  m.accepted_peft_types = {"COMPACTER"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::CompacterOptions& o = c.compacter();
    if (o.phm_dim() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("compacter.phm_dim must be positive, got ", o.phm_dim()));
    }
    if (o.reduction_factor() <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("compacter.reduction_factor must be positive, got ", o.reduction_factor()));
    }
    if (o.phm_rank() <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("compacter.phm_rank must be positive, got ", o.phm_rank()));
    }
    if (!(o.phm_init_range() > 0) || !std::isfinite(o.phm_init_range())) {
      return absl::InvalidArgumentError(
          absl::StrCat("compacter.phm_init_range must be positive, got ", o.phm_init_range()));
    }
    return absl::OkStatus();
  };
  m.make_stream = [](const proto::AdapterConfig& c, models::CausalLm& lm,
                     uint64_t seed) -> absl::StatusOr<std::shared_ptr<StreamAdapter>> {
    const proto::CompacterOptions& o = c.compacter();
    const int64_t d = lm.config().hidden_size(), n = o.phm_dim();
    const int64_t k = d / o.reduction_factor();
    if (k < 1) {
      return absl::InvalidArgumentError(absl::StrCat("compacter: bottleneck k = hidden_size / reduction_factor = ", d,
                                                     " / ", o.reduction_factor(), " is 0"));
    }
    if (d % n != 0 || k % n != 0) {
      return absl::InvalidArgumentError(absl::StrCat("compacter: phm_dim = ", n,
                                                     " must divide both the hidden size d = ", d,
                                                     " and the bottleneck k = d / reduction_factor = ", k));
    }
    return std::make_shared<CompacterAdapterImpl>(o, d, lm.config().num_layers(), seed);
  };
  m.mergeable = false;
  m.trains_base_param = [](const proto::AdapterConfig& c, const std::string& param, const std::vector<LinearTarget>&) {
    if (!c.compacter().unfreeze_layer_norms()) return false;
    const std::string owner = owner_module(param);
    // LLaMA: input_layernorm, post_attention_layernorm, model.norm;
    // GPT-2: ln_1, ln_2, ln_f (weight and bias).
    return owner == "norm" || ends_with(owner, "layernorm") || owner.rfind("ln_", 0) == 0;
  };
  m.config_json = [](const proto::AdapterConfig& c, bool) {
    const proto::CompacterOptions& o = c.compacter();
    nlohmann::json j;
    // AdapterHub CompacterConfig / CompacterPlusPlusConfig names.
    j["architecture"] = "bottleneck";
    j["variant"] = o.plus_plus() ? "compacter++" : "compacter";
    j["mh_adapter"] = !o.plus_plus();
    j["output_adapter"] = true;
    j["reduction_factor"] = o.reduction_factor();
    j["non_linearity"] = "gelu_new";
    j["phm_layer"] = true;
    j["phm_dim"] = o.phm_dim();
    j["phm_rank"] = o.phm_rank();
    j["factorized_phm_W"] = true;
    j["shared_phm_rule"] = true;
    j["learn_phm"] = true;
    j["phm_c_init"] = "normal";
    j["phm_init_range"] = o.phm_init_range();
    j["hypercomplex_nonlinearity"] = "glorot-uniform";
    j["phm_bias"] = true;
    j["unfreeze_layer_norms"] = o.unfreeze_layer_norms();
    return j.dump();
  };
  return m;
}

}  // namespace peft
