//
// PeftModel wraps a CausalLm with named adapters and owns the lifecycle that
// every method shares: inject (by target), activate one adapter or a weighted
// combination, freeze the base, collect trainable parameters and extra
// losses, merge / unmerge / unload, summarise, and save or load an adapter
// directory (adapter_config.json + adapter_model.safetensors in the Hugging
// Face PEFT layout, plus peft_cpp.json with our full typed config).
//
//   PeftModel pm(lm);
//   proto::AdapterConfig c;
//   c.mutable_lora()->set_r(8);
//   c.mutable_target()->set_preset("attention");
//   PEFT_RETURN_IF_ERROR(pm.add_adapter(c, /*seed=*/0));
//   pm.freeze_base_();
//   ... train pm.model() with pm.trainable_parameters() ...
//   PEFT_RETURN_IF_ERROR(pm.save_adapter("out/adapter", "default"));
//   PEFT_RETURN_IF_ERROR(pm.merge_and_unload_());  // pm.model() is a plain model again
#ifndef PEFT_PEFT_MODEL_H_
#define PEFT_PEFT_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "models/causal_lm.h"
#include "peft/adapter.h"
#include "peft/proto/adapter_config.pb.h"
#include "peft/registry.h"
#include "peft/target.h"

namespace peft {

class PeftModel final {
 public:
  explicit PeftModel(std::shared_ptr<models::CausalLm> model);
  ~PeftModel();
  PeftModel(const PeftModel&) = delete;
  PeftModel& operator=(const PeftModel&) = delete;

  models::CausalLm& model() { return *model_; }
  std::shared_ptr<models::CausalLm> model_ptr() { return model_; }

  /// Injects adapter `config.name()` on the projections its target selects.
  /// The first adapter added becomes active. Errors: unknown method, bad
  /// options, targets that match nothing, a name already in use.
  absl::Status add_adapter(const proto::AdapterConfig& config, uint64_t seed = 0);

  /// Removes an adapter (unmerging it first if needed).
  absl::Status delete_adapter(const std::string& name);

  /// Makes `weighted` the active set: each adapter's delta is scaled by its
  /// weight and summed. Weights other than 1, or several adapters, need
  /// methods whose delta does not depend on the base weight.
  absl::Status set_active(const std::vector<std::pair<std::string, double>>& weighted);
  absl::Status set_active(const std::string& name) { return set_active({{name, 1.0}}); }
  const std::vector<std::pair<std::string, double>>& active() const { return active_; }

  std::vector<std::string> adapter_names() const;
  /// nullptr when no adapter has that name.
  const proto::AdapterConfig* config(const std::string& name) const;
  /// The projections adapter `name` sits on (empty for stream-only methods).
  std::vector<LinearTarget> targets(const std::string& name) const;

  /// Only the active adapters' parameters (and the base parameters their
  /// methods train, e.g. LoRA bias="all") require grad afterwards.
  void freeze_base_();
  /// The parameters that require grad, named (model-relative paths).
  std::vector<std::pair<std::string, at::Tensor>> trainable_parameters();
  int64_t num_trainable();
  int64_t num_parameters();

  /// Sum of the active adapters' extra loss terms (0 when none).
  at::Tensor aux_loss();
  /// Mean over adapted layers of the active adapters' regularizer() terms
  /// (0 when none), for inspection. Trainers apply SORSA's through
  /// sorsa_regularizer_step_ (peft/sorsa/regularizer_step.h), which takes
  /// each adapter's reg_mode and the gradient accumulation into account.
  at::Tensor regularizer();
  /// Forwards the optimizer step to stream adapters' schedules.
  void on_step(int64_t step);

  /// Folds the active adapters into the base weights (fp32, cast once).
  /// Fails with a message for methods that cannot be merged (Compacter).
  absl::Status merge_();
  /// Restores the base weights of a previous merge_().
  absl::Status unmerge_();
  /// merge_(), then removes every adapter: model() is a plain model.
  absl::Status merge_and_unload_();
  /// Removes every adapter without merging.
  void unload_();

  /// A per-module table (module, method, shape, trainable) with totals and
  /// the trainable percentage.
  std::string summary();

  /// Writes adapter `name` to `dir` (created; must not exist or be empty
  /// unless `overwrite`). Nothing is written on error.
  /// `convert_to_lora`: a LoRA adapter with PiSSA or OLoRA init, whose init
  /// rewrote the base weights, is written as an ordinary LoRA relative to the
  /// ORIGINAL base (PEFT's path_initial_model_for_weight_conversion): rank
  /// 2r, A' = [A; A0], B' = [B, -B0], alpha doubled, init default; it then
  /// loads on the unmodified base, in peft-cpp or PEFT, with the same outputs.
  absl::Status save_adapter(const std::string& dir, const std::string& name = "default", bool overwrite = false,
                            const std::string& base_model_name = "", bool convert_to_lora = false);

  /// Reads an adapter directory (ours or Hugging Face PEFT's LoRA/MiSS) and
  /// adds it as `name` (default: the name stored in it, else "default").
  /// Shapes must match this base; on error the model is left unchanged.
  absl::Status load_adapter(const std::string& dir, const std::string& name = "");

 private:
  struct Entry {
    proto::AdapterConfig config;
    const AdapterMethod* method = nullptr;
    std::vector<LinearTarget> targets;
    std::shared_ptr<StreamAdapter> stream;
  };
  Entry* find(const std::string& name);
  void install_hook();
  /// Every tensor adapter `name` saves, keys relative to the file root
  /// (legacy_key: the older name also accepted on load).
  /// `plain_lora`: LoRA tensors as LoraLinearImpl::plain_lora_state().
  std::vector<AdapterTensor> adapter_tensors(const std::string& name, bool plain_lora = false);

  std::shared_ptr<models::CausalLm> model_;
  std::vector<std::pair<std::string, Entry>> adapters_;
  std::vector<std::pair<std::string, double>> active_;
  bool merged_ = false;
};

}  // namespace peft

#endif  // PEFT_PEFT_MODEL_H_
