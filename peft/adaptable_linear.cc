#include "peft/adaptable_linear.h"

#include <algorithm>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "peft/core/autocast.h"

namespace peft {
namespace {

// x Wᵀ + b for a frozen W stored narrower than x (a bf16 base under a
// float32 stream, no autocast): W is widened for the product and dropped,
// and backward keeps only W itself (stored dtype) and widens it again, so
// that a step holds one layer's wide copy at a time, never all of them.
struct WidenedLinear : public torch::autograd::Function<WidenedLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w) {
    ctx->save_for_backward({w});
    return at::linear(x, w.to(x.scalar_type()));
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor w = ctx->get_saved_variables()[0];
    const at::Tensor& g = grads[0];
    return {at::matmul(g, w.to(g.scalar_type())), at::Tensor()};
  }
};

// Whether x·Wᵀ needs W widened first: W is stored narrower than x and no
// autocast casts the two to one dtype.
bool needs_widening(const at::Tensor& x, const at::Tensor& w) {
  return w.defined() && w.scalar_type() != x.scalar_type() && at::isFloatingType(w.scalar_type()) &&
         c10::elementSize(w.scalar_type()) < c10::elementSize(x.scalar_type()) && !autocast_dtype_for(x).has_value();
}

}  // namespace

AdaptableLinearImpl::AdaptableLinearImpl(const AdaptableLinearOptions& opts) : options(opts) {
  TORCH_CHECK(opts.in_features > 0 && opts.out_features > 0, "AdaptableLinear: bad shape [", opts.out_features, ", ",
              opts.in_features, "]");
  if (opts.owns_weight) {
    weight = register_parameter("weight", at::empty({opts.out_features, opts.in_features}));
  }
  if (opts.bias) bias = register_parameter("bias", at::zeros({opts.out_features}));
}

at::Tensor AdaptableLinearImpl::forward(const at::Tensor& x) {
  // Adapters that are active and not merged.
  LinearAdapter* single = nullptr;
  int live = 0;
  for (const auto& [name, scale] : active_) {
    if (is_merged(name)) continue;
    ++live;
    if (scale == 1.0) single = adapter(name);
  }
  if (live == 0) return base_forward(x);
  // Additive adapters only add a term to x Wᵀ, so they may see the compute
  // copy; the others transform W itself and get the master weight (widened
  // to float32 when the base is stored narrower: they compute with it).
  const bool widen = needs_widening(x, weight);
  auto master = [&] { return widen ? weight.to(at::kFloat) : weight; };
  if (live == 1 && single != nullptr) {
    if (!single->additive()) return single->forward(x, master(), bias);
    if (!widen) return single->forward(x, compute_weight(), bias);
  }
  at::Tensor y = base_forward(x);
  for (const auto& [name, scale] : active_) {
    if (is_merged(name)) continue;
    LinearAdapter* a = adapter(name);
    at::Tensor d = a->forward_delta(x, a->additive() ? compute_weight() : master());
    y = scale == 1.0 ? y + d : y + d * scale;
  }
  return y;
}

at::Tensor AdaptableLinearImpl::base_forward(const at::Tensor& x) const {
  TORCH_CHECK(weight.defined(), "AdaptableLinear: tied weight was never set");
  TORCH_CHECK(x.size(-1) == options.in_features, "AdaptableLinear: input has ", x.size(-1), " features, expected ",
              options.in_features);
  const at::Tensor w = compute_weight();
  if (needs_widening(x, w)) {
    TORCH_CHECK(!w.requires_grad(), "AdaptableLinear: a ", c10::toString(w.scalar_type()),
                " weight is trained under a ", c10::toString(x.scalar_type()),
                " stream; a trainable base must be stored in float32");
    const at::Tensor y = WidenedLinear::apply(x, w);
    return bias.defined() ? y + bias.to(y.scalar_type()) : y;
  }
  return at::linear(x, w, bias);
}

at::Tensor AdaptableLinearImpl::compute_weight() const {
  if (!weight.defined() || weight.requires_grad() || !at::isFloatingType(weight.scalar_type())) return weight;
  const std::optional<at::ScalarType> ac = autocast_dtype_for(weight);
  if (!ac) return weight;
  const at::ScalarType dtype = *ac;
  if (c10::elementSize(weight.scalar_type()) <= c10::elementSize(dtype)) return weight;
  if (!compute_cache_.defined() || cache_source_ != weight.data_ptr() || cache_version_ != weight._version() ||
      compute_cache_.scalar_type() != dtype) {
    torch::NoGradGuard no_grad;
    compute_cache_ = weight.to(dtype);
    cache_source_ = weight.data_ptr();
    cache_version_ = weight._version();
  }
  return compute_cache_;
}

