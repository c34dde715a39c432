#include "kernels/causal_softmax.h"

#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/row_math.h"

namespace peft::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// One row: p[lo..len) = softmax(scale·x[lo..len)), 0 elsewhere in [0, s).
// `buf` holds s floats of scratch.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void softmax_row(const T* x, T* p, float* buf, int64_t lo,
                                                                              int64_t len, int64_t s, float scale) {
  for (int64_t j = 0; j < lo; ++j) p[j] = row_math::from_float<T>(0.0f);
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = lo; j < len; ++j) {
    buf[j] = row_math::to_float(x[j]) * scale;
    mx = buf[j] > mx ? buf[j] : mx;
  }
  float sum = 0;
  for (int64_t j = lo; j < len; ++j) {
    buf[j] = row_math::exp_approx(buf[j] - mx);
    sum += buf[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = lo; j < len; ++j) p[j] = row_math::from_float<T>(buf[j] * inv);
  for (int64_t j = len; j < s; ++j) p[j] = row_math::from_float<T>(0.0f);
}

template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void softmax_row_backward(const T* p, const T* g, T* dx,
                                                                                       int64_t lo, int64_t len,
                                                                                       int64_t s, float scale) {
  for (int64_t j = 0; j < lo; ++j) dx[j] = row_math::from_float<T>(0.0f);
  float dot = 0;
  for (int64_t j = lo; j < len; ++j) dot += row_math::to_float(g[j]) * row_math::to_float(p[j]);
  for (int64_t j = lo; j < len; ++j) {
    dx[j] = row_math::from_float<T>(scale * row_math::to_float(p[j]) * (row_math::to_float(g[j]) - dot));
  }
  for (int64_t j = len; j < s; ++j) dx[j] = row_math::from_float<T>(0.0f);
}

// The keys row r of [.., R, S] sees: [lo, len) with its query at absolute
// position q = S - T + (r mod R) mod T, len = q + 1 and, with a window W > 0,
// lo = max(0, q - W + 1) (keys j with q - W < j <= q).
struct RowKeys {
  int64_t lo, len;
};
inline RowKeys row_keys(int64_t r, int64_t rows_per_matrix, int64_t s, int64_t t, int64_t window) {
  const int64_t q = s - t + (r % rows_per_matrix) % t;
  return {window > 0 && q - window + 1 > 0 ? q - window + 1 : 0, q + 1};
}

template <typename T>
void forward_rows(const at::Tensor& x, at::Tensor& p, int64_t t, int64_t window, float scale) {
  const int64_t s = x.size(-1), rows = x.numel() / s;
  const T* xp = x.data_ptr<T>();
  T* pp = p.data_ptr<T>();
  at::parallel_for(0, rows, 64, [&](int64_t b, int64_t e) {
    std::vector<float> buf(s);
    for (int64_t r = b; r < e; ++r) {
      const RowKeys k = row_keys(r, x.size(-2), s, t, window);
      softmax_row(xp + r * s, pp + r * s, buf.data(), k.lo, k.len, s, scale);
    }
  });
}

template <typename T>
void backward_rows(const at::Tensor& p, const at::Tensor& g, at::Tensor& dx, int64_t t, int64_t window, float scale) {
  const int64_t s = p.size(-1), rows = p.numel() / s;
  const T* pp = p.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  T* dp = dx.data_ptr<T>();
  at::parallel_for(0, rows, 64, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const RowKeys k = row_keys(r, p.size(-2), s, t, window);
      softmax_row_backward(pp + r * s, gp + r * s, dp + r * s, k.lo, k.len, s, scale);
    }
  });
}

class CausalSoftmaxFunction : public torch::autograd::Function<CausalSoftmaxFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, double scale, int64_t t, int64_t window) {
    at::Tensor p = at::empty_like(x);
    if (x.scalar_type() == at::kBFloat16) {
      forward_rows<c10::BFloat16>(x, p, t, window, static_cast<float>(scale));
    } else {
      forward_rows<float>(x, p, t, window, static_cast<float>(scale));
    }
    ctx->save_for_backward({p});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["t"] = t;
    ctx->saved_data["window"] = window;
    return p;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor p = ctx->get_saved_variables()[0];
    const at::Tensor g = grads[0].to(p.scalar_type()).contiguous();
    const float scale = static_cast<float>(ctx->saved_data["scale"].toDouble());
    const int64_t t = ctx->saved_data["t"].toInt();
    const int64_t window = ctx->saved_data["window"].toInt();
    at::Tensor dx = at::empty_like(p);
    if (p.scalar_type() == at::kBFloat16) {
      backward_rows<c10::BFloat16>(p, g, dx, t, window, scale);
    } else {
      backward_rows<float>(p, g, dx, t, window, scale);
    }
    return {dx, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor causal_softmax(const at::Tensor& scores, double scale, int64_t queries, int64_t window) {
  TORCH_CHECK(scores.is_cpu() && (scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16),
              "causal_softmax: scores must be float32 or bfloat16 on the CPU, got ", scores.scalar_type());
  TORCH_CHECK(scores.dim() >= 2 && queries > 0 && scores.size(-2) % queries == 0 && queries <= scores.size(-1),
              "causal_softmax: scores [..., R, S] = ", scores.sizes(), " need R a multiple of ", queries,
              " queries and at least as many keys");
  TORCH_CHECK(window >= 0, "causal_softmax: window must be >= 0 (0 = none), got ", window);
  return CausalSoftmaxFunction::apply(scores.contiguous(), scale, queries, window);
}

at::Tensor causal_softmax_ref(const at::Tensor& scores, double scale, int64_t queries, int64_t window) {
  const int64_t r = scores.size(-2), s = scores.size(-1), t = queries;
  const at::Tensor qpos = at::arange(s - t, s, at::kLong).repeat({r / t});  // [R]
  const at::Tensor kpos = at::arange(s, at::kLong);
  at::Tensor masked = kpos.unsqueeze(0) > qpos.unsqueeze(1);  // [R, S]
  if (window > 0) masked = masked | (kpos.unsqueeze(0) <= qpos.unsqueeze(1) - window);
  const at::Tensor x = (scores * scale).masked_fill(masked, -std::numeric_limits<float>::infinity());
  return at::softmax(x, -1, at::kFloat).to(scores.scalar_type());
}

}  // namespace peft::kernels
