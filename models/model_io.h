//
// Creating, initialising, loading and saving models as Hugging Face model
// directories (config.json + model.safetensors or sharded safetensors).
//
//   PEFT_ASSIGN_OR_RETURN(std::shared_ptr<CausalLm> lm, load_model("/models/llama"));
//   PEFT_RETURN_IF_ERROR(save_model(*lm, "/out/llama-copy", SaveOptions{}));
//
// Loading streams each tensor from the memory-mapped file into its parameter
// and drops the file pages right after, so peak memory stays near one copy of
// the weights. Saving writes into a temporary sibling directory and renames it
// into place at the end: on any error no output directory appears.
#ifndef PEFT_MODELS_MODEL_IO_H_
#define PEFT_MODELS_MODEL_IO_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <c10/core/ScalarType.h>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "models/config.h"

namespace peft::models {

struct CreateOptions {
  /// The dtype the caller will store the weights in: the memory check counts
  /// the parameters at its size (a bf16 base needs half of float32's).
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// Refuse a model whose weights cannot fit the available memory. Off only
  /// for a model whose weights are never touched (uninitialised pages take
  /// no memory: counting adapter parameters for a memory plan).
  bool check_memory = true;
};

/// A model of the configured architecture with uninitialised parameters.
absl::StatusOr<std::shared_ptr<CausalLm>> create_model(const ModelConfig& config, const CreateOptions& options = {});

/// Deterministic random init from `seed`: projections and embeddings
/// N(0, std), biases 0, norm weights 1 (transformers' _init_weights).
void init_weights_(CausalLm& model, uint64_t seed, double std = 0.02);

struct LoadOptions {
  /// dtype of the parameters in memory (the file's dtype is converted).
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// Only the weight matrices (projections, embeddings: two or more
  /// dimensions) take `dtype`; norms and biases stay float32 and so does
  /// the residual stream (embeddings return float32 rows). The storage of a
  /// frozen base under training (training.base_dtype).
  bool matrices_only = false;
};

/// What load_model saw besides the parameters it needed.
struct LoadReport {
  /// Known leftovers transformers also skips (rotary inv_freq, GPT-2 attn.bias
  /// masks, lm_head.weight of a tied model).
  std::vector<std::string> ignored_tensors;
  /// Other tensors in the file that no parameter uses (transformers warns
  /// "Some weights of the checkpoint were not used"); callers should warn.
  std::vector<std::string> unexpected_tensors;
};

/// Loads `dir` (config.json + safetensors). Errors name the missing tensor,
/// the shape mismatch (file vs config) or the file problem.
absl::StatusOr<std::shared_ptr<CausalLm>> load_model(const std::string& dir, const LoadOptions& options = {},
                                                     LoadReport* report = nullptr);

struct SaveOptions {
  /// dtype written to the files and to config.json's torch_dtype.
  c10::ScalarType dtype = c10::ScalarType::Float;
  /// Shard the weights above this many bytes (model-0000k-of-0000n).
  uint64_t max_shard_bytes = 5ull << 30;
  /// Replace an existing non-empty directory.
  bool overwrite = false;
  /// Extra files copied into the directory: {source path, name inside the
  /// directory} (e.g. {"tok512.model", "tokenizer.model"}).
  std::vector<std::pair<std::string, std::string>> extra_files;
};

/// The tokenizer and generation files that travel with a model: for a
/// directory, those of tokenizer.model, tokenizer.json, tokenizer_config.json,
/// special_tokens_map.json, vocab.json, merges.txt, encoder.json, vocab.bpe,
/// tokenizer.bin and generation_config.json that it holds; for a file, the
/// file itself. As SaveOptions::extra_files entries {source, name}.
std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& path);

/// What an export of `model_dir` carries along: its tokenizer_files, or, when
/// `tokenizer` (a file or directory) is given and is not model_dir, that
/// tokenizer's files plus model_dir's generation_config.json (never a mix of
/// two tokenizers).
std::vector<std::pair<std::string, std::string>> export_files(const std::string& model_dir,
                                                              const std::string& tokenizer = "");

/// Writes a Hugging Face model directory that transformers and load_model read.
absl::Status save_model(CausalLm& model, const std::string& dir, const SaveOptions& options = {});

/// "float32", "bfloat16", "float16" <-> dtype.
absl::StatusOr<c10::ScalarType> dtype_from_name(const std::string& name);
std::string dtype_name(c10::ScalarType dtype);

}  // namespace peft::models

#endif  // PEFT_MODELS_MODEL_IO_H_
