#include "peft/compacter/phm.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "kernels/kronecker.h"

namespace peft {
namespace {

// xavier_uniform_(gain = √2) on each 2-D slice [rows, cols]: U(±gain·√(6 / (rows + cols))).
void glorot_slices_(at::Tensor& w, at::Generator& gen) {
  const double bound = std::sqrt(2.0) * std::sqrt(6.0 / static_cast<double>(w.size(1) + w.size(2)));
  w.uniform_(-bound, bound, gen);
}

}  // namespace

PhmLinearImpl::PhmLinearImpl(const PhmLinearOptions& o, const at::Tensor& rule_, at::Generator& gen)
    : options(o), rule(rule_) {
  TORCH_CHECK(rule.dim() == 3, "PhmLinear: rule must be [n, n, n], got ", rule.sizes());
  const int64_t n = rule.size(0);
  TORCH_CHECK(o.in > 0 && o.out > 0 && o.rank > 0, "PhmLinear: bad options in=", o.in, " out=", o.out,
              " rank=", o.rank);
  TORCH_CHECK(o.in % n == 0 && o.out % n == 0, "PhmLinear: phm_dim n = ", n, " must divide in = ", o.in,
              " and out = ", o.out);
  torch::NoGradGuard no_grad;
  const auto opts = at::TensorOptions().dtype(rule.scalar_type());
  at::Tensor l = at::empty({n, o.in / n, o.rank}, opts);
  at::Tensor r = at::empty({n, o.rank, o.out / n}, opts);
  glorot_slices_(l, gen);
  glorot_slices_(r, gen);
  W_left = register_parameter("W_left", l);
  W_right = register_parameter("W_right", r);
  bias = register_parameter("bias", at::zeros({o.out}, opts));
}

at::Tensor PhmLinearImpl::forward(const at::Tensor& x) {
  return options.reference_kernel ? kernels::phm_linear_ref(x, rule, W_left, W_right, bias)
                                  : kernels::phm_linear(x, rule, W_left, W_right, bias);
}

at::Tensor PhmLinearImpl::dense_weight() const { return kernels::phm_weight(rule, W_left, W_right); }

}  // namespace peft
