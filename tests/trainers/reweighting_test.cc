// Loss-based sample reweighting (trainers/reweighting.h): normalisation,
// strategy scores and softmax weights against hand computations; the uniform
// baseline equals the usual token-mean (kTokens) and sample-mean (kSamples)
// loss; warm-up and temperature limits; no gradient through the weights; the
// data-parallel equivalence with two simulated ranks (threads sharing an
// in-memory all-gather) against one process on the concatenated batch; the
// per-sample token loss against a naive loop.
#include "trainers/reweighting.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/autograd.h>

namespace peft::trainers {
namespace {

std::vector<double> to_vec(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kDouble).contiguous().cpu();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

at::Tensor dvec(const std::vector<double>& v) { return at::tensor(v, at::kDouble); }

void expect_vec_near(const std::vector<double>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "at " << i;
}

std::vector<double> softmax_by_hand(const std::vector<double>& f, double r) {
  double m = f[0];
  for (double v : f) m = std::max(m, v);
  std::vector<double> e;
  double z = 0;
  for (double v : f) {
    e.push_back(std::exp((v - m) / r));
    z += e.back();
  }
  for (double& v : e) v /= z;
  return e;
}

ReweightOptions options(ReweightStrategy s, double r, TokenWeighting tw = TokenWeighting::kTokens) {
  ReweightOptions o;
  o.strategy = s;
  o.temperature = r;
  o.token_weighting = tw;
  o.warmup_steps = 0;  // reweight from the first step
  EXPECT_TRUE(o.validate().ok());
  return o;
}

// The warm-up defaults to the official `burnout_steps` = 1000 (the GPT-2
// repository's code and every published config): uniform weights before it.
TEST(ReweightingTest, DefaultWarmupIsTheOfficialBurnout) {
  ReweightOptions o;
  o.strategy = ReweightStrategy::kLinUpper;
  o.temperature = 0.5;
  EXPECT_EQ(o.warmup_steps, 1000);
  const at::Tensor l = at::tensor({1.0, 2.0, 3.0, 5.0}, at::kDouble);
  EXPECT_TRUE(at::equal(sample_weights(o, l, 999), at::full({4}, 0.25, at::kDouble)));
  EXPECT_FALSE(at::allclose(sample_weights(o, l, 1000), at::full({4}, 0.25, at::kDouble)));
}

// ℓ = {1, 2, 3, 5}: ℓmin + ℓmax = 6, range 4, so x = (2ℓ − 6)/4.
const std::vector<double> kLosses = {1, 2, 3, 5};
const std::vector<double> kX = {-1, -0.5, 0, 1};

TEST(ReweightingTest, NormalizeByHand) {
  expect_vec_near(to_vec(normalize_losses(dvec(kLosses))), kX, 1e-15);
  expect_vec_near(to_vec(normalize_losses(dvec(kLosses), 2.0)), {-2, -1, 0, 2}, 1e-15);
  expect_vec_near(to_vec(normalize_losses(dvec({2, 2, 2}))), {0, 0, 0}, 0);  // equal losses → 0
  // A range below 1e-6 is divided by 1e-6, not by itself.
  expect_vec_near(to_vec(normalize_losses(dvec({1, 1 + 1e-9}))), {-1e-3, 1e-3}, 1e-9);
}

TEST(ReweightingTest, StrategyScoresByHand) {
  const at::Tensor x = dvec({-1, -0.5, 0, 0.5, 1});
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kUniform, x)), {0, 0, 0, 0, 0}, 0);
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kLinUpper, x)), {0, 0.5, 1, 1, 1}, 1e-15);
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kQuadratic, x)), {0, 0.75, 1, 0.75, 0}, 1e-15);
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kExtremes, x)), {1, 0.5, 0, 0.5, 1}, 1e-15);
  const at::Tensor x2 = dvec({-2, -1, 0, 1, 2});  // δ = 2
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kLinUpper, x2, 2.0)), {0, 1, 2, 2, 2}, 1e-15);
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kQuadratic, x2, 2.0)), {0, 0.75, 1, 0.75, 0}, 1e-15);
  expect_vec_near(to_vec(strategy_scores(ReweightStrategy::kExtremes, x2, 2.0)), {2, 1, 0, 1, 2}, 1e-15);
}

