#include "trainers/reweighting.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"

namespace peft::trainers {
namespace {

constexpr double kMinRange = 1e-6;  // denominator floor of the min-max normalisation (both codes)

bool known_strategy(ReweightStrategy s) {
  return s == ReweightStrategy::kUniform || s == ReweightStrategy::kLinUpper || s == ReweightStrategy::kQuadratic ||
         s == ReweightStrategy::kExtremes;
}

absl::Status positive_temperature(const char* field, double r) {
  if (r > 0) return absl::OkStatus();  // +inf allowed, NaN rejected
  return absl::InvalidArgumentError(absl::StrCat("ReweightOptions.", field, " must be > 0 (or +inf), got ", r));
}

// The weights of the valid samples, the rows of this rank and the global
// normaliser N, computed without autograd.
struct GlobalView {
  at::Tensor weights;        // [N] float64
  at::Tensor local_weights;  // [B] float64, 0 for rows with no tokens
  int64_t num_valid = 0;     // N
  at::Tensor counts;         // [world·max_B] float64 n_i of every rank (0 for padding)
};

GlobalView gather_and_weigh(const ReweightOptions& o, const at::Tensor& losses, const at::Tensor& counts, int64_t step,
                            const DataParallelGroup& g) {
  const int64_t b = losses.size(0);
  // [B, 2] rows (ℓ_i, n_i): one gather carries both, and n_i = 0 marks both
  // token-less samples and the padding of smaller local batches.
  at::Tensor local = at::stack({losses.detach().to(at::kDouble), counts.to(losses.device(), at::kDouble)}, 1);
  at::Tensor gathered = local;  // [world·max_B, 2]
  int64_t max_b = b;
  if (g.world_size > 1) {
    TORCH_CHECK(static_cast<bool>(g.all_gather), "reweighted_loss: world_size = ", g.world_size,
                " needs DataParallelGroup::all_gather");
    const at::Tensor sizes =
        g.all_gather(at::full({1}, b, at::TensorOptions().dtype(at::kLong).device(losses.device())));  // [world]
    TORCH_CHECK(sizes.dim() == 1 && sizes.size(0) == g.world_size, "reweighted_loss: gathered sizes have shape ",
                sizes.sizes(), ", expected [", g.world_size, "]");
    max_b = sizes.max().item<int64_t>();
    if (max_b > b) local = at::cat({local, at::zeros({max_b - b, 2}, local.options())}, 0);
    // Gathered flat ([2·max_B] per rank, 1-D like ProcessGroup::all_gather
    // wants); rank r's rows are a contiguous block, so a view restores them.
    gathered = g.all_gather(local.reshape({-1}));
    TORCH_CHECK(gathered.dim() == 1 && gathered.numel() == g.world_size * max_b * 2,
                "reweighted_loss: gathered losses have shape ", gathered.sizes(), ", expected [",
                g.world_size * max_b * 2, "]");
    gathered = gathered.to(at::kDouble).reshape({g.world_size * max_b, 2});
  }
  const at::Tensor valid = gathered.select(1, 1) > 0;                          // [world·max_B] bool
  const at::Tensor valid_losses = gathered.select(1, 0).masked_select(valid);  // [N]
  GlobalView v;
  v.num_valid = valid_losses.size(0);
  v.counts = gathered.select(1, 1);
  v.weights = sample_weights(o, valid_losses, step);
  at::Tensor all = at::zeros({gathered.size(0)}, v.weights.options());  // [world·max_B]
  if (v.num_valid > 0) all.masked_scatter_(valid, v.weights);
  v.local_weights = all.narrow(0, g.rank * max_b, b);
  return v;
}

}  // namespace

absl::Status ReweightOptions::validate() const {
  if (!known_strategy(strategy)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReweightOptions.strategy has unknown value ", static_cast<int>(strategy)));
  }
  if (token_weighting != TokenWeighting::kTokens && token_weighting != TokenWeighting::kSamples &&
      token_weighting != TokenWeighting::kTokensMicroBatch) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReweightOptions.token_weighting has unknown value ", static_cast<int>(token_weighting)));
  }
  PEFT_RETURN_IF_ERROR(positive_temperature("temperature", temperature));
  PEFT_RETURN_IF_ERROR(positive_temperature("warmup_temperature", warmup_temperature));
  if (warmup_steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("ReweightOptions.warmup_steps must be >= 0, got ", warmup_steps));
  }
  if (!(std::isfinite(delta) && delta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("ReweightOptions.delta must be finite and > 0, got ", delta));
  }
  return absl::OkStatus();
}

