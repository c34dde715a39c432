#include "peft/peft_model.h"

#include <algorithm>
#include <functional>
#include <set>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "peft/core/status.h"

namespace peft {
namespace {

std::string shape_str(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

uint64_t mix_seed(uint64_t seed, const std::string& path) {
  // Per-module seeds: the same adapter config and seed give the same init
  // whatever else is injected.
  return seed * 0x9E3779B97F4A7C15ull ^ std::hash<std::string>{}(path);
}

std::string stream_module_name(const std::string& adapter) { return "peft_" + adapter; }

}  // namespace

PeftModel::PeftModel(std::shared_ptr<models::CausalLm> model) : model_(std::move(model)) {}

PeftModel::~PeftModel() {
  if (model_) model_->set_stream_hook(nullptr);
}

PeftModel::Entry* PeftModel::find(const std::string& name) {
  for (auto& [n, e] : adapters_) {
    if (n == name) return &e;
  }
  return nullptr;
}

std::vector<std::string> PeftModel::adapter_names() const {
  std::vector<std::string> out;
  for (const auto& entry : adapters_) out.push_back(entry.first);
  return out;
}

const proto::AdapterConfig* PeftModel::config(const std::string& name) const {
  for (const auto& [n, e] : adapters_) {
    if (n == name) return &e.config;
  }
  return nullptr;
}

std::vector<LinearTarget> PeftModel::targets(const std::string& name) const {
  for (const auto& [n, e] : adapters_) {
    if (n == name) return e.targets;
  }
  return {};
}

void PeftModel::install_hook() {
  std::vector<StreamAdapter*> live;
  for (const auto& [name, weight] : active_) {
    Entry* e = find(name);
    if (e && e->stream) live.push_back(e->stream.get());
  }
  if (live.empty()) {
    model_->set_stream_hook(nullptr);
    return;
  }
  model_->set_stream_hook([live](models::HookPoint p, int64_t layer, const at::Tensor& h) {
    at::Tensor out = h;
    for (StreamAdapter* s : live) out = s->forward(p, layer, out);
    return out;
  });
}

absl::Status PeftModel::add_adapter(const proto::AdapterConfig& config, uint64_t seed) {
  if (merged_) return absl::FailedPreconditionError("unmerge before adding adapters");
  const std::string name = config.name();
  if (name.empty() || name.find('.') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("adapter name '", name, "' must be non-empty and contain no '.'"));
  }
  if (find(name) != nullptr)
    return absl::AlreadyExistsError(absl::StrCat("an adapter named '", name, "' already exists"));
  PEFT_ASSIGN_OR_RETURN(const AdapterMethod* method, method_of(config));
  PEFT_RETURN_IF_ERROR(method->validate(config));
  Entry entry;
  entry.config = config;
  entry.method = method;
  if (method->make_linear) {
    PEFT_ASSIGN_OR_RETURN(entry.targets, resolve_targets(*model_, config.target()));
    // Check every target before building anything: building may rewrite
    // base weights (PiSSA, SORSA), so it must not fail half-way.
    if (method->check_target) {
      for (const LinearTarget& t : entry.targets) PEFT_RETURN_IF_ERROR(method->check_target(config, t));
    }
    std::vector<std::shared_ptr<LinearAdapter>> made;
    for (const LinearTarget& t : entry.targets) {
      absl::StatusOr<std::shared_ptr<LinearAdapter>> a;
      PEFT_RETURN_IF_ERROR(
          status_from_torch_error(t.path.c_str(), [&] { a = method->make_linear(config, t, mix_seed(seed, t.path)); }));
      if (!a.ok()) return a.status();
      made.push_back(*a);
    }
    for (size_t i = 0; i < made.size(); ++i) entry.targets[i].linear->add_adapter(name, made[i]);
  }
  if (method->make_stream) {
    PEFT_ASSIGN_OR_RETURN(entry.stream, method->make_stream(config, *model_, seed));
    const auto base_params = model_->module().parameters();
    if (!base_params.empty()) entry.stream->module()->to(base_params.front().device());
    model_->module().register_module(stream_module_name(name), entry.stream->module());
  }
  adapters_.emplace_back(name, std::move(entry));
  if (active_.empty()) PEFT_RETURN_IF_ERROR(set_active(name));
  return absl::OkStatus();
}

absl::Status PeftModel::delete_adapter(const std::string& name) {
  Entry* e = find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no adapter named '", name, "'"));
  for (const LinearTarget& t : e->targets) t.linear->remove_adapter_(name);
  if (e->stream) model_->module().unregister_module(stream_module_name(name));
  active_.erase(std::remove_if(active_.begin(), active_.end(), [&](const auto& a) { return a.first == name; }),
                active_.end());
  adapters_.erase(std::find_if(adapters_.begin(), adapters_.end(), [&](const auto& a) { return a.first == name; }));
  install_hook();
  return absl::OkStatus();
}

absl::Status PeftModel::set_active(const std::vector<std::pair<std::string, double>>& weighted) {
  if (merged_) return absl::FailedPreconditionError("unmerge before changing the active adapters");
  std::set<std::string> seen;
  for (const auto& [name, w] : weighted) {
    Entry* e = find(name);
    if (e == nullptr) return absl::NotFoundError(absl::StrCat("no adapter named '", name, "'"));
    if (!seen.insert(name).second) return absl::InvalidArgumentError(absl::StrCat("adapter '", name, "' listed twice"));
    if (e->stream) {
      if (w != 1.0) {
        return absl::InvalidArgumentError(
            absl::StrCat("adapter '", name, "' (", e->method->name, ") cannot be scaled by a weight"));
      }
      continue;
    }
    // A delta that depends on the base weight cannot be scaled or summed
    // with another adapter's delta on the same projection.
    for (const LinearTarget& t : e->targets) {
      if (t.linear->adapter(name)->additive()) continue;
      bool shared = false;
      for (const auto& other : weighted) {
        if (other.first != name && t.linear->adapter(other.first) != nullptr) shared = true;
      }
      if (w != 1.0 || shared) {
        return absl::InvalidArgumentError(absl::StrCat("adapter '", name, "' (", e->method->name,
                                                       ") depends on the base weight and cannot be combined"));
      }
    }
  }
  // Per projection: the active adapters that sit on it.
  for (const LinearTarget& t : adaptable_modules(*model_)) {
    std::vector<std::pair<std::string, double>> here;
    for (const auto& a : weighted) {
      if (t.linear->adapter(a.first) != nullptr) here.push_back(a);
    }
    t.linear->set_active(here);
  }
  active_ = weighted;
  install_hook();
  return absl::OkStatus();
}

void PeftModel::freeze_base_() {
  std::set<std::string> base_names;
  for (const models::HfParameter& p : model_->hf_parameters()) base_names.insert(p.hf_name);
  std::set<std::string> active_names;
  for (const auto& a : active_) active_names.insert(a.first);
  for (const auto& item : model_->module().named_parameters(/*recurse=*/true)) {
    const std::string& n = item.key();
    bool train = false;
    if (base_names.count(n)) {
      for (const auto& [name, e] : adapters_) {
        if (active_names.count(name) && e.method->trains_base_param &&
            e.method->trains_base_param(e.config, n, e.targets)) {
          train = true;
        }
      }
    } else {
      // An adapter tensor: "<path>.<adapter>.<...>" or "peft_<adapter>.<...>".
      for (const std::string& a : active_names) {
        if (n.find("." + a + ".") != std::string::npos || n.rfind(stream_module_name(a) + ".", 0) == 0) train = true;
      }
    }
    item.value().set_requires_grad(train);
  }
}

std::vector<std::pair<std::string, at::Tensor>> PeftModel::trainable_parameters() {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (const auto& item : model_->module().named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) out.emplace_back(item.key(), item.value());
  }
  return out;
}