TEST(ReweightingTest, WeightsByHand) {
  const double r = 0.5;
  struct Case {
    ReweightStrategy s;
    std::vector<double> f;  // f(kX) by hand
  };
  for (const Case& c :
       {Case{ReweightStrategy::kLinUpper, {0, 0.5, 1, 1}}, Case{ReweightStrategy::kQuadratic, {0, 0.75, 1, 0}},
        Case{ReweightStrategy::kExtremes, {1, 0.5, 0, 1}}, Case{ReweightStrategy::kUniform, {0, 0, 0, 0}}}) {
    const at::Tensor w = sample_weights(options(c.s, r), dvec(kLosses), /*step=*/0);
    EXPECT_EQ(w.scalar_type(), at::kDouble);
    EXPECT_FALSE(w.requires_grad());
    expect_vec_near(to_vec(w), softmax_by_hand(c.f, r), 1e-14);
    EXPECT_NEAR(w.sum().item<double>(), 1.0, 1e-15);
  }
  // float32 losses give the same weights (computed in float64 inside).
  const at::Tensor w32 = sample_weights(options(ReweightStrategy::kLinUpper, r), dvec(kLosses).to(at::kFloat), 0);
  expect_vec_near(to_vec(w32), softmax_by_hand({0, 0.5, 1, 1}, r), 1e-14);
  // Order does not matter: permuting the losses permutes the weights.
  const at::Tensor wp = sample_weights(options(ReweightStrategy::kQuadratic, r), dvec({5, 3, 1, 2}), 0);
  const std::vector<double> q = softmax_by_hand({0, 0.75, 1, 0}, r);
  expect_vec_near(to_vec(wp), {q[3], q[2], q[0], q[1]}, 1e-14);
}

TEST(ReweightingTest, EqualLossesGiveUniformWeights) {
  for (ReweightStrategy s : {ReweightStrategy::kLinUpper, ReweightStrategy::kQuadratic, ReweightStrategy::kExtremes}) {
    expect_vec_near(to_vec(sample_weights(options(s, 0.1), dvec({3, 3, 3, 3}), 0)), {0.25, 0.25, 0.25, 0.25}, 1e-15);
  }
}

TEST(ReweightingTest, WarmupIsUniform) {
  ReweightOptions o = options(ReweightStrategy::kLinUpper, 0.5);
  o.warmup_steps = 10;
  for (int64_t step : {0, 5, 9}) {
    const std::vector<double> w = to_vec(sample_weights(o, dvec(kLosses), step));
    for (double v : w) EXPECT_EQ(v, 0.25) << "step " << step;  // exactly 1/N
  }
  expect_vec_near(to_vec(sample_weights(o, dvec(kLosses), 10)), softmax_by_hand({0, 0.5, 1, 1}, 0.5), 1e-14);
  // FMS-style warm-up: r = 100 is close to, but not exactly, uniform.
  o.warmup_temperature = 100;
  const std::vector<double> w = to_vec(sample_weights(o, dvec(kLosses), 3));
  expect_vec_near(w, softmax_by_hand({0, 0.5, 1, 1}, 100), 1e-15);
  EXPECT_NE(w[0], w[3]);
  EXPECT_LT(w[3] / w[0], 1.011);
  // The reported temperature follows the schedule.
  o.warmup_temperature = std::numeric_limits<double>::infinity();
  const at::Tensor l = dvec(kLosses), n = at::ones({4}, at::kLong);
  EXPECT_TRUE(std::isinf(reweighted_loss(o, l, n, 9).temperature));
  EXPECT_EQ(reweighted_loss(o, l, n, 10).temperature, 0.5);
}

TEST(ReweightingTest, TemperatureLimits) {
  for (ReweightStrategy s : {ReweightStrategy::kLinUpper, ReweightStrategy::kQuadratic, ReweightStrategy::kExtremes}) {
    for (double v : to_vec(sample_weights(options(s, 1e6), dvec(kLosses), 0))) EXPECT_NEAR(v, 0.25, 1e-6);
    for (double v : to_vec(sample_weights(options(s, std::numeric_limits<double>::infinity()), dvec(kLosses), 0))) {
      EXPECT_EQ(v, 0.25);
    }
  }
  // Small r concentrates the mass on the arg-max of f.
  expect_vec_near(to_vec(sample_weights(options(ReweightStrategy::kQuadratic, 1e-3), dvec(kLosses), 0)), {0, 0, 1, 0},
                  1e-12);
  expect_vec_near(to_vec(sample_weights(options(ReweightStrategy::kLinUpper, 1e-3), dvec(kLosses), 0)),
                  {0, 0, 0.5, 0.5}, 1e-12);
  expect_vec_near(to_vec(sample_weights(options(ReweightStrategy::kExtremes, 1e-3), dvec(kLosses), 0)),
                  {0.5, 0, 0, 0.5}, 1e-12);
  // Sharper as r falls: the effective sample size decreases monotonically.
  double prev = 5;
  for (double r : {100.0, 1.0, 0.3, 0.1, 0.01}) {
    const double ess =
        weight_stats(sample_weights(options(ReweightStrategy::kQuadratic, r), dvec(kLosses), 0)).effective_sample_size;
    EXPECT_LT(ess, prev) << "r = " << r;
    prev = ess;
  }
}

