// libFuzzer harness: a llama2.c checkpoint (header and fp32 weights) as
// import_llama2c reads it (it takes a path: the input is written to a
// scratch file), then one forward pass of the imported model over two
// tokens. Any input must give a model or a Status, never a crash or a
// sanitizer report; a model it gives has finite weights, as every loader
// of model weights promises (docs/reliability.md).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz/fuzz_files.h"
#include "models/llama2c.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      peft::fuzz::write_scratch("model.bin", std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::shared_ptr<peft::models::CausalLm>> lm = peft::models::import_llama2c(path);
  if (!lm.ok()) return 0;
  torch::NoGradGuard no_grad;
  for (const peft::models::HfParameter& p : (*lm)->hf_parameters()) {
    if (!at::isfinite(p.tensor).all().item<bool>()) __builtin_trap();
  }
  const int64_t vocab = (*lm)->config().llama.vocab_size;
  const int64_t n = std::min<int64_t>(2, (*lm)->config().llama.max_position_embeddings);
  const at::Tensor ids = at::tensor({vocab - 1, int64_t{0}}, at::kLong).narrow(0, 0, n).reshape({1, n});
  const at::Tensor logits = (*lm)->logits_from_hidden((*lm)->forward_hidden(ids, nullptr));
  if (logits.size(-1) != vocab) __builtin_trap();
  return 0;
}
