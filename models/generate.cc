#include "models/generate.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"

namespace peft::models {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// splitmix64: a tiny, portable, seedable generator (same stream everywhere).
uint64_t next_u64(uint64_t* s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

double uniform01(uint64_t* s) { return static_cast<double>(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

absl::Status check_ids(const CausalLm& model, const std::vector<int64_t>& ids) {
  const int64_t v = model.config().vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= v) {
      return absl::InvalidArgumentError(
          absl::StrCat("token id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", v, ")"));
    }
  }
  return absl::OkStatus();
}

at::Tensor to_tensor(const std::vector<int64_t>& ids, int64_t begin, int64_t len) {
  return at::tensor(std::vector<int64_t>(ids.begin() + begin, ids.begin() + begin + len), at::kLong).view({1, len});
}

}  // namespace

int64_t sample_next(const at::Tensor& logits_in, const GenerateOptions& o, uint64_t* rng_state) {
  at::Tensor logits = logits_in.to(at::kFloat).contiguous();
  if (o.temperature <= 0.0) return logits.argmax().item<int64_t>();
  const int64_t v = logits.size(0);
  at::Tensor scaled = logits / o.temperature;
  // Sort once; top-k and top-p both cut a prefix of the sorted order.
  auto sorted = scaled.sort(/*dim=*/0, /*descending=*/true);
  at::Tensor vals = std::get<0>(sorted);
  at::Tensor idx = std::get<1>(sorted);
  int64_t keep = (o.top_k > 0) ? std::min(o.top_k, v) : v;
  at::Tensor probs = at::softmax(vals.narrow(0, 0, keep).to(at::kDouble), 0);
  if (o.top_p < 1.0) {
    const double* p = probs.data_ptr<double>();
    double cum = 0.0;
    int64_t k = 0;
    while (k < keep) {
      cum += p[k++];
      if (cum >= o.top_p) break;
    }
    keep = std::max<int64_t>(k, 1);
    probs = probs.narrow(0, 0, keep);
    probs = probs / probs.sum();
  }
  const double* p = probs.data_ptr<double>();
  const double u = uniform01(rng_state);
  double cum = 0.0;
  for (int64_t i = 0; i < keep; ++i) {
    cum += p[i];
    if (u < cum) return idx[i].item<int64_t>();
  }
  return idx[keep - 1].item<int64_t>();
}

absl::StatusOr<GenerateResult> generate(CausalLm& model, const std::vector<int64_t>& prompt, const GenerateOptions& o,
                                        const std::function<void(int64_t)>& on_token) {
  if (prompt.empty()) return absl::InvalidArgumentError("generate: the prompt is empty (no token ids)");
  PEFT_RETURN_IF_ERROR(check_ids(model, prompt));
  const int64_t ctx = model.config().max_positions();
  const int64_t n = static_cast<int64_t>(prompt.size());
  if (n >= ctx) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generate: the prompt has ", n, " tokens, which leaves no room in the model's context of ", ctx, " positions"));
  }
  if (o.max_new_tokens < 0) return absl::InvalidArgumentError("generate: max_new_tokens must be >= 0");
  if (o.top_p <= 0.0 || o.top_p > 1.0) return absl::InvalidArgumentError("generate: top_p must be in (0, 1]");
  if (o.top_k < 0) return absl::InvalidArgumentError("generate: top_k must be >= 0");
  std::vector<int64_t> stop = o.stop_ids;
  if (o.use_config_eos) {
    for (int64_t e : model.config().eos_token_ids) stop.push_back(e);
  }
  GenerateResult r;
  const int64_t budget = std::min(o.max_new_tokens, ctx - n);
  if (budget == 0) return r;
  uint64_t rng = o.seed;
  torch::NoGradGuard no_grad;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("generate", [&] {
    KvCache cache = model.make_cache(1, n + budget);
    auto t0 = std::chrono::steady_clock::now();
    at::Tensor logits = model.forward(to_tensor(prompt, 0, n), &cache);  // [1, n, V]
    int64_t next = sample_next(logits[0][n - 1], o, &rng);
    r.prefill_seconds = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    while (true) {
      r.generated_ids.push_back(next);
      if (on_token) on_token(next);
      if (std::find(stop.begin(), stop.end(), next) != stop.end()) {
        r.stopped = true;
        break;
      }
      if (static_cast<int64_t>(r.generated_ids.size()) >= budget) break;
      logits = model.forward(at::full({1, 1}, next, at::kLong), &cache);  // [1, 1, V]
      next = sample_next(logits[0][0], o, &rng);
    }
    r.decode_seconds = seconds_since(t1);
  }));
  return r;
}

absl::StatusOr<EvalResult> evaluate_sequence(CausalLm& model, const std::vector<int64_t>& ids) {
  PEFT_RETURN_IF_ERROR(check_ids(model, ids));
  EvalResult r;
  if (ids.size() < 2) return r;
  const int64_t ctx = model.config().max_positions();
  const int64_t n = static_cast<int64_t>(ids.size());
  torch::NoGradGuard no_grad;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("evaluate", [&] {
    // Windows [begin, begin+len) predict ids[begin+1 .. begin+len]; each
    // window restarts the context (no overlap).
    for (int64_t begin = 0; begin < n - 1; begin += ctx) {
      const int64_t len = std::min(ctx, n - 1 - begin);
      at::Tensor logits = model.forward(to_tensor(ids, begin, len), nullptr)[0].to(at::kDouble);  // [len, V]
      at::Tensor logp = at::log_softmax(logits, -1);
      at::Tensor targets = to_tensor(ids, begin + 1, len)[0];
      at::Tensor nll = -logp.gather(1, targets.unsqueeze(1)).squeeze(1);  // [len]
      const double* p = nll.data_ptr<double>();
      for (int64_t i = 0; i < len; ++i) {
        r.nll.push_back(p[i]);
        r.sum_nll += p[i];
      }
      r.tokens += len;
    }
  }));
  return r;
}

}  // namespace peft::models