// A tiny "model": logits [B, T, V] = x [B, T, H] · θ [H, V], with labels that
// ignore a different number of positions per sample.
struct Batch {
  at::Tensor x;       // [B, T, H]
  at::Tensor labels;  // [B, T] int64, −100 = ignored
};

Batch make_batch(const std::vector<int64_t>& tokens_per_sample, int64_t t, int64_t h, int64_t v, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t b = static_cast<int64_t>(tokens_per_sample.size());
  Batch batch;
  batch.x = at::randn({b, t, h}, gen, at::kFloat);
  batch.labels = at::randint(0, v, {b, t}, gen, at::kLong);
  for (int64_t i = 0; i < b; ++i) {
    // Ignore the first T − n_i positions (a prompt, as in instruction tuning).
    batch.labels[i].narrow(0, 0, t - tokens_per_sample[i]).fill_(-100);
  }
  return batch;
}

Batch slice(const Batch& b, int64_t start, int64_t len) {
  return Batch{b.x.narrow(0, start, len), b.labels.narrow(0, start, len)};
}

at::Tensor make_theta(int64_t h, int64_t v, uint64_t seed) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({h, v}, gen, at::kFloat);
}

TEST(ReweightingTest, UniformEqualsPlainLosses) {
  const int64_t t = 6, h = 4, v = 7;
  const Batch batch = make_batch({6, 2, 4, 1, 5}, t, h, v, 1);
  const at::Tensor theta = make_theta(h, v, 2).requires_grad_(true);
  const at::Tensor logits = at::matmul(batch.x, theta);  // [B, T, V]
  // Baseline: token-mean CE over all non-ignored positions.
  const at::Tensor plain = at::cross_entropy_loss(logits.reshape({-1, v}), batch.labels.reshape({-1}));
  const at::Tensor plain_grad = torch::autograd::grad({plain}, {theta}, {}, /*retain_graph=*/true)[0];

  const PerSampleLoss ps = per_sample_token_loss(logits, batch.labels);
  const ReweightedLoss tokens = reweighted_loss(ReweightOptions(), ps.loss, ps.token_counts, 0);
  EXPECT_NEAR(tokens.loss.item<double>(), plain.item<double>(), 1e-6);
  const at::Tensor tokens_grad = torch::autograd::grad({tokens.loss}, {theta}, {}, /*retain_graph=*/true)[0];
  EXPECT_TRUE(at::allclose(tokens_grad, plain_grad, 1e-5, 1e-6));
  for (double w : to_vec(tokens.local_weights)) EXPECT_EQ(w, 0.2);

  ReweightOptions samples_opt;
  samples_opt.token_weighting = TokenWeighting::kSamples;
  const ReweightedLoss samples = reweighted_loss(samples_opt, ps.loss, ps.token_counts, 0);
  EXPECT_NEAR(samples.loss.item<double>(), ps.loss.mean().item<double>(), 1e-6);
  EXPECT_FALSE(std::abs(samples.loss.item<double>() - plain.item<double>()) < 1e-3);  // the two really differ here
}

