//
// Dynamic loss-based sample reweighting (Sow et al., "Dynamic Loss-Based
// Sample Reweighting for Improved Large Language Model Pretraining",
// ICLR 2025, arXiv 2502.06733; docs/methods.md §8, following the authors'
// `src/trainer.py` and the FMS `reweighted-train` branch). Each micro-step
// the per-sample mean token losses of the whole data-parallel micro-batch
// decide how much each sample counts in the loss that is back-propagated:
//
//   1. ℓ [N]: detached per-sample losses, all-gathered over the ranks.
//   2. x_i = δ·(2ℓ_i − (ℓmax + ℓmin)) / max(ℓmax − ℓmin, 1e−6) ∈ [−δ, δ].
//   3. f_i = f(x_i), the strategy score:
//        kUniform    f = 0                   (baseline, no reweighting)
//        kLinUpper   f = min(x + δ, δ)       (paper's recommendation)
//        kQuadratic  f = 1 − x²/δ²           (favours mid-range losses)
//        kExtremes   f = |x|                 (favours both extremes)
//   4. w = softmax(f / r) over the N samples (r = temperature; r → ∞ is
//      uniform, small r is sharp). During warm-up r = warmup_temperature
//      (∞ by default: exactly uniform weights).
//   5. This rank's rows of w; the scalar to back-propagate for this
//      micro-batch (T = loss tokens of the whole optimizer step, all ranks
//      and micro-batches; n_i = sample i's loss tokens; a = micro-batches
//      per step):
//        kTokens (default)    L = N·world·Σ_local w_i n_i ℓ_i / T
//        kTokensMicroBatch    L = N·Σ_local w_i (n_i / Σ_local n_j)·ℓ_i / a
//                             (the GPT-2 repository's formula exactly)
//        kSamples (FMS code)  L = world·Σ_local w_i ℓ_i / a
//      With uniform w = 1/N, kTokens is the token-mean cross-entropy of the
//      whole optimizer step (the usual LM loss) and kSamples the mean of the
//      per-sample losses (over all ranks, once gradients are averaged).
//
// Decision (docs/methods.md, "Loss reweighting"): kTokens is the default
// and differs from the official formula only in its denominator. The
// official code normalises each rank's micro-batch by its own tokens and
// divides by a, so the tokens of a micro-batch (or rank) with few loss
// tokens weigh more than those of a long one: the gradient-accumulation
// bug that transformers fixed by normalising over the whole step. kTokens
// equals the official scalar exactly with one rank and one micro-batch
// (T = Σ_local n_j), and with uniform weights it is the step's token-mean
// CE for any accumulation and world size, like the trainer's loss without
// reweighting. kTokensMicroBatch keeps the official formula for exact
// comparisons.
// The weights never carry gradient: ∂L/∂θ = Σ_i c_i ∂ℓ_i/∂θ with the
// constant coefficients c_i returned in ReweightedLoss::coefficients.
//
// Data-parallel equivalence. DDP/FSDP average gradients over the world
// ranks, so the objective actually optimised is (1/world)·Σ_r L_r, summed
// over the micro-batches of the step. Compared with one process holding the
// concatenated global batch:
//  - kTokens: (1/world)·Σ_r N·world·Σ_{i∈r} w_i n_i ℓ_i / T = N·Σ_i w_i n_i
//    ℓ_i / T, exactly the one-process loss, for any split of samples and
//    tokens over ranks and micro-batches.
//  - kSamples: (1/world)·Σ_r world·Σ_{i∈r} w_i ℓ_i = Σ_i w_i ℓ_i, also exact.
//  - kTokensMicroBatch: (1/world)·Σ_r N·Σ_{i∈r} w_i n_i ℓ_i / T_r with T_r
//    the local token total: equal iff every rank (and micro-batch) holds the
//    same number of loss tokens (e.g. packed fixed-length sequences).
// (Gradient accumulation: weights are computed per micro-step, as in both
// reference codes.)
//
// Design: the four strategies differ in one scalar function, so they are an
// `enum class` in an options struct (style rule 3, and recipe.proto's
// `ReweightingConfig`), not a `SampleWeighter` class hierarchy.
//
// Usage inside a training micro-step (labels already shifted, −100 ignored):
//
//   PerSampleLoss ps = per_sample_token_loss(logits, labels);   // [B], [B]
//   ReweightedLoss rw = reweighted_loss(options, ps.loss, ps.token_counts,
//                                       step, group, step_tokens, grad_accum);
//   rw.loss.backward();
//   if (log_now) WeightStats s = weight_stats(rw.global_weights);
//
// Shapes: B = local micro-batch, N = global micro-batch (valid samples of
// all ranks), T = sequence length, V = vocabulary size.
#ifndef PEFT_TRAINERS_REWEIGHTING_H_
#define PEFT_TRAINERS_REWEIGHTING_H_