at::Tensor normalize_losses(const at::Tensor& losses, double delta) {
  TORCH_CHECK(losses.dim() == 1 && losses.size(0) >= 1, "normalize_losses: losses must be [N] with N >= 1, got shape ",
              losses.sizes());
  const at::Tensor lo = losses.min(), hi = losses.max();  // []
  return delta * (2 * losses - (hi + lo)) / (hi - lo).clamp_min(kMinRange);
}

at::Tensor strategy_scores(ReweightStrategy strategy, const at::Tensor& x, double delta) {
  switch (strategy) {
    case ReweightStrategy::kUniform: return at::zeros_like(x);
    case ReweightStrategy::kLinUpper: return (x + delta).clamp_max(delta);
    case ReweightStrategy::kQuadratic: return 1 - x * x / (delta * delta);
    case ReweightStrategy::kExtremes: return x.abs();
  }
  TORCH_CHECK(false, "strategy_scores: unknown strategy ", static_cast<int>(strategy));
}

at::Tensor sample_weights(const ReweightOptions& o, const at::Tensor& losses, int64_t step) {
  TORCH_CHECK(losses.dim() == 1, "sample_weights: losses must be [N], got shape ", losses.sizes());
  at::NoGradGuard no_grad;
  const at::Tensor l = losses.detach().to(at::kDouble);  // [N]
  const int64_t n = l.size(0);
  const double r = step < o.warmup_steps ? o.warmup_temperature : o.temperature;
  // Uniform is written out rather than taken from softmax(0) so that the
  // baseline is exactly 1/N.
  if (n == 0 || o.strategy == ReweightStrategy::kUniform || std::isinf(r)) {
    return at::full({n}, 1.0 / static_cast<double>(std::max<int64_t>(n, 1)), l.options());
  }
  const at::Tensor f = strategy_scores(o.strategy, normalize_losses(l, o.delta), o.delta);  // [N]
  return at::softmax(f / r, 0);  // softmax subtracts max(f/r) internally, as in the reference code
}

ReweightedLoss reweighted_loss(const ReweightOptions& o, const at::Tensor& losses, const at::Tensor& token_counts,
                               int64_t step, const DataParallelGroup& g, int64_t step_tokens, int64_t grad_accum) {
  TORCH_CHECK(grad_accum >= 1, "reweighted_loss: grad_accum must be >= 1, got ", grad_accum);
  TORCH_CHECK(losses.dim() == 1, "reweighted_loss: losses must be [B], got shape ", losses.sizes());
  TORCH_CHECK(token_counts.dim() == 1 && token_counts.size(0) == losses.size(0),
              "reweighted_loss: token_counts must be [B] = [", losses.size(0), "], got shape ", token_counts.sizes());
  TORCH_CHECK(at::isFloatingType(losses.scalar_type()), "reweighted_loss: losses must be floating point, got ",
              losses.scalar_type());
  TORCH_CHECK(g.world_size >= 1 && g.rank >= 0 && g.rank < g.world_size, "reweighted_loss: rank ", g.rank,
              " is not in [0, world_size = ", g.world_size, ")");
  ReweightedLoss out;
  {
    at::NoGradGuard no_grad;
    const at::Tensor n = token_counts.to(losses.device(), at::kDouble);  // [B]
    TORCH_CHECK(losses.size(0) == 0 || n.min().item<double>() >= 0, "reweighted_loss: negative token count");
    GlobalView v = gather_and_weigh(o, losses, n, step, g);
    const double num = static_cast<double>(v.num_valid), world = static_cast<double>(g.world_size);
    const double accum = static_cast<double>(grad_accum);
    switch (o.token_weighting) {
      case TokenWeighting::kTokens: {
        // T = 0 only when no rank has a loss token, so the floor of 1 just avoids 0/0.
        // (The gathered sum is read only when the caller did not pass T.)
        const double t = step_tokens > 0 ? static_cast<double>(step_tokens) : v.counts.sum().item<double>();
        out.coefficients = num * world * v.local_weights * n / std::max(t, 1.0);
        break;
      }
      case TokenWeighting::kTokensMicroBatch:
        // Σ_local n_j = 0 only when every local n_i is 0 (weights 0 too).
        out.coefficients = num * v.local_weights * n / n.sum().clamp_min(1.0) / accum;
        break;
      case TokenWeighting::kSamples: out.coefficients = world * v.local_weights / accum; break;
    }
    out.local_weights = v.local_weights;
    out.global_weights = v.weights;
    out.temperature = step < o.warmup_steps ? o.warmup_temperature : o.temperature;
    if (o.strategy == ReweightStrategy::kUniform) out.temperature = std::numeric_limits<double>::infinity();
  }
  // The coefficients are constants (built under NoGradGuard from detached
  // values), so ∂loss/∂θ = Σ c_i ∂ℓ_i/∂θ.
  out.loss = (out.coefficients.to(losses.scalar_type()) * losses).sum();
  return out;
}

