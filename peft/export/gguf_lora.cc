#include "peft/export/gguf_lora.h"

#include <cmath>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "peft/core/status.h"
#include "peft/lora/lora.h"
#include "peft/registry.h"

namespace peft {
namespace {

namespace gguf = models::gguf;

// Why a method other than plain LoRA has no llama.cpp adapter form, and what
// to do instead.
std::string alternative(const AdapterMethod& method) {
  if (method.name == "hsm") {
    return "prune it into the base and export the result instead: peft export --model=BASE --adapter=DIR --prune "
           "--format=gguf --output=FILE.gguf";
  }
  if (!method.mergeable) {
    return "it cannot be merged into the base either (it inserts non-linear modules), so llama.cpp cannot run it";
  }
  return "merge it into the base and export the merged model instead: peft export --model=BASE --adapter=DIR "
         "--format=gguf --output=FILE.gguf (without --adapter_only)";
}

}  // namespace

absl::StatusOr<GgufLoraStats> export_lora_gguf(PeftModel& pm, const std::string& name, const std::string& path,
                                               const gguf::ExportOptions& options) {
  const proto::AdapterConfig* config = pm.config(name);
  if (config == nullptr) return absl::NotFoundError(absl::StrCat("no adapter named '", name, "'"));
  PEFT_ASSIGN_OR_RETURN(const AdapterMethod* method, method_of(*config));
  if (!config->has_lora()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the adapter is ", method->name, ", which llama.cpp cannot load as a LoRA adapter; ", alternative(*method)));
  }
  if (config->lora().bias() != proto::LoraOptions::NONE) {
    return absl::FailedPreconditionError(
        absl::StrCat("the LoRA adapter trains biases (bias = ", proto::LoraOptions::Bias_Name(config->lora().bias()),
                     "), which a llama.cpp LoRA cannot carry; ", alternative(*method)));
  }
  const models::ModelConfig& mc = pm.model().config();

  // The plan: each module's factors with their names, before any data.
  struct Module {
    std::string base;  // e.g. "blk.0.attn_q.weight"
    at::Tensor a, b;   // [r, in], [out, r], fp32
    double alpha = 0;  // s · r: what llama.cpp's alpha / r must reproduce
    int64_t heads = 0;
  };
  std::vector<Module> modules;
  torch::NoGradGuard no_grad;
  for (const LinearTarget& t : pm.targets(name)) {
    if (!t.linear->options.owns_weight) {
      return absl::FailedPreconditionError(
          absl::StrCat("the adapter targets ", t.path,
                       ", whose weight is tied to the embedding; a llama.cpp LoRA cannot adapt "
                       "a tied head (llama.cpp has no separate output tensor then)"));
    }
    const auto* lora = dynamic_cast<const LoraLinearImpl*>(t.linear->adapter(name));
    if (lora == nullptr) return absl::InternalError(absl::StrCat(t.path, ": not a LoRA module"));
    Module m;
    m.base = gguf::tensor_name(mc, t.path + ".weight");
    if (m.base.empty()) return absl::InternalError(absl::StrCat(t.path, " has no llama.cpp tensor name"));
    PEFT_RETURN_IF_ERROR(status_from_torch_error(t.path.c_str(), [&] {
      if (residual_init(lora->options)) {
        // PiSSA/OLoRA rewrote the base on load; relative to the original
        // base (the one exported to GGUF) the adapter is this plain LoRA.
        std::vector<AdapterTensor> plain = lora->plain_lora_state();
        m.a = plain[0].tensor;
        m.b = plain[1].tensor;
      } else {
        m.a = lora->lora_A.detach();
        m.b = lora->lora_B.detach();
      }
      m.a = m.a.to(at::kCPU, at::kFloat).contiguous();
      m.b = m.b.to(at::kCPU, at::kFloat).contiguous();
    }));
    m.alpha = lora->scaling * static_cast<double>(m.a.size(0));
    m.heads = gguf::rotary_heads(mc, m.base);
    modules.push_back(std::move(m));
  }
  if (modules.empty()) return absl::FailedPreconditionError("the adapter adapts no projection");

  GgufLoraStats stats;
  stats.alpha = static_cast<float>(modules[0].alpha);
  if (!(stats.alpha > 0) || !std::isfinite(stats.alpha)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the adapter's scaling gives alpha = ", modules[0].alpha, "; llama.cpp needs a positive alpha"));
  }
  for (Module& m : modules) {
    const double factor = m.alpha / modules[0].alpha;
    PEFT_RETURN_IF_ERROR(status_from_torch_error(m.base.c_str(), [&] {
      // Differences below float precision are rounding, not a pattern.
      if (std::fabs(factor - 1.0) > 1e-6) {
        m.b = m.b * factor;
        ++stats.rescaled;
      }
      if (m.heads > 0) m.b = gguf::interleave_rotary_rows(m.b, m.heads);
    }));
  }

  gguf::Metadata md;
  md.add_string("general.architecture", gguf::architecture_name(mc));
  md.add_string("general.type", "adapter");
  if (!options.name.empty()) md.add_string("general.name", options.name);
  md.add_uint32("general.quantization_version", 2);
  md.add_string("adapter.type", "lora");
  md.add_float32("adapter.lora.alpha", stats.alpha);
  std::vector<gguf::TensorInfo> infos;
  for (const Module& m : modules) {
    for (const auto& [suffix, t] : {std::pair{".lora_a", m.a}, std::pair{".lora_b", m.b}}) {
      const std::string tname = m.base + suffix;
      const std::vector<int64_t> shape = t.sizes().vec();
      infos.push_back({tname, shape, gguf::storage_type(tname, shape, options.dtype)});
    }
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<gguf::GgufWriter> w,
                        gguf::GgufWriter::create(path, md, std::move(infos), gguf::WriterOptions{options.overwrite}));
  for (const Module& m : modules) {
    PEFT_RETURN_IF_ERROR(w->write_tensor(m.a.data_ptr<float>(), static_cast<size_t>(m.a.numel())));
    PEFT_RETURN_IF_ERROR(w->write_tensor(m.b.data_ptr<float>(), static_cast<size_t>(m.b.numel())));
  }
  PEFT_RETURN_IF_ERROR(w->commit());
  stats.modules = static_cast<int64_t>(modules.size());
  stats.file_bytes = w->file_bytes();
  return stats;
}

}  // namespace peft