int64_t PeftModel::num_trainable() {
  int64_t n = 0;
  for (const auto& p : trainable_parameters()) n += p.second.numel();
  return n;
}

int64_t PeftModel::num_parameters() {
  int64_t n = 0;
  for (const auto& item : model_->module().named_parameters(/*recurse=*/true)) n += item.value().numel();
  return n;
}

at::Tensor PeftModel::aux_loss() {
  at::Tensor total = at::zeros({}, at::kFloat);
  for (const auto& [name, w] : active_) {
    Entry* e = find(name);
    for (const LinearTarget& t : e->targets) {
      at::Tensor l = t.linear->adapter(name)->aux_loss();
      if (l.defined()) total = total + l;
    }
    if (e->stream) {
      at::Tensor l = e->stream->aux_loss();
      if (l.defined()) total = total + l;
    }
  }
  return total;
}

at::Tensor PeftModel::regularizer() {
  at::Tensor total = at::zeros({}, at::kFloat);
  int64_t n = 0;
  for (const auto& [name, w] : active_) {
    for (const LinearTarget& t : find(name)->targets) {
      at::Tensor r = t.linear->adapter(name)->regularizer();
      if (!r.defined()) continue;
      total = total + r;
      ++n;
    }
  }
  return n > 0 ? total / static_cast<double>(n) : total;
}