#include <cstdint>
#include <functional>
#include <limits>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"

namespace peft::trainers {

/// The score f(x) applied to the normalised losses (recipe.proto
/// `ReweightingConfig.Strategy`; the GPT-2 repo calls them `linupper`, `mid`,
/// `extremes`; the FMS branch calls LinUpper `upper`).
enum class ReweightStrategy {
  kUniform,    ///< f = 0: every sample weighs 1/N (the baseline)
  kLinUpper,   ///< f = min(x + δ, δ)
  kQuadratic,  ///< f = 1 − x²/δ²
  kExtremes,   ///< f = |x|
};

/// How per-sample losses are combined into the scalar (the file comment;
/// docs/methods.md, "Loss reweighting").
enum class TokenWeighting {
  kTokens,            ///< L = N·world·Σ_local w_i n_i ℓ_i / T; uniform w ⇒ the step's token-mean CE
  kSamples,           ///< L = world·Σ_local w_i ℓ_i / a; uniform w ⇒ sample-mean loss
  kTokensMicroBatch,  ///< L = N·Σ_local w_i (n_i/Σ_local n_j) ℓ_i / a (the GPT-2 repository's)
};

/// Options, mirroring recipe.proto `ReweightingConfig`. The defaults are the
/// baseline (uniform); the paper's pick is kLinUpper with r ≈ 0.2–1.
///
///   ReweightOptions o;
///   o.strategy = ReweightStrategy::kLinUpper;
///   o.temperature = 0.5;
///   o.warmup_steps = 0;  // reweight from the first step
struct ReweightOptions {
  ReweightStrategy strategy = ReweightStrategy::kUniform;
  double temperature = 1.0;  ///< r > 0 (code: `kl_reg` / `kl_regularizer`); +∞ allowed (= uniform)
  /// Steps [0, warmup_steps) use warmup_temperature. 1000 is the GPT-2
  /// repository's `burnout_steps` (its code default and every published
  /// config).
  int64_t warmup_steps = 1000;
  /// r during warm-up. +∞ (default, GPT-2 repo) gives exactly uniform
  /// weights; the FMS code uses 100 (nearly uniform). > 0.
  double warmup_temperature = std::numeric_limits<double>::infinity();
  double delta = 1.0;  ///< δ, half-width of the normalised range; finite, > 0
  TokenWeighting token_weighting = TokenWeighting::kTokens;

