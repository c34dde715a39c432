#include "peft/target.h"

#include <algorithm>
#include <regex>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace peft {
namespace {

bool matches_suffix(const std::string& path, const std::string& entry) {
  return path == entry ||
         (path.size() > entry.size() && path.compare(path.size() - entry.size(), entry.size(), entry) == 0 &&
          path[path.size() - entry.size() - 1] == '.');
}

int64_t layer_of(const std::string& path) {
  for (const char* key : {".layers.", ".h."}) {
    size_t at = path.find(key);
    if (at == std::string::npos) continue;
    at += std::string(key).size();
    size_t end = path.find('.', at);
    return std::stoll(path.substr(at, end - at));
  }
  return -1;
}

std::string short_name(const std::string& path) {
  // GPT-2 has two c_proj (attn and mlp): keep the parent to tell them apart
  // in listings, but PEFT's suffix "c_proj" matches both.
  return path.substr(path.rfind('.') + 1);
}

absl::StatusOr<std::vector<std::string>> preset_modules(const std::string& preset, models::Architecture arch) {
  const bool llama = arch == models::Architecture::kLlama;
  if (preset == "attention") {
    if (llama) return std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj"};
    return std::vector<std::string>{"attn.c_attn", "attn.c_proj"};
  }
  if (preset == "mlp") {
    if (llama) return std::vector<std::string>{"gate_proj", "up_proj", "down_proj"};
    return std::vector<std::string>{"mlp.c_fc", "mlp.c_proj"};
  }
  if (preset == "all_linear" || preset == "gpt2") {
    if (llama) return std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
    return std::vector<std::string>{"c_attn", "c_proj", "c_fc"};
  }
  if (preset == "default") {  // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    if (llama) return std::vector<std::string>{"q_proj", "v_proj"};
    return std::vector<std::string>{"c_attn"};
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown target preset '", preset, "' (attention, mlp, all_linear, default)"));
}

}  // namespace

std::vector<LinearTarget> adaptable_modules(models::CausalLm& model) {
  std::vector<LinearTarget> out;
  for (const auto& item : model.module().named_modules("", /*include_self=*/false)) {
    if (auto* lin = dynamic_cast<AdaptableLinearImpl*>(item.value().get())) {
      out.push_back(LinearTarget{item.key(), layer_of(item.key()), lin});
    }
  }
  return out;
}

std::vector<std::string> target_short_names(const std::vector<LinearTarget>& targets) {
  std::vector<std::string> names;
  for (const LinearTarget& t : targets) {
    const std::string s = short_name(t.path);
    if (std::find(names.begin(), names.end(), s) == names.end()) names.push_back(s);
  }
  return names;
}

absl::StatusOr<std::vector<LinearTarget>> resolve_targets(models::CausalLm& model, const proto::TargetSpec& spec) {
  const std::vector<LinearTarget> all = adaptable_modules(model);
  std::set<std::string> available_set;
  for (const LinearTarget& t : all) available_set.insert(short_name(t.path));
  const std::string available = absl::StrJoin(available_set, ", ");

  std::vector<std::string> entries(spec.modules().begin(), spec.modules().end());
  if (spec.has_preset()) {
    absl::StatusOr<std::vector<std::string>> p = preset_modules(spec.preset(), model.config().arch);
    if (!p.ok()) return p.status();
    entries.insert(entries.end(), p->begin(), p->end());
  }
  const bool use_regex = entries.empty() && spec.has_regex();
  if (entries.empty() && !use_regex) {
    absl::StatusOr<std::vector<std::string>> p = preset_modules("default", model.config().arch);
    entries = *p;
  }
  std::regex re;
  if (use_regex) {
    try {
      re = std::regex(spec.regex());
    } catch (const std::regex_error& e) {
      return absl::InvalidArgumentError(absl::StrCat("target regex '", spec.regex(), "' is invalid: ", e.what()));
    }
  }
  const int64_t layers = model.config().num_layers();
  for (int32_t l : spec.layers()) {
    if (l < 0 || l >= layers) {
      return absl::InvalidArgumentError(absl::StrCat("target layer ", l, " is outside the model's 0..", layers - 1));
    }
  }
  for (const std::string& e : entries) {
    if (std::none_of(all.begin(), all.end(), [&](const LinearTarget& t) { return matches_suffix(t.path, e); })) {
      return absl::InvalidArgumentError(
          absl::StrCat("target module '", e, "' matches no module of this ", model.config().model_type(),
                       " model; available: ", available));
    }
  }
  std::vector<LinearTarget> out;
  for (const LinearTarget& t : all) {
    const bool hit = use_regex ? std::regex_match(t.path, re)
                               : std::any_of(entries.begin(), entries.end(),
                                             [&](const std::string& e) { return matches_suffix(t.path, e); });
    if (!hit) continue;
    if (spec.layers_size() > 0 &&
        std::find(spec.layers().begin(), spec.layers().end(), static_cast<int32_t>(t.layer)) == spec.layers().end()) {
      continue;
    }
    if (std::any_of(spec.exclude().begin(), spec.exclude().end(),
                    [&](const std::string& e) { return matches_suffix(t.path, e); })) {
      continue;
    }
    out.push_back(t);
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the adapter targets match no module", use_regex ? absl::StrCat(" (regex '", spec.regex(), "')") : "",
        "; available: ", available));
  }
  return out;
}

}  // namespace peft