TEST(ReweightingTest, NoGradientThroughWeights) {
  const int64_t t = 5, h = 3, v = 6;
  const Batch batch = make_batch({5, 3, 4, 1}, t, h, v, 3);
  const at::Tensor theta = make_theta(h, v, 4).requires_grad_(true);
  const PerSampleLoss ps = per_sample_token_loss(at::matmul(batch.x, theta), batch.labels);
  for (TokenWeighting tw : {TokenWeighting::kTokens, TokenWeighting::kSamples}) {
    const ReweightedLoss rw =
        reweighted_loss(options(ReweightStrategy::kLinUpper, 0.3, tw), ps.loss, ps.token_counts, 0);
    EXPECT_TRUE(rw.loss.requires_grad());
    EXPECT_FALSE(rw.coefficients.requires_grad());
    EXPECT_FALSE(rw.local_weights.requires_grad());
    EXPECT_FALSE(rw.global_weights.requires_grad());
    // Coefficients by hand from the weights.
    const std::vector<double> w = to_vec(rw.local_weights), n = to_vec(ps.token_counts), c = to_vec(rw.coefficients);
    const std::vector<double> w_hand = to_vec(sample_weights(options(ReweightStrategy::kLinUpper, 0.3), ps.loss, 0));
    expect_vec_near(w, w_hand, 1e-15);
    for (size_t i = 0; i < w.size(); ++i) {
      const double want = tw == TokenWeighting::kTokens ? 4 * w[i] * n[i] / (5 + 3 + 4 + 1) : w[i];
      EXPECT_NEAR(c[i], want, 1e-15);
    }
    // ∂L/∂θ = Σ c_i ∂ℓ_i/∂θ: the weights act as constants.
    const at::Tensor g = torch::autograd::grad({rw.loss}, {theta}, {}, /*retain_graph=*/true)[0];
    at::Tensor want = at::zeros_like(theta);
    for (int64_t i = 0; i < 4; ++i) {
      want += c[i] * torch::autograd::grad({ps.loss[i]}, {theta}, {}, /*retain_graph=*/true)[0];
    }
    EXPECT_TRUE(at::allclose(g, want, 1e-5, 1e-7));
    // ∂L/∂ℓ = c exactly.
    const at::Tensor leaf = ps.loss.detach().requires_grad_(true);
    const ReweightedLoss on_leaf =
        reweighted_loss(options(ReweightStrategy::kLinUpper, 0.3, tw), leaf, ps.token_counts, 0);
    on_leaf.loss.backward();
    expect_vec_near(to_vec(leaf.grad()), c, 1e-6);
  }
}

TEST(ReweightingTest, SamplesWithoutTokensAreLeftOut) {
  // Sample 2 has no loss tokens (and a junk loss): it must not move ℓmax.
  const at::Tensor l = dvec({1, 2, 99, 3, 5});
  const at::Tensor n = at::tensor(std::vector<int64_t>{1, 1, 0, 1, 1});
  const ReweightedLoss rw = reweighted_loss(options(ReweightStrategy::kQuadratic, 0.5), l, n, 0);
  const std::vector<double> q = softmax_by_hand({0, 0.75, 1, 0}, 0.5);
  expect_vec_near(to_vec(rw.global_weights), q, 1e-14);
  expect_vec_near(to_vec(rw.local_weights), {q[0], q[1], 0, q[2], q[3]}, 1e-14);
  EXPECT_EQ(to_vec(rw.coefficients)[2], 0);
  // N counts valid samples only: uniform + kTokens is still the token mean.
  const ReweightedLoss u = reweighted_loss(ReweightOptions(), dvec({1, 2, 0, 3}), dvec({2, 1, 0, 1}), 0);
  EXPECT_NEAR(u.loss.item<double>(), (2 * 1 + 1 * 2 + 1 * 3) / 4.0, 1e-15);
}

TEST(ReweightingTest, WeightStats) {
  const WeightStats u = weight_stats(at::full({4}, 0.25, at::kDouble));
  EXPECT_EQ(u.num_samples, 4);
  EXPECT_DOUBLE_EQ(u.min, 0.25);
  EXPECT_DOUBLE_EQ(u.max, 0.25);
  EXPECT_DOUBLE_EQ(u.mean, 0.25);
  EXPECT_NEAR(u.entropy, std::log(4.0), 1e-15);
  EXPECT_NEAR(u.effective_sample_size, 4.0, 1e-12);
  const WeightStats half = weight_stats(dvec({0.5, 0, 0.5, 0}));
  EXPECT_EQ(half.min, 0);
  EXPECT_EQ(half.max, 0.5);
  EXPECT_NEAR(half.entropy, std::log(2.0), 1e-15);
  EXPECT_NEAR(half.effective_sample_size, 2.0, 1e-12);
  const WeightStats w = weight_stats(dvec({0.1, 0.2, 0.7}));
  EXPECT_NEAR(w.entropy, -(0.1 * std::log(0.1) + 0.2 * std::log(0.2) + 0.7 * std::log(0.7)), 1e-15);
  EXPECT_NEAR(w.effective_sample_size, 1.0 / (0.01 + 0.04 + 0.49), 1e-12);
  EXPECT_NEAR(w.mean, 1.0 / 3, 1e-15);
}