  /// OK, or InvalidArgument naming the field and value (temperatures ≤ 0 or
  /// NaN, negative warmup_steps, non-finite or non-positive delta, unknown
  /// enum values).
  absl::Status validate() const;
};

/// All-gather over the data-parallel ranks: every rank passes a 1-D tensor
/// of the same length, dtype and device, and gets back the concatenation in
/// rank order, [world_size · length] (c10d `allgather` + `at::cat`; e.g. a
/// lambda over trainers/distributed.h `ProcessGroup::all_gather` that
/// TORCH_CHECKs its status). It is a collective: reweighted_loss calls it the
/// same number of times, in the same order, on every rank (once with an
/// int64 [1] tensor of local sizes, then once with float64 (ℓ_i, n_i) pairs
/// padded to [2·max_B]), so every rank must call reweighted_loss at every
/// micro-step, even with an empty local batch.
using GatherFn = std::function<at::Tensor(const at::Tensor&)>;

/// This process's place in the data-parallel group. The default is a single
/// process (no gather needed).
struct DataParallelGroup {
  int64_t rank = 0;        ///< global rank (not the node-local rank), in [0, world_size)
  int64_t world_size = 1;  ///< number of data-parallel ranks
  GatherFn all_gather;     ///< required when world_size > 1; unused otherwise
};

/// Result of reweighted_loss. Only `loss` carries autograd history.
struct ReweightedLoss {
  at::Tensor loss;            ///< [] the scalar to back-propagate, dtype of the per-sample losses
  at::Tensor coefficients;    ///< [B] float64 c_i with loss = Σ_local c_i ℓ_i (no grad)
  at::Tensor local_weights;   ///< [B] float64 w_i of this rank's samples (0 for samples with n_i = 0)
  at::Tensor global_weights;  ///< [N] float64 weights of all valid samples in rank order; sum to 1
  double temperature = 0;     ///< r in effect at this step (+∞ = uniform)
};

/// Summary of a weight vector for metrics. For w = 1/N: min = max = mean =
/// 1/N, entropy = log N, effective_sample_size = N.
struct WeightStats {
  int64_t num_samples = 0;  ///< N
  double min = 0;
  double max = 0;
  double mean = 0;                   ///< always 1/N for normalised weights
  double entropy = 0;                ///< −Σ w log w in nats, with 0·log 0 = 0
  double effective_sample_size = 0;  ///< Kish ESS (Σw)² / Σw², in [1, N]
};

/// Step 2: min–max normalisation of `losses` [N] (any floating dtype) to
/// [−δ, δ] with denominator max(ℓmax − ℓmin, 1e−6), so equal losses all
/// map to 0. Returns [N] in the input dtype. TORCH_CHECKs: 1-D, N ≥ 1.
at::Tensor normalize_losses(const at::Tensor& losses, double delta = 1.0);

/// Step 3: the strategy score f(x) elementwise on normalised losses `x`.
at::Tensor strategy_scores(ReweightStrategy strategy, const at::Tensor& x, double delta = 1.0);

/// Steps 2–4 on the global losses `losses` [N] (detached inside): the
/// weights [N] as float64, summing to 1, with no autograd history. Uses
/// warmup_temperature for step < warmup_steps, else temperature; a uniform
/// strategy or an infinite temperature gives exactly 1/N. N = 0 gives an
/// empty tensor. Options must validate.
at::Tensor sample_weights(const ReweightOptions& options, const at::Tensor& losses, int64_t step);

/// Steps 1–5: the reweighted scalar loss of this rank's micro-batch.
///  - `losses` [B]: per-sample mean token losses WITH autograd history
///    (e.g. per_sample_token_loss(...).loss); must be finite for every
///    sample that has tokens.
///  - `token_counts` [B]: loss tokens n_i per sample (integer or floating,
///    ≥ 0). Samples with n_i = 0 are left out of the normalisation and the
///    softmax (weight 0), and N counts only samples with n_i > 0.
///  - `step`: the optimizer step (for the warm-up).
///  - `group`: rank, world size and all-gather. Local batches may differ in
///    size across ranks: the sizes are gathered first and the values padded
///    to the largest, so the gather only ever sees equal shapes.
///  - `step_tokens`: T, the loss tokens of the whole optimizer step over all
///    ranks and micro-batches (kTokens); ≤ 0 means this global micro-batch's
///    (the gathered Σ n_i: one micro-batch per step).
///  - `grad_accum`: a, micro-batches per optimizer step (kSamples,
///    kTokensMicroBatch); ≥ 1.
/// Options must validate; tensor and group mismatches are TORCH_CHECK errors.
ReweightedLoss reweighted_loss(const ReweightOptions& options, const at::Tensor& losses, const at::Tensor& token_counts,
                               int64_t step, const DataParallelGroup& group = DataParallelGroup(),
                               int64_t step_tokens = 0, int64_t grad_accum = 1);

/// Metrics of a weight vector [N] (e.g. ReweightedLoss::global_weights).
/// Synchronises with the device (reads scalars); call only when logging.
WeightStats weight_stats(const at::Tensor& weights);

/// Per-sample mean token cross-entropy and token counts.
struct PerSampleLoss {
  at::Tensor loss;          ///< [B] float32, ℓ_i = Σ_t CE_{i,t} / n_i (0 when n_i = 0), differentiable
  at::Tensor token_counts;  ///< [B] int64, n_i = #{t : labels[i, t] ≠ ignore_index}
};

/// ℓ and n from `logits` [B, T, V] (any floating dtype, computed in float32)
/// and `labels` [B, T] (integer; already aligned with the logits, i.e. for
/// a causal LM pass logits[:, :-1] and ids[:, 1:]). Positions with label ==
/// ignore_index do not count. Memory: log-softmax runs over chunks of
/// `chunk_len` positions, so only one float32 chunk copy of the logits
/// exists at a time beyond what autograd keeps (the float32 log-probs);
/// chunk_len ≤ 0 means one chunk. TORCH_CHECKs shapes and label range.
PerSampleLoss per_sample_token_loss(const at::Tensor& logits, const at::Tensor& labels, int64_t ignore_index = -100,
                                    int64_t chunk_len = 128);

}  // namespace peft::trainers

#endif  // PEFT_TRAINERS_REWEIGHTING_H_
