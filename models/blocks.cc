#include "models/blocks.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>

#include "kernels/causal_softmax.h"
#include "kernels/rms_norm.h"
#include "peft/core/autocast.h"

namespace peft::models {

RmsNormImpl::RmsNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
}

at::Tensor RmsNormImpl::forward(const at::Tensor& x) {
  // A float32 stream on the CPU: one pass, straight to the autocast dtype
  // when bf16 autocast is on (what the next linear would cast it to).
  if (x.is_cpu() && x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.size(-1) > 0) {
    const bool bf16 = autocast_dtype_for(x) == at::kBFloat16;
    return kernels::fused_rms_norm(x, weight, eps, bf16 ? at::kBFloat16 : at::kFloat);
  }
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return (xf * at::rsqrt(var + eps)).to(x.scalar_type()) * weight;
}

LayerNormImpl::LayerNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
  bias = register_parameter("bias", at::zeros({dim}));
}

at::Tensor LayerNormImpl::forward(const at::Tensor& x) {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim) { weight = register_parameter("weight", at::empty({num, dim})); }

at::Tensor EmbeddingImpl::forward(const at::Tensor& ids) {
  at::Tensor rows = at::embedding(weight, ids);
  return output_dtype && rows.scalar_type() != *output_dtype ? rows.to(*output_dtype) : rows;
}

RopeTables make_rope_tables(const RopeSpec& s) {
  TORCH_CHECK(s.head_dim > 0 && s.head_dim % 2 == 0, "RoPE: head_dim must be positive and even, got ", s.head_dim);
  const int64_t half = s.head_dim / 2;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    inv[i] = 1.0 / std::pow(s.theta, static_cast<double>(2 * i) / static_cast<double>(s.head_dim));
  }
  if (s.rope_type == "llama3") {
    // transformers' _compute_llama3_parameters: long wavelengths are divided
    // by `factor`, short ones kept, the band between blended smoothly.
    const double old_len = static_cast<double>(s.original_max_position_embeddings);
    const double low_wavelen = old_len / s.low_freq_factor;
    const double high_wavelen = old_len / s.high_freq_factor;
    for (double& f : inv) {
      const double wavelen = 2.0 * M_PI / f;
      if (wavelen > low_wavelen) {
        f = f / s.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        f = (1.0 - smooth) * f / s.factor + smooth * f;
      }
    }
  }
  const double pos_scale = s.rope_type == "linear" ? 1.0 / s.factor : 1.0;
  at::Tensor inv_t = at::tensor(inv, at::kDouble);
  at::Tensor pos = at::arange(s.max_positions, at::kDouble) * pos_scale;
  at::Tensor freqs = at::outer(pos, inv_t);      // [P, D/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);  // [P, D]
  return RopeTables{inv_t.to(at::kFloat), emb.cos().to(at::kFloat), emb.sin().to(at::kFloat)};
}

at::Tensor apply_rope(const at::Tensor& x, const RopeTables& rope, int64_t past) {
  const int64_t t = x.size(2);
  const int64_t d = x.size(3);
  TORCH_CHECK(past + t <= rope.cos.size(0), "RoPE: position ", past + t - 1, " is past the maximum ",
              rope.cos.size(0) - 1, " (max_position_embeddings)");
  at::Tensor cos = rope.cos.narrow(0, past, t).to(x.device(), x.scalar_type());  // [T, D]
  at::Tensor sin = rope.sin.narrow(0, past, t).to(x.device(), x.scalar_type());
  at::Tensor x1 = x.narrow(-1, 0, d / 2);
  at::Tensor x2 = x.narrow(-1, d / 2, d / 2);
  at::Tensor rotated = at::cat({-x2, x1}, -1);  // rotate_half
  return x * cos + rotated * sin;
}

