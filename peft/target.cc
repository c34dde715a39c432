#include "peft/target.h"

#include <algorithm>
#include <regex>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace peft {
namespace {

bool matches_suffix(const std::string& path, const std::string& entry) {
  return path == entry ||
         (path.size() > entry.size() && path.compare(path.size() - entry.size(), entry.size(), entry) == 0 &&
          path[path.size() - entry.size() - 1] == '.');
}

std::string short_name(const std::string& path) {
  // GPT-2 has two c_proj (attn and mlp): keep the parent to tell them apart
  // in listings, but PEFT's suffix "c_proj" matches both.
  return path.substr(path.rfind('.') + 1);
}

// The model lists its presets (models/causal_lm.h); an unknown name is an
// error listing the ones it has.
absl::StatusOr<std::vector<std::string>> preset_modules(const std::string& preset, const models::CausalLm& model) {
  std::vector<std::string> modules = model.target_preset(preset);
  if (!modules.empty()) return modules;
  std::vector<std::string> names;
  for (const models::TargetPreset& p : model.target_presets()) names.push_back(p.name);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown target preset '", preset, "' (", absl::StrJoin(names, ", "), ")"));
}

}  // namespace

std::vector<LinearTarget> adaptable_modules(models::CausalLm& model) { return model.adaptable_slots(); }

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
    absl::StatusOr<std::vector<std::string>> p = preset_modules(spec.preset(), model);
    if (!p.ok()) return p.status();
    entries.insert(entries.end(), p->begin(), p->end());
  }
  const bool use_regex = entries.empty() && spec.has_regex();
  if (entries.empty() && !use_regex) {
    absl::StatusOr<std::vector<std::string>> p = preset_modules("default", model);
    if (!p.ok()) return p.status();
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
      return absl::InvalidArgumentError(absl::StrCat("target module '", e, "' matches no module of this ",
                                                     model.config().model_type(), " model; available: ", available));
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
    return absl::InvalidArgumentError(absl::StrCat("the adapter targets match no module",
                                                   use_regex ? absl::StrCat(" (regex '", spec.regex(), "')") : "",
                                                   "; available: ", available));
  }
  return out;
}

}  // namespace peft