// An in-memory all-gather for ranks running on threads: each rank deposits
// its tensor, the last one concatenates, everyone gets the result. Checks
// that all ranks pass equal-length 1-D tensors, as ProcessGroup::all_gather
// (trainers/distributed.h) requires.
class FakeAllGather {
 public:
  explicit FakeAllGather(int64_t world) : world_(world), slots_(world) {}

  at::Tensor gather(int64_t rank, const at::Tensor& t) {
    TORCH_CHECK(t.dim() == 1, "FakeAllGather: expects 1-D tensors, got shape ", t.sizes());
    std::unique_lock<std::mutex> lock(mu_);
    const int64_t generation = generation_;
    slots_[rank] = t.detach().clone();
    if (++arrived_ == world_) {
      for (const at::Tensor& s : slots_) {
        TORCH_CHECK(s.sizes() == slots_[0].sizes() && s.scalar_type() == slots_[0].scalar_type(),
                    "FakeAllGather: ranks passed different shapes ", slots_[0].sizes(), " and ", s.sizes());
      }
      result_ = at::cat(slots_, 0);
      arrived_ = 0;
      ++generation_;
      ++calls_;
      cv_.notify_all();
    } else {
      // A timeout instead of a hang if another rank failed before gathering.
      TORCH_CHECK(cv_.wait_for(lock, std::chrono::seconds(30), [&] { return generation_ != generation; }),
                  "FakeAllGather: timed out waiting for the other ranks");
    }
    return result_;
  }

  int64_t calls() const { return calls_; }

 private:
  const int64_t world_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<at::Tensor> slots_;
  at::Tensor result_;
  int64_t arrived_ = 0, generation_ = 0, calls_ = 0;
};

struct RankOutput {
  double loss = 0;
  at::Tensor grad;  // ∂L_r/∂θ [H, V]
  ReweightedLoss rw;
};

