//
// Text generation with a KV cache (greedy, temperature, top-k, top-p, seeded)
// and teacher-forced evaluation (per-token NLL, mean loss, perplexity) over
// any CausalLm.
//
//   GenerateOptions opts;
//   opts.max_new_tokens = 64;            // temperature 0 = greedy
//   PEFT_ASSIGN_OR_RETURN(GenerateResult r, generate(*lm, prompt_ids, opts));
#ifndef PEFT_MODELS_GENERATE_H_
#define PEFT_MODELS_GENERATE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"

namespace peft::models {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  /// 0 = greedy (argmax); otherwise logits are divided by it before sampling.
  double temperature = 0.0;
  /// Keep only the k most likely tokens (0 = all).
  int64_t top_k = 0;
  /// Keep the smallest set of tokens whose probability reaches top_p (1 = all).
  double top_p = 1.0;
  uint64_t seed = 0;
  /// Stop after generating one of these ids (default: the config's EOS ids).
  std::vector<int64_t> stop_ids;
  bool use_config_eos = true;
};

struct GenerateResult {
  std::vector<int64_t> generated_ids;  // without the prompt; includes the stop id if hit
  bool stopped = false;                // hit a stop id
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // all steps after the first token
};

/// Generates after `prompt_ids` (batch 1). A prompt that is empty, holds an id
/// outside the vocabulary, or leaves no room in the context is an error;
/// generation ends early at the context limit. `on_token` sees each new id.
absl::StatusOr<GenerateResult> generate(CausalLm& model, const std::vector<int64_t>& prompt_ids,
                                        const GenerateOptions& options,
                                        const std::function<void(int64_t)>& on_token = nullptr);

/// Picks the next id from logits [V] (fp32) under `options`, using `rng_state`.
int64_t sample_next(const at::Tensor& logits, const GenerateOptions& options, uint64_t* rng_state);

struct EvalResult {
  std::vector<double> nll;  // per predicted position: -log p(ids[t+1] | ids[..t])
  double sum_nll = 0.0;
  int64_t tokens = 0;  // number of predicted positions
  double mean_nll() const { return tokens ? sum_nll / static_cast<double>(tokens) : 0.0; }
};

/// Teacher-forced NLL of `ids` (batch 1). Sequences longer than the context
/// are scored in consecutive windows of max_positions.
absl::StatusOr<EvalResult> evaluate_sequence(CausalLm& model, const std::vector<int64_t>& ids);

}  // namespace peft::models

#endif  // PEFT_MODELS_GENERATE_H_
