//
// A LoRA adapter as a GGUF file that llama.cpp's `--lora` loads on the GGUF
// of its base model (the layout of llama.cpp's convert_lora_to_gguf.py):
//
//   general.type = "adapter", general.architecture = the base's,
//   adapter.type = "lora", adapter.lora.alpha (float32), and per adapted
//   projection "<base tensor>.lora_a" [r, in] and ".lora_b" [out, r]
//   (PyTorch order), e.g. blk.0.attn_q.weight.lora_a.
//
// llama.cpp scales every pair by alpha / r with one alpha for the file and r
// read from each lora_b. Whatever the adapter's own scaling (rsLoRA's
// alpha / sqrt(r), rank_pattern / alpha_pattern), the file's alpha is the
// first module's s·r (for rsLoRA alpha·sqrt(r): rsLoRA folded into alpha),
// and a module whose s·r differs has the ratio folded into its B. LLaMA's q
// and k rows are permuted to ggml's interleaved RoPE layout in B (A is
// untouched: a row permutation of B·A is one of B). PiSSA/OLoRA adapters are
// written as their plain-LoRA equivalent on the original base (rank 2r, as
// `peft to-lora` does).
//
// Refused, with the alternative named: methods other than LoRA (NoRA, SORSA,
// Bone, Compacter, HSM: merge, then export the merged model), LoRA that trains
// biases (bias = all / lora_only), and a LoRA on a head tied to the embedding.
//
//   PeftModel pm(base);
//   PEFT_RETURN_IF_ERROR(pm.load_adapter(adapter_dir, "default"));
//   PEFT_ASSIGN_OR_RETURN(auto stats, export_lora_gguf(pm, "default", "adapter.gguf", options));
#ifndef PEFT_EXPORT_GGUF_LORA_H_
#define PEFT_EXPORT_GGUF_LORA_H_

#include <string>

#include "absl/status/statusor.h"
#include "models/gguf/export.h"
#include "peft/peft_model.h"

namespace peft {

/// What export_lora_gguf wrote.
struct GgufLoraStats {
  int64_t modules = 0;   // adapted projections (two tensors each)
  float alpha = 0;       // adapter.lora.alpha
  int64_t rescaled = 0;  // modules whose B carries a folded scale
  uint64_t file_bytes = 0;
};

/// Writes adapter `name` of `pm` (loaded on its base, not merged) to `path`.
/// options.dtype applies to the factors (q8_0 falls back to f16 for B, whose
/// rows are r values). Nothing appears at `path` on error.
absl::StatusOr<GgufLoraStats> export_lora_gguf(PeftModel& pm, const std::string& name, const std::string& path,
                                               const models::gguf::ExportOptions& options);

}  // namespace peft

#endif  // PEFT_EXPORT_GGUF_LORA_H_