// One micro-step of data-parallel training: every rank has its own replica
// of θ and its own slice of the batch; returns each rank's loss and grad.
std::vector<RankOutput> run_ranks(const ReweightOptions& o, const std::vector<Batch>& per_rank, const at::Tensor& theta,
                                  int64_t step) {
  const int64_t world = static_cast<int64_t>(per_rank.size());
  FakeAllGather fake(world);
  std::vector<RankOutput> out(world);
  std::vector<std::exception_ptr> errors(world);
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        const at::Tensor replica = theta.detach().clone().requires_grad_(true);
        const PerSampleLoss ps = per_sample_token_loss(at::matmul(per_rank[rank].x, replica), per_rank[rank].labels);
        DataParallelGroup g;
        g.rank = rank;
        g.world_size = world;
        g.all_gather = [&fake, rank](const at::Tensor& t) { return fake.gather(rank, t); };
        out[rank].rw = reweighted_loss(o, ps.loss, ps.token_counts, step, g);
        out[rank].loss = out[rank].rw.loss.item<double>();
        out[rank].grad = torch::autograd::grad({out[rank].rw.loss}, {replica})[0];
      } catch (...) {
        errors[rank] = std::current_exception();
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (const std::exception_ptr& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  EXPECT_EQ(fake.calls(), 2);  // sizes, then (ℓ, n) rows
  return out;
}

RankOutput run_single(const ReweightOptions& o, const Batch& batch, const at::Tensor& theta, int64_t step) {
  const at::Tensor replica = theta.detach().clone().requires_grad_(true);
  const PerSampleLoss ps = per_sample_token_loss(at::matmul(batch.x, replica), batch.labels);
  RankOutput r;
  r.rw = reweighted_loss(o, ps.loss, ps.token_counts, step);
  r.loss = r.rw.loss.item<double>();
  r.grad = torch::autograd::grad({r.rw.loss}, {replica})[0];
  return r;
}

constexpr int64_t kT = 6, kH = 4, kV = 7;

// kSamples: averaging the rank losses (and gradients, as DDP does) gives the
// one-process loss on the concatenated batch for any split, here 3 + 2
// samples with different token totals.
TEST(ReweightingTest, TwoRanksSamplesMatchOneProcess) {
  const Batch all = make_batch({6, 2, 4, 1, 5}, kT, kH, kV, 5);
  const at::Tensor theta = make_theta(kH, kV, 6);
  for (ReweightStrategy s : {ReweightStrategy::kUniform, ReweightStrategy::kLinUpper, ReweightStrategy::kQuadratic,
                             ReweightStrategy::kExtremes}) {
    const ReweightOptions o = options(s, 0.4, TokenWeighting::kSamples);
    const RankOutput one = run_single(o, all, theta, 0);
    const std::vector<RankOutput> two = run_ranks(o, {slice(all, 0, 3), slice(all, 3, 2)}, theta, 0);
    EXPECT_NEAR((two[0].loss + two[1].loss) / 2, one.loss, 1e-6) << static_cast<int>(s);
    EXPECT_TRUE(at::allclose((two[0].grad + two[1].grad) / 2, one.grad, 1e-5, 1e-7)) << static_cast<int>(s);
    // Every rank sees the same global weights, the ones one process computes;
    // its local rows are its slice of them.
    for (const RankOutput& r : two) EXPECT_TRUE(at::allclose(r.rw.global_weights, one.rw.global_weights, 1e-6, 1e-9));
    EXPECT_TRUE(
        at::allclose(at::cat({two[0].rw.local_weights, two[1].rw.local_weights}), one.rw.local_weights, 1e-6, 1e-9));
  }
}

// kTokens normalises by the global token total T, so averaging the rank
// losses gives the one-process loss for any split, here 12 + 4 tokens.
TEST(ReweightingTest, TwoRanksTokensMatchOneProcessWithUnequalTokenTotals) {
  const Batch all = make_batch({6, 6, 1, 3}, kT, kH, kV, 9);
  all.x.narrow(0, 2, 2).mul_(4);
  const at::Tensor theta = make_theta(kH, kV, 10);
  for (ReweightStrategy s : {ReweightStrategy::kUniform, ReweightStrategy::kLinUpper, ReweightStrategy::kExtremes}) {
    const ReweightOptions o = options(s, 0.4, TokenWeighting::kTokens);
    const RankOutput one = run_single(o, all, theta, 0);
    const std::vector<RankOutput> two = run_ranks(o, {slice(all, 0, 2), slice(all, 2, 2)}, theta, 0);
    EXPECT_NEAR((two[0].loss + two[1].loss) / 2, one.loss, 1e-6) << static_cast<int>(s);
    EXPECT_TRUE(at::allclose((two[0].grad + two[1].grad) / 2, one.grad, 1e-5, 1e-7)) << static_cast<int>(s);
  }
}

// kTokensMicroBatch is the GPT-2 repository's formula: each rank's tokens
// are normalised by its own total, mean_r N·Σ_{i∈r} w_i n_i ℓ_i / T_r (here
// T_0 = 12, T_1 = 4). Rank 1's inputs are scaled up so that its losses are
// clearly larger; with similar losses on both ranks the two normalisations
// nearly agree.
TEST(ReweightingTest, TwoRanksTokensMicroBatchUseLocalNormalisers) {
  const Batch all = make_batch({6, 6, 1, 3}, kT, kH, kV, 9);
  all.x.narrow(0, 2, 2).mul_(4);
  const at::Tensor theta = make_theta(kH, kV, 10);
  const ReweightOptions o = options(ReweightStrategy::kLinUpper, 0.4, TokenWeighting::kTokensMicroBatch);
  const RankOutput one = run_single(o, all, theta, 0);
  const std::vector<RankOutput> two = run_ranks(o, {slice(all, 0, 2), slice(all, 2, 2)}, theta, 0);
  const std::vector<double> w = to_vec(one.rw.global_weights);
  const PerSampleLoss ps = per_sample_token_loss(at::matmul(all.x, theta), all.labels);
  const std::vector<double> l = to_vec(ps.loss), n = to_vec(ps.token_counts);
  const double want =
      0.5 * (4 * (w[0] * n[0] * l[0] + w[1] * n[1] * l[1]) / 12 + 4 * (w[2] * n[2] * l[2] + w[3] * n[3] * l[3]) / 4);
  EXPECT_NEAR((two[0].loss + two[1].loss) / 2, want, 1e-5);
  EXPECT_GT(std::abs(want - one.loss), 1e-2);  // not the one-process loss
}

// Gradient accumulation, two micro-batches of one process with unequal token
// totals (12 and 4 of T = 16): the scalars by hand from the formulas of
// reweighting.h. kTokens: N·Σ w_i n_i ℓ_i / T per micro-batch (their sum is
// the step's token-weighted loss); kTokensMicroBatch: the official
// N·Σ w_i (n_i/Σ n_j) ℓ_i / a; kSamples: Σ w_i ℓ_i / a.
TEST(ReweightingTest, AccumulationNormalisationByHand) {
  const Batch all = make_batch({6, 6, 1, 3}, kT, kH, kV, 9);
  all.x.narrow(0, 2, 2).mul_(4);
  const at::Tensor theta = make_theta(kH, kV, 10);
  const std::vector<Batch> micro = {slice(all, 0, 2), slice(all, 2, 2)};
  for (TokenWeighting tw : {TokenWeighting::kTokens, TokenWeighting::kTokensMicroBatch, TokenWeighting::kSamples}) {
    const ReweightOptions o = options(ReweightStrategy::kLinUpper, 0.4, tw);
    for (const Batch& b : micro) {
      const PerSampleLoss ps = per_sample_token_loss(at::matmul(b.x, theta), b.labels);
      const std::vector<double> l = to_vec(ps.loss), n = to_vec(ps.token_counts);
      // The weights by hand: LinUpper, r = 0.4, over this micro-batch's two samples.
      const double lo = std::min(l[0], l[1]), hi = std::max(l[0], l[1]);
      std::vector<double> f;
      for (double li : l) f.push_back(std::min((2 * li - (hi + lo)) / std::max(hi - lo, 1e-6) + 1, 1.0));
      const std::vector<double> w = softmax_by_hand(f, 0.4);
      const double local_tokens = n[0] + n[1];
      double want = 0;
      for (int i = 0; i < 2; ++i) {
        if (tw == TokenWeighting::kTokens) want += 2 * w[i] * n[i] * l[i] / 16;
        if (tw == TokenWeighting::kTokensMicroBatch) want += 2 * w[i] * (n[i] / local_tokens) * l[i] / 2;
        if (tw == TokenWeighting::kSamples) want += w[i] * l[i] / 2;
      }
      const ReweightedLoss r = reweighted_loss(o, ps.loss, ps.token_counts, 0, DataParallelGroup(), 16, 2);
      EXPECT_NEAR(r.loss.item<double>(), want, 1e-6) << static_cast<int>(tw);
    }
  }
}

// A rank with an empty micro-batch still takes part in the gathers.
TEST(ReweightingTest, TwoRanksOneEmpty) {
  FakeAllGather fake(2);
  const ReweightOptions o = options(ReweightStrategy::kExtremes, 0.5, TokenWeighting::kSamples);
  std::vector<ReweightedLoss> out(2);
  std::vector<std::thread> threads;
  for (int64_t rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      DataParallelGroup g;
      g.rank = rank;
      g.world_size = 2;
      g.all_gather = [&fake, rank](const at::Tensor& t) { return fake.gather(rank, t); };
      const at::Tensor l = rank == 0 ? dvec(kLosses) : at::zeros({0}, at::kDouble);
      const at::Tensor n = at::ones({l.size(0)}, at::kLong);
      out[rank] = reweighted_loss(o, l, n, 0, g);
    });
  }
  for (std::thread& th : threads) th.join();
  const std::vector<double> q = softmax_by_hand({1, 0.5, 0, 1}, 0.5);
  expect_vec_near(to_vec(out[0].local_weights), q, 1e-14);
  EXPECT_EQ(out[1].local_weights.numel(), 0);
  EXPECT_EQ(out[1].loss.item<double>(), 0);
  expect_vec_near(to_vec(out[1].global_weights), q, 1e-14);
}

