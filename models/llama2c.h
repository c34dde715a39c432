//
// Import of llama2.c checkpoints (Karpathy's run.c format, "version 0"
// legacy layout: a 7 x int32 header, fp32 weights, optional classifier) into a
// LlamaForCausalLM with Hugging Face conventions. llama2.c rotates adjacent
// pairs (2j, 2j+1); Hugging Face rotates halves (j, j + D/2). The q and k rows
// are permuted within each head on import, as transformers'
// convert_llama_weights_to_hf.py does, so outputs are unchanged.
//
//   PEFT_ASSIGN_OR_RETURN(std::shared_ptr<CausalLm> lm, import_llama2c("stories260K.bin"));
//   PEFT_RETURN_IF_ERROR(save_model(*lm, "out/stories260K"));
#ifndef PEFT_MODELS_LLAMA2C_H_
#define PEFT_MODELS_LLAMA2C_H_

#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"

namespace peft::models {

/// Reads a llama2.c version-0 checkpoint. The file size must match the header
/// exactly (with or without the legacy freq_cis tables); files with the
/// version-1/2 magic get an Unimplemented error.
absl::StatusOr<std::shared_ptr<CausalLm>> import_llama2c(const std::string& path);

/// Meta interleaved-pair rows -> Hugging Face rotate-half rows, per head:
/// w [heads * D, in] viewed [heads, D/2, 2, in], middle axes swapped.
at::Tensor permute_rotary_rows(const at::Tensor& w, int64_t heads);

}  // namespace peft::models

#endif  // PEFT_MODELS_LLAMA2C_H_