at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k_all, const at::Tensor& v_all, double scale,
                            int64_t window) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t g = k_all.size(1);
  TORCH_CHECK(h % g == 0, "attention: ", h, " query heads cannot share ", g, " KV heads");
  TORCH_CHECK(k_all.size(2) >= t, "attention: ", k_all.size(2), " keys for ", t, " queries");
  TORCH_CHECK(window >= 0, "attention: window must be >= 0 (0 = none), got ", window);
  // The first query (position S-T) sees keys from S-T-W+1 on; earlier ones
  // are outside every query's window. Dropping them shifts query and key
  // positions alike, so the mask below is unchanged.
  const int64_t first = window > 0 ? std::max<int64_t>(0, k_all.size(2) - t - window + 1) : 0;
  const at::Tensor k = first > 0 ? k_all.narrow(2, first, k_all.size(2) - first) : k_all;
  const at::Tensor v = first > 0 ? v_all.narrow(2, first, v_all.size(2) - first) : v_all;
  const int64_t s = k.size(2);
  // Only a window shorter than the keys masks anything beyond causality.
  const int64_t w = window > 0 && window < s ? window : 0;
  const int64_t rep = h / g;
  // Group the query heads that share a KV head so one batched matmul per KV
  // head serves all of them (no copy of K/V per query head).
  at::Tensor qg = q.contiguous().view({b, g, rep * t, d});  // [B, G, rep*T, D]
  if (q.is_cpu()) {
    // Scale, mask and softmax in one pass (kernels/causal_softmax.h).
    at::Tensor scores = at::matmul(qg, k.transpose(-1, -2));  // [B, G, rep*T, S]
    if (scores.scalar_type() == at::kFloat || scores.scalar_type() == at::kBFloat16) {
      at::Tensor probs = kernels::causal_softmax(scores, scale, t, w).to(v.scalar_type());
      return at::matmul(probs, v).view({b, h, t, d});
    }
  }
  at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)).mul_(scale);  // [B, G, rep*T, S]
  if (t > 1 || w > 0) {
    // Query i (absolute position s-t+i) may see keys 0..s-t+i, and with a
    // window only those after s-t+i-w.
    at::Tensor qpos = at::arange(s - t, s, at::TensorOptions().device(q.device()).dtype(at::kLong)).repeat({rep});
    at::Tensor kpos = at::arange(s, at::TensorOptions().device(q.device()).dtype(at::kLong));
    at::Tensor masked = kpos.unsqueeze(0) > qpos.unsqueeze(1);  // [rep*T, S]
    if (w > 0) masked = masked | (kpos.unsqueeze(0) <= qpos.unsqueeze(1) - w);
    scores = scores.masked_fill(masked, -std::numeric_limits<float>::infinity());
  }
  at::Tensor probs = at::softmax(scores, -1, at::kFloat).to(v.scalar_type());
  return at::matmul(probs, v).view({b, h, t, d});
}

KvCache KvCache::create(int64_t layers, int64_t batch, int64_t kv_heads, int64_t capacity, int64_t head_dim,
                        at::TensorOptions options) {
  KvCache c;
  c.capacity = capacity;
  for (int64_t i = 0; i < layers; ++i) {
    c.k.push_back(at::zeros({batch, kv_heads, capacity, head_dim}, options));
    c.v.push_back(at::zeros({batch, kv_heads, capacity, head_dim}, options));
  }
  return c;
}

std::pair<at::Tensor, at::Tensor> KvCache::append(int64_t layer, const at::Tensor& k_new, const at::Tensor& v_new) {
  const int64_t t = k_new.size(2);
  TORCH_CHECK(length + t <= capacity, "KV cache full: ", length, " + ", t, " positions exceed capacity ", capacity);
  k[layer].narrow(2, length, t).copy_(k_new);
  v[layer].narrow(2, length, t).copy_(v_new);
  return {k[layer].narrow(2, 0, length + t), v[layer].narrow(2, 0, length + t)};
}

}  // namespace peft::models