// Naive reference: −log softmax(logits[b, t])[label] summed over the
// non-ignored positions, in float64, one position at a time.
std::vector<double> naive_per_sample_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const at::Tensor lg = logits.detach().to(at::kDouble);
  std::vector<double> out;
  for (int64_t b = 0; b < lg.size(0); ++b) {
    double sum = 0;
    int64_t n = 0;
    for (int64_t t = 0; t < lg.size(1); ++t) {
      const int64_t y = labels[b][t].item<int64_t>();
      if (y == -100) continue;
      const at::Tensor row = lg[b][t];
      const double lse = std::log(row.exp().sum().item<double>());
      sum += lse - row[y].item<double>();
      ++n;
    }
    out.push_back(n > 0 ? sum / n : 0.0);
  }
  return out;
}

TEST(ReweightingTest, PerSampleLossMatchesNaive) {
  const Batch batch = make_batch({5, 1, 3, 0}, /*t=*/5, /*h=*/4, /*v=*/9, 11);  // the last sample has no tokens
  const at::Tensor theta = make_theta(4, 9, 12).requires_grad_(true);
  const at::Tensor logits = at::matmul(batch.x, theta);  // [4, 5, 9]
  const std::vector<double> want = naive_per_sample_loss(logits, batch.labels);

  const PerSampleLoss one_chunk = per_sample_token_loss(logits, batch.labels, -100, /*chunk_len=*/0);
  EXPECT_EQ(one_chunk.loss.scalar_type(), at::kFloat);
  EXPECT_EQ(one_chunk.token_counts.scalar_type(), at::kLong);
  expect_vec_near(to_vec(one_chunk.loss), want, 1e-5);
  expect_vec_near(to_vec(one_chunk.token_counts), {5, 1, 3, 0}, 0);

  // Chunks of 2 positions (the last chunk is 1 long): same values and grads.
  const PerSampleLoss chunked = per_sample_token_loss(logits, batch.labels, -100, /*chunk_len=*/2);
  expect_vec_near(to_vec(chunked.loss), to_vec(one_chunk.loss), 1e-6);
  const at::Tensor g1 = torch::autograd::grad({one_chunk.loss.sum()}, {theta}, {}, true)[0];
  const at::Tensor g2 = torch::autograd::grad({chunked.loss.sum()}, {theta}, {}, true)[0];
  EXPECT_TRUE(at::allclose(g1, g2, 1e-5, 1e-7));
  EXPECT_TRUE(at::isfinite(g1).all().item<bool>());  // the token-less sample adds no NaN

  // Half-precision logits are evaluated in float32.
  const at::Tensor bf = logits.detach().to(at::kBFloat16);
  const PerSampleLoss low = per_sample_token_loss(bf, batch.labels, -100, 2);
  EXPECT_EQ(low.loss.scalar_type(), at::kFloat);
  expect_vec_near(to_vec(low.loss), naive_per_sample_loss(bf.to(at::kFloat), batch.labels), 1e-5);

  // A different ignore_index.
  const at::Tensor labels0 = batch.labels.masked_fill(batch.labels == -100, 0);
  const PerSampleLoss ign0 = per_sample_token_loss(logits, labels0, /*ignore_index=*/0);
  expect_vec_near(to_vec(ign0.token_counts), to_vec((labels0 != 0).sum(1)), 0);
}