at::Tensor AdaptableLinearImpl::plain_weight() const {
  if (bias.defined()) return at::Tensor();
  for (const auto& a : active_) {
    if (!is_merged(a.first)) return at::Tensor();
  }
  return compute_weight();
}

bool AdaptableLinearImpl::is_merged(const std::string& name) const {
  return std::any_of(merged_.begin(), merged_.end(), [&](const auto& m) { return m.first == name; });
}

void AdaptableLinearImpl::tie_weight_(const at::Tensor& w) {
  TORCH_CHECK(!options.owns_weight, "AdaptableLinear: tie_weight_ on a module that owns its weight");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == options.out_features && w.size(1) == options.in_features,
              "AdaptableLinear: tied weight has shape ", w.sizes(), ", expected [", options.out_features, ", ",
              options.in_features, "]");
  weight = w;
}

void AdaptableLinearImpl::add_adapter(const std::string& name, std::shared_ptr<LinearAdapter> a) {
  TORCH_CHECK(adapter(name) == nullptr, "adapter '", name, "' already exists on this module");
  // Adapters are built on the CPU in fp32; they follow the base weight's
  // device but keep fp32 (master weights), whatever the base dtype.
  const std::vector<at::Tensor> params = a->module()->parameters();
  if (weight.defined() && !params.empty() && params.front().device() != weight.device()) {
    a->module()->to(weight.device());
  }
  register_module(name, a->module());
  adapters_.emplace_back(name, std::move(a));
}

void AdaptableLinearImpl::remove_adapter_(const std::string& name) {
  while (std::any_of(merged_.begin(), merged_.end(), [&](const auto& m) { return m.first == name; })) {
    unmerge_last_();
  }
  active_.erase(std::remove_if(active_.begin(), active_.end(), [&](const auto& a) { return a.first == name; }),
                active_.end());
  auto it = std::find_if(adapters_.begin(), adapters_.end(), [&](const auto& a) { return a.first == name; });
  if (it == adapters_.end()) return;
  unregister_module(name);
  adapters_.erase(it);
}

void AdaptableLinearImpl::forget_adapters_() {
  for (const auto& entry : adapters_) unregister_module(entry.first);
  adapters_.clear();
  active_.clear();
  merged_.clear();
}

LinearAdapter* AdaptableLinearImpl::adapter(const std::string& name) const {
  for (const auto& [n, a] : adapters_) {
    if (n == name) return a.get();
  }
  return nullptr;
}

std::vector<std::string> AdaptableLinearImpl::adapter_names() const {
  std::vector<std::string> out;
  for (const auto& entry : adapters_) out.push_back(entry.first);
  return out;
}

void AdaptableLinearImpl::set_active(std::vector<std::pair<std::string, double>> active) {
  for (const auto& a : active) TORCH_CHECK(adapter(a.first) != nullptr, "no adapter '", a.first, "' on this module");
  active_ = std::move(active);
}

void AdaptableLinearImpl::merge_(const std::string& name, double scale) {
  LinearAdapter* a = adapter(name);
  TORCH_CHECK(a != nullptr, "no adapter '", name, "' on this module");
  TORCH_CHECK(options.owns_weight, "cannot merge into lm_head: its weight is tied to the embedding");
  torch::NoGradGuard no_grad;
  const at::Tensor w32 = weight.to(at::kFloat);
  at::Tensor merged = a->merged_weight(w32);
  if (scale != 1.0) merged = w32 + (merged - w32) * scale;
  TORCH_CHECK(merged.isfinite().all().item<bool>(), "merging adapter '", name, "' produced non-finite weights");
  weight.copy_(merged);  // one cast to the weight's dtype
  merged_.emplace_back(name, scale);
}

void AdaptableLinearImpl::unmerge_last_() {
  TORCH_CHECK(!merged_.empty(), "nothing is merged");
  const auto [name, scale] = merged_.back();
  LinearAdapter* a = adapter(name);
  torch::NoGradGuard no_grad;
  const at::Tensor w32 = weight.to(at::kFloat);
  at::Tensor base;
  if (scale == 1.0) {
    base = a->unmerged_weight(w32);
  } else {
    TORCH_CHECK(a->additive(), "adapter '", name, "' was merged with a weight and cannot be unmerged");
    base = w32 - (a->merged_weight(w32) - w32) * scale;
  }
  weight.copy_(base);
  merged_.pop_back();
}

}  // namespace peft
