#include "peft/adaptable_linear.h"

#include <ATen/ATen.h>

namespace peft {

AdaptableLinearImpl::AdaptableLinearImpl(const AdaptableLinearOptions& opts) : options(opts) {
  TORCH_CHECK(opts.in_features > 0 && opts.out_features > 0, "AdaptableLinear: bad shape [", opts.out_features, ", ",
              opts.in_features, "]");
  if (opts.owns_weight) {
    weight = register_parameter("weight", at::empty({opts.out_features, opts.in_features}));
  }
  if (opts.bias) bias = register_parameter("bias", at::zeros({opts.out_features}));
}

at::Tensor AdaptableLinearImpl::forward(const at::Tensor& x) {
  if (override_forward) return override_forward->forward(x, weight, bias);
  return base_forward(x);
}

at::Tensor AdaptableLinearImpl::base_forward(const at::Tensor& x) const {
  TORCH_CHECK(weight.defined(), "AdaptableLinear: tied weight was never set");
  TORCH_CHECK(x.size(-1) == options.in_features, "AdaptableLinear: input has ", x.size(-1), " features, expected ",
              options.in_features);
  return at::linear(x, weight, bias);
}

void AdaptableLinearImpl::tie_weight_(const at::Tensor& w) {
  TORCH_CHECK(!options.owns_weight, "AdaptableLinear: tie_weight_ on a module that owns its weight");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == options.out_features && w.size(1) == options.in_features,
              "AdaptableLinear: tied weight has shape ", w.sizes(), ", expected [", options.out_features, ", ",
              options.in_features, "]");
  weight = w;
}

}  // namespace peft