TEST(ReweightingTest, ValidateRejectsBadOptions) {
  EXPECT_TRUE(ReweightOptions().validate().ok());
  auto expect_bad = [](const ReweightOptions& o, const char* field) {
    const absl::Status s = o.validate();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(s.message().find(field), absl::string_view::npos) << s.message();
  };
  ReweightOptions o;
  o.temperature = 0;
  expect_bad(o, "temperature");
  o = ReweightOptions();
  o.temperature = std::nan("");
  expect_bad(o, "temperature");
  o = ReweightOptions();
  o.warmup_temperature = -1;
  expect_bad(o, "warmup_temperature");
  o = ReweightOptions();
  o.warmup_steps = -1;
  expect_bad(o, "warmup_steps");
  o = ReweightOptions();
  o.delta = 0;
  expect_bad(o, "delta");
  o = ReweightOptions();
  o.strategy = static_cast<ReweightStrategy>(9);
  expect_bad(o, "strategy");
  o = ReweightOptions();
  o.token_weighting = static_cast<TokenWeighting>(9);
  expect_bad(o, "token_weighting");
}

TEST(ReweightingTest, ArgumentChecks) {
  const ReweightOptions o;
  const at::Tensor l = dvec(kLosses);
  EXPECT_THROW(reweighted_loss(o, l, at::ones({3}), 0), c10::Error);                  // counts [3] vs losses [4]
  EXPECT_THROW(reweighted_loss(o, l.view({2, 2}), at::ones({2, 2}), 0), c10::Error);  // not 1-D
  EXPECT_THROW(reweighted_loss(o, l, -at::ones({4}), 0), c10::Error);                 // negative count
  DataParallelGroup no_gather;
  no_gather.world_size = 2;
  EXPECT_THROW(reweighted_loss(o, l, at::ones({4}), 0, no_gather), c10::Error);
  DataParallelGroup bad_rank;
  bad_rank.rank = 1;
  EXPECT_THROW(reweighted_loss(o, l, at::ones({4}), 0, bad_rank), c10::Error);
  EXPECT_THROW(normalize_losses(at::zeros({0})), c10::Error);
  EXPECT_THROW(per_sample_token_loss(at::zeros({2, 3, 4}), at::zeros({2, 4}, at::kLong)), c10::Error);
  EXPECT_THROW(per_sample_token_loss(at::zeros({2, 3, 4}), at::zeros({2, 3})), c10::Error);  // float labels
}

}  // namespace
}  // namespace peft::trainers