void PeftModel::on_step(int64_t step) {
  for (auto& [name, e] : adapters_) {
    if (e.stream) e.stream->on_step(step);
  }
}

absl::Status PeftModel::merge_() {
  if (merged_) return absl::FailedPreconditionError("the active adapters are already merged");
  for (const auto& [name, w] : active_) {
    Entry* e = find(name);
    if (!e->method->mergeable) {
      return absl::FailedPreconditionError(absl::StrCat("adapter '", name, "' (", e->method->name,
                                                        ") cannot be merged into the base weights: it inserts "
                                                        "non-linear modules; save the adapter instead"));
    }
    for (const LinearTarget& t : e->targets) {
      if (!t.linear->options.owns_weight) {
        return absl::FailedPreconditionError(absl::StrCat("adapter '", name, "' targets ", t.path,
                                                          ", whose weight is tied to the embedding; merging would "
                                                          "change the embedding too"));
      }
    }
  }
  for (const auto& entry : active_) {
    // Named members, not a structured binding: C++17 lambdas cannot capture one (clang refuses).
    const auto& name = entry.first;
    const auto& w = entry.second;
    for (const LinearTarget& t : find(name)->targets) {
      PEFT_RETURN_IF_ERROR(status_from_torch_error(t.path.c_str(), [&] { t.linear->merge_(name, w); }));
    }
  }
  merged_ = true;
  return absl::OkStatus();
}

absl::Status PeftModel::unmerge_() {
  if (!merged_) return absl::FailedPreconditionError("nothing is merged");
  for (auto it = active_.rbegin(); it != active_.rend(); ++it) {
    for (const LinearTarget& t : find(it->first)->targets) {
      PEFT_RETURN_IF_ERROR(status_from_torch_error(t.path.c_str(), [&] { t.linear->unmerge_last_(); }));
    }
  }
  merged_ = false;
  return absl::OkStatus();
}

absl::Status PeftModel::merge_and_unload_() {
  PEFT_RETURN_IF_ERROR(merge_());
  // Drop the adapters but keep the merged weights.
  for (const LinearTarget& t : adaptable_modules(*model_)) t.linear->forget_adapters_();
  for (auto& [name, e] : adapters_) {
    if (e.stream) model_->module().unregister_module(stream_module_name(name));
  }
  adapters_.clear();
  active_.clear();
  merged_ = false;
  install_hook();
  return absl::OkStatus();
}

void PeftModel::unload_() {
  if (merged_) (void)unmerge_();
  for (const std::string& n : adapter_names()) (void)delete_adapter(n);
}

std::string PeftModel::summary() {
  std::string out =
      absl::StrFormat("%-52s %-10s %-8s %14s %12s\n", "module", "adapter", "method", "shape", "trainable");
  for (const auto& [name, e] : adapters_) {
    for (const LinearTarget& t : e.targets) {
      int64_t n = 0;
      for (const auto& p : t.linear->adapter(name)->module()->parameters()) n += p.numel();
      absl::StrAppend(&out, absl::StrFormat("%-52s %-10s %-8s %14s %12d\n", t.path, name, e.method->name,
                                            shape_str(t.linear->weight.sizes()), n));
    }
    if (e.stream) {
      int64_t n = 0;
      for (const auto& p : e.stream->module()->parameters()) n += p.numel();
      absl::StrAppend(&out, absl::StrFormat("%-52s %-10s %-8s %14s %12d\n", stream_module_name(name), name,
                                            e.method->name, "(stream)", n));
    }
  }
  const int64_t trainable = num_trainable(), total = num_parameters();
  absl::StrAppend(&out, absl::StrFormat("trainable params: %d || all params: %d || trainable%%: %.4f\n", trainable,
                                        total, total ? 100.0 * trainable / total : 0.0));
  return out;
}

}  // namespace peft