WeightStats weight_stats(const at::Tensor& weights) {
  TORCH_CHECK(weights.dim() == 1, "weight_stats: weights must be [N], got shape ", weights.sizes());
  WeightStats s;
  s.num_samples = weights.size(0);
  if (s.num_samples == 0) return s;
  at::NoGradGuard no_grad;
  const at::Tensor w = weights.detach().to(at::kDouble).cpu();  // [N]
  s.min = w.min().item<double>();
  s.max = w.max().item<double>();
  s.mean = w.mean().item<double>();
  s.entropy = -at::xlogy(w, w).sum().item<double>();  // xlogy(0, 0) = 0
  const double sum = w.sum().item<double>(), sum_sq = (w * w).sum().item<double>();
  s.effective_sample_size = sum_sq > 0 ? sum * sum / sum_sq : 0.0;
  return s;
}

PerSampleLoss per_sample_token_loss(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index,
                                    int64_t chunk_len) {
  TORCH_CHECK(logits.dim() == 3, "per_sample_token_loss: logits must be [B, T, V], got shape ", logits.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == logits.size(0) && labels.size(1) == logits.size(1),
              "per_sample_token_loss: labels must be [B, T] = [", logits.size(0), ", ", logits.size(1), "], got shape ",
              labels.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "per_sample_token_loss: logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK(!at::isFloatingType(labels.scalar_type()) && labels.scalar_type() != at::kBool,
              "per_sample_token_loss: labels must be integer, got ", labels.scalar_type());
  const int64_t b = logits.size(0), t = logits.size(1), v = logits.size(2);
  const at::Tensor target = labels.to(logits.device(), at::kLong);  // [B, T]
  const int64_t step_len = chunk_len > 0 ? chunk_len : std::max<int64_t>(t, 1);
  // Sum of token CE per sample, accumulated chunk by chunk over T: only one
  // float32 copy of a [B, chunk, V] slice is alive at a time (autograd keeps
  // the float32 log-probs of each chunk either way).
  at::Tensor total = at::zeros({b}, logits.options().dtype(at::kFloat));  // [B]
  for (int64_t t0 = 0; t0 < t; t0 += step_len) {
    const int64_t len = std::min(step_len, t - t0);
    const at::Tensor x = logits.narrow(1, t0, len).to(at::kFloat).reshape({b * len, v});        // [B·len, V]
    const at::Tensor y = target.narrow(1, t0, len).reshape({b * len});                          // [B·len]
    const at::Tensor ce = at::cross_entropy_loss(x, y, {}, at::Reduction::None, ignore_index);  // [B·len], 0 if ignored
    total = total + ce.view({b, len}).sum(1);
  }
  PerSampleLoss out;
  out.token_counts = (target != ignore_index).sum(1);  // [B] int64
  out.loss = total / out.token_counts.clamp_min(1).to(at::kFloat);
  return out;
}

}  // namespace peft::trainers
