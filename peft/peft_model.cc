#include "peft/peft_model.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>

#include <ATen/ATen.h>
#include <google/protobuf/util/json_util.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/io/safetensors.h"
#include "peft/lora/lora.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kSidecar = "peft_cpp.json";

std::string shape_str(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

uint64_t mix_seed(uint64_t seed, const std::string& path) {
  // Per-module seeds: the same adapter config and seed give the same init
  // whatever else is injected.
  return seed * 0x9E3779B97F4A7C15ull ^ std::hash<std::string>{}(path);
}

std::string stream_module_name(const std::string& adapter) { return "peft_" + adapter; }

absl::StatusOr<std::string> read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

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
  if (find(name) != nullptr) return absl::AlreadyExistsError(absl::StrCat("an adapter named '", name, "' already exists"));
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
        return absl::InvalidArgumentError(absl::StrCat("adapter '", name, "' (", e->method->name,
                                                       ") cannot be scaled by a weight"));
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
  for (const auto& [name, w] : active_) {
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
  std::string out = absl::StrFormat("%-52s %-10s %-8s %14s %12s\n", "module", "adapter", "method", "shape", "trainable");
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

std::vector<AdapterTensor> PeftModel::adapter_tensors(const std::string& name, bool plain_lora) {
  std::vector<AdapterTensor> out;
  Entry* e = find(name);
  auto rooted = [](const std::string& key) { return key.empty() ? key : absl::StrCat(kPrefix, key); };
  for (const LinearTarget& t : e->targets) {
    LinearAdapter* adapter = t.linear->adapter(name);
    const std::vector<AdapterTensor> state =
        plain_lora ? dynamic_cast<LoraLinearImpl&>(*adapter).plain_lora_state() : adapter->state();
    for (const AdapterTensor& a : state) {
      out.push_back({absl::StrCat(kPrefix, t.path, ".", a.key), a.tensor,
                     a.legacy_key.empty() ? "" : absl::StrCat(kPrefix, t.path, ".", a.legacy_key)});
    }
  }
  if (e->stream) {
    for (const AdapterTensor& a : e->stream->state()) out.push_back({rooted(a.key), a.tensor, rooted(a.legacy_key)});
  }
  // Base parameters the method trains (biases, norms) travel with it. PEFT
  // wraps every adapted module, so a parameter of one (LoRA's bias "all" or
  // "lora_only") is "<module>.base_layer.<name>" in its state dict; under
  // the plain name PEFT would drop it silently (it loads with strict=False).
  // peft-cpp wrote the plain name before, so it is still read.
  for (const models::HfParameter& p : model_->hf_parameters()) {
    if (!e->method->trains_base_param || !e->method->trains_base_param(e->config, p.hf_name, e->targets)) continue;
    std::string key = p.hf_name, legacy;
    for (const LinearTarget& t : e->targets) {
      if (p.hf_name.size() > t.path.size() && p.hf_name.compare(0, t.path.size() + 1, t.path + ".") == 0) {
        key = absl::StrCat(t.path, ".base_layer.", p.hf_name.substr(t.path.size() + 1));
        legacy = p.hf_name;
        break;
      }
    }
    out.push_back({rooted(key), p.tensor, rooted(legacy)});
  }
  return out;
}

absl::Status PeftModel::save_adapter(const std::string& dir, const std::string& name, bool overwrite,
                                     const std::string& base_model_name, bool convert_to_lora) {
  Entry* e = find(name);
  if (e == nullptr) return absl::NotFoundError(absl::StrCat("no adapter named '", name, "'"));
  if (merged_) return absl::FailedPreconditionError("unmerge before saving an adapter");
  // The config written: the adapter's own, or its plain-LoRA form.
  proto::AdapterConfig config = e->config;
  if (convert_to_lora) {
    if (config.method_case() != proto::AdapterConfig::kLora) {
      return absl::FailedPreconditionError(absl::StrCat("adapter '", name, "' is a ", e->method->name,
                                                        " adapter; only LoRA with init PISSA or OLORA can be saved "
                                                        "as a plain LoRA"));
    }
    absl::StatusOr<proto::LoraOptions> plain = lora_plain_options(config.lora());
    if (!plain.ok()) {
      return absl::Status(plain.status().code(), absl::StrCat("adapter '", name, "': ", plain.status().message()));
    }
    *config.mutable_lora() = *plain;
  }
  const bool fan_in_fan_out = model_->config().arch == models::Architecture::kGpt2;
  // adapter_config.json: the method's keys plus PEFT's common ones.
  json cfg = json::parse(e->method->config_json(config, fan_in_fan_out));
  cfg["peft_type"] = e->method->peft_type(config);
  cfg["task_type"] = "CAUSAL_LM";
  cfg["base_model_name_or_path"] = base_model_name;
  cfg["inference_mode"] = true;
  if (!e->targets.empty()) {
    // A plain suffix list when it selects exactly these modules, else an
    // exact regex (PEFT full-matches a string target_modules).
    std::vector<std::string> shorts = target_short_names(e->targets);
    proto::TargetSpec plain;
    for (const std::string& s : shorts) plain.add_modules(s);
    absl::StatusOr<std::vector<LinearTarget>> again = resolve_targets(*model_, plain);
    if (again.ok() && again->size() == e->targets.size()) {
      cfg["target_modules"] = shorts;
    } else {
      std::vector<std::string> escaped;
      for (const LinearTarget& t : e->targets) {
        std::string s;
        for (char c : t.path) s += (c == '.') ? std::string("\\.") : std::string(1, c);
        escaped.push_back(s);
      }
      cfg["target_modules"] = absl::StrCat("^(", absl::StrJoin(escaped, "|"), ")$");
    }
  }
  std::string proto_json;
  google::protobuf::util::JsonPrintOptions popts;
  popts.preserve_proto_field_names = true;
  popts.always_print_primitive_fields = false;
  if (!google::protobuf::util::MessageToJsonString(config, &proto_json, popts).ok()) {
    return absl::InternalError("cannot serialise the adapter config");
  }
  json sidecar;
  sidecar["format"] = "peft-cpp adapter";
  sidecar["version"] = 1;
  sidecar["method"] = e->method->name;
  sidecar["config"] = json::parse(proto_json);
  std::vector<std::string> paths;
  for (const LinearTarget& t : e->targets) paths.push_back(t.path);
  sidecar["targets"] = paths;

  std::vector<io::NamedTensor> tensors;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("collect adapter tensors", [&] {
    for (const AdapterTensor& a : adapter_tensors(name, convert_to_lora)) {
      tensors.push_back({a.key, a.tensor.detach().to(at::kCPU).contiguous()});
    }
  }));
  return models::write_directory_atomically(dir, overwrite, [&](const std::string& tmp) -> absl::Status {
    PEFT_RETURN_IF_ERROR(io::write_file_atomically(tmp + "/adapter_config.json", cfg.dump(2) + "\n"));
    PEFT_RETURN_IF_ERROR(io::write_file_atomically(tmp + "/" + kSidecar, sidecar.dump(2) + "\n"));
    return io::save_safetensors(tmp + "/adapter_model.safetensors", tensors);
  });
}

absl::Status PeftModel::load_adapter(const std::string& dir, const std::string& name_in) {
  proto::AdapterConfig config;
  const std::string sidecar_path = dir + "/" + kSidecar;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat("adapter directory ", dir, " not found"));
  if (fs::exists(sidecar_path, ec)) {
    PEFT_ASSIGN_OR_RETURN(std::string text, read_text(sidecar_path));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.contains("config")) {
      return absl::InvalidArgumentError(absl::StrCat(sidecar_path, ": not a peft-cpp adapter description"));
    }
    google::protobuf::util::JsonParseOptions popts;
    popts.ignore_unknown_fields = false;
    auto st = google::protobuf::util::JsonStringToMessage(j["config"].dump(), &config, popts);
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat(sidecar_path, ": ", st.ToString()));
  } else {
    // A Hugging Face PEFT directory.
    PEFT_ASSIGN_OR_RETURN(std::string text, read_text(dir + "/adapter_config.json"));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("peft_type") || !j["peft_type"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, "/adapter_config.json: no peft_type"));
    }
    PEFT_ASSIGN_OR_RETURN(const AdapterMethod* m, method_for_peft_type(j["peft_type"].get<std::string>()));
    if (!m->parse_config_json) {
      return absl::UnimplementedError(absl::StrCat(dir, ": ", m->name, " adapters are read from peft-cpp's own files only"));
    }
    PEFT_RETURN_IF_ERROR(m->parse_config_json(text, &config));
    const json& tm = j.value("target_modules", json());
    if (tm.is_string()) {
      config.mutable_target()->set_regex(tm.get<std::string>());
    } else if (tm.is_array()) {
      for (const json& s : tm) {
        if (s.is_string()) config.mutable_target()->add_modules(s.get<std::string>());
      }
    }
    if (j.contains("layers_to_transform") && j["layers_to_transform"].is_array()) {
      for (const json& l : j["layers_to_transform"]) {
        if (l.is_number_integer()) config.mutable_target()->add_layers(l.get<int>());
      }
    }
  }
  const std::string name = !name_in.empty() ? name_in : (config.has_name() ? config.name() : "default");
  config.set_name(name);
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::SafetensorsFile> file,
                        io::SafetensorsFile::open(dir + "/adapter_model.safetensors"));
  // Snapshot base weights the injection may rewrite (PiSSA, SORSA) so a
  // failed load restores them.
  std::vector<std::pair<at::Tensor, at::Tensor>> backup;
  for (const models::HfParameter& p : model_->hf_parameters()) backup.emplace_back(p.tensor, p.tensor.detach().clone());
  auto restore = [&] {
    torch::NoGradGuard no_grad;
    for (auto& [t, copy] : backup) t.copy_(copy);
  };
  absl::Status st = add_adapter(config, 0);
  if (!st.ok()) {
    restore();
    return absl::Status(st.code(), absl::StrCat(dir, ": ", st.message()));
  }
  std::set<std::string> expected;
  st = status_from_torch_error("load adapter tensors", [&] {
    torch::NoGradGuard no_grad;
    for (AdapterTensor& a : adapter_tensors(name)) {
      std::string key = a.key;
      at::Tensor& t = a.tensor;
      const io::TensorInfo* info = file->find(key);
      if (info == nullptr && !a.legacy_key.empty() && (info = file->find(a.legacy_key)) != nullptr) key = a.legacy_key;
      expected.insert(key);
      TORCH_CHECK(info != nullptr, "the adapter file lacks tensor '", a.key, "'");
      TORCH_CHECK(info->shape == t.sizes().vec(), "tensor '", key, "' has shape ", shape_str(info->shape),
                  " in the adapter but this base model needs ", shape_str(t.sizes()),
                  ": was the adapter made for a different base model?");
      t.copy_(*file->load(key));
    }
    for (const io::TensorInfo& info : file->tensors()) {
      TORCH_CHECK(expected.count(info.name), "the adapter file has tensor '", info.name,
                  "' that this model and adapter config do not use (different base model?)");
    }
  });
  if (!st.ok()) {
    (void)delete_adapter(name);
    restore();
    std::string msg(st.message());
    if (size_t nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    return absl::InvalidArgumentError(absl::StrCat(dir, ": ", msg));
  }
  return absl::OkStatus();
}

}  // namespace peft
