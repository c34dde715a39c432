#include "kernels/rms_norm.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/row_math.h"

namespace peft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One row: returns rstd and writes y = out(x·rstd·w). Built for AVX-512,
// AVX2 and a baseline; the loader picks one at run time.
template <typename Out>
__attribute__((target_clones("avx512f", "avx2", "default"))) float rms_row(const float* x, const float* w, Out* y,
                                                                           int64_t c, float eps) {
  float ss = 0;
  for (int64_t i = 0; i < c; ++i) ss += x[i] * x[i];
  const float rstd = 1.0f / std::sqrt(ss / static_cast<float>(c) + eps);
  for (int64_t i = 0; i < c; ++i) y[i] = row_math::from_float<Out>(x[i] * rstd * w[i]);
  return rstd;
}

// One row of the input gradient: dx = rstd·(g·w - x̂·mean(g·w·x̂)).
template <typename G>
__attribute__((target_clones("avx512f", "avx2", "default"))) void rms_row_backward(const float* x, const float* w,
                                                                                   const G* g, float rstd, float* dx,
                                                                                   int64_t c) {
  float dot = 0;
  for (int64_t i = 0; i < c; ++i) dot += row_math::to_float(g[i]) * w[i] * x[i];
  const float k = dot * rstd * rstd / static_cast<float>(c);
  for (int64_t i = 0; i < c; ++i) dx[i] = rstd * (row_math::to_float(g[i]) * w[i] - x[i] * k);
}

class RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w, double eps,
                            at::ScalarType out_dtype) {
    const int64_t c = x.size(-1), n = x.numel() / c;
    at::Tensor y = at::empty(x.sizes(), x.options().dtype(out_dtype));
    at::Tensor rstd = at::empty({n}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    float* rp = rstd.data_ptr<float>();
    const bool bf16 = out_dtype == at::kBFloat16;
    void* yp = y.data_ptr();
    at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        rp[r] = bf16 ? rms_row(xp + r * c, wp, static_cast<c10::BFloat16*>(yp) + r * c, c, static_cast<float>(eps))
                     : rms_row(xp + r * c, wp, static_cast<float*>(yp) + r * c, c, static_cast<float>(eps));
      }
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const at::Tensor& rstd = saved[2];
    const at::Tensor g = grads[0].contiguous();
    const int64_t c = x.size(-1), n = x.numel() / c;
    at::Tensor dx = at::empty_like(x);
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    float* dp = dx.data_ptr<float>();
    const bool bf16 = g.scalar_type() == at::kBFloat16;
    TORCH_CHECK(bf16 || g.scalar_type() == at::kFloat, "fused_rms_norm: gradient of dtype ", g.scalar_type());
    const void* gp = g.data_ptr();
    at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        if (bf16) {
          rms_row_backward(xp + r * c, wp, static_cast<const c10::BFloat16*>(gp) + r * c, rp[r], dp + r * c, c);
        } else {
          rms_row_backward(xp + r * c, wp, static_cast<const float*>(gp) + r * c, rp[r], dp + r * c, c);
        }
      }
    });
    at::Tensor dw;
    if (w.requires_grad()) {
      const at::Tensor xhat = x.view({n, c}) * rstd.unsqueeze(1);
      dw = (g.view({n, c}).to(at::kFloat) * xhat).sum(0);
    }
    return {dx, dw, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor fused_rms_norm(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  TORCH_CHECK(x.is_cpu() && x.scalar_type() == at::kFloat, "fused_rms_norm: x must be float32 on the CPU, got ",
              x.scalar_type(), " on ", x.device());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1) && w.scalar_type() == at::kFloat,
              "fused_rms_norm: w must be float32 [", x.size(-1), "], got ", w.scalar_type(), " ", w.sizes());
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kBFloat16, "fused_rms_norm: out_dtype ", out_dtype,
              " is not float32 or bfloat16");
  return RmsNormFunction::apply(x.contiguous(), w.contiguous(), eps, out_dtype);
}

at::Tensor rms_norm_ref(const at::Tensor& x, const at::Tensor& w, double eps, at::ScalarType out_dtype) {
  return (x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * w).to(out_dtype);
}

}  // namespace peft::kernels
