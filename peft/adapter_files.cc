#include "peft/adapter_files.h"

#include <filesystem>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <google/protobuf/util/json_util.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "peft/io/read_file.h"
#include "peft/io/safetensors.h"
#include "peft/peft_model.h"
#include "peft/registry.h"

namespace peft {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

constexpr const char* kPrefix = "base_model.model.";
constexpr const char* kSidecar = "peft_cpp.json";

std::string shape_str(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

// A list of strings (non-strings skipped), or an error naming `key`.
absl::StatusOr<std::vector<std::string>> string_list(const json& j, const char* key, const std::string& source) {
  std::vector<std::string> out;
  for (const json& s : j) {
    if (!s.is_string()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", key, " must hold strings"));
    out.push_back(s.get<std::string>());
  }
  return out;
}

}  // namespace

absl::StatusOr<proto::AdapterConfig> parse_hf_adapter_config(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    // e.byte: where the text stopped making sense (a truncated file ends
    // there); e.what() carries nlohmann's internal prefix, left out.
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON at byte ", e.byte, " of ", text.size(),
                                                   text.empty() ? " (the file is empty)" : ""));
  } catch (const json::out_of_range& e) {
    // A number beyond a double (1e999): nlohmann names it as "... parsing 'N'".
    const std::string what = e.what();
    const size_t open = what.find("parsing '");
    const std::string number =
        open == std::string::npos ? std::string() : what.substr(open + 9, what.size() - open - 10).substr(0, 40);
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: a number is out of range",
                                                   number.empty() ? "" : absl::StrCat(" (", number, ")")));
  } catch (const json::exception&) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON"));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  if (!j.contains("peft_type") || !j["peft_type"].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": no peft_type"));
  }
  PEFT_ASSIGN_OR_RETURN(const AdapterMethod* m, method_for_peft_type(j["peft_type"].get<std::string>()));
  if (!m->parse_config_json) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": ", m->name, " adapters are read from peft-cpp's own files only"));
  }
  proto::AdapterConfig config;
  PEFT_RETURN_IF_ERROR(m->parse_config_json(text, &config));
  proto::TargetSpec* target = config.mutable_target();
  const json& tm = j.value("target_modules", json());
  if (tm.is_string()) {
    target->set_regex(tm.get<std::string>());
  } else if (tm.is_array()) {
    PEFT_ASSIGN_OR_RETURN(std::vector<std::string> names, string_list(tm, "target_modules", source));
    for (const std::string& s : names) target->add_modules(s);
  } else if (!tm.is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": target_modules must be a list or a string"));
  }
  // PEFT: a module is excluded when its name equals an entry or ends with
  // "." + the entry: our suffix rule.
  const json& ex = j.value("exclude_modules", json());
  if (ex.is_array()) {
    PEFT_ASSIGN_OR_RETURN(std::vector<std::string> names, string_list(ex, "exclude_modules", source));
    for (const std::string& s : names) target->add_exclude(s);
  } else if (ex.is_string()) {
    return absl::UnimplementedError(
        absl::StrCat(source, ": exclude_modules as a regex is not supported (give a list)"));
  } else if (!ex.is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": exclude_modules must be a list"));
  }
  const json& lt = j.value("layers_to_transform", json());
  // A block index: an integer in [0, 1024) (config.json's layer bound), never
  // truncated (4294967296 must not become block 0).
  auto layer = [&](const json& l) -> absl::StatusOr<int> {
    const bool ok = l.is_number_integer() && !(l.is_number_unsigned() && l.get<uint64_t>() >= 1024) &&
                    l.get<int64_t>() >= 0 && l.get<int64_t>() < 1024;
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": layers_to_transform must hold block indices in [0, 1024), got ", l.dump()));
    }
    return static_cast<int>(l.get<int64_t>());
  };
  if (lt.is_number_integer()) {
    PEFT_ASSIGN_OR_RETURN(const int l, layer(lt));
    target->add_layers(l);
  } else if (lt.is_array()) {
    for (const json& l : lt) {
      if (!l.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": layers_to_transform must hold integers"));
      }
      PEFT_ASSIGN_OR_RETURN(const int n, layer(l));
      target->add_layers(n);
    }
  } else if (!lt.is_null()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": layers_to_transform must be an integer or a list"));
  }
  return config;
}

std::vector<AdapterTensor> PeftModel::adapter_tensors(const std::string& name, bool plain_lora) {
  std::vector<AdapterTensor> out;
  Entry* e = find(name);
  auto rooted = [](const std::string& key) { return key.empty() ? key : absl::StrCat(kPrefix, key); };
  for (const LinearTarget& t : e->targets) {
    LinearAdapter* adapter = t.linear->adapter(name);
    const std::vector<AdapterTensor> state = plain_lora ? e->method->plain_lora_state(*adapter) : adapter->state();
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
    if (!e->method->plain_lora_config) {
      return absl::FailedPreconditionError(absl::StrCat("adapter '", name, "' is a ", e->method->name,
                                                        " adapter; only LoRA with init PISSA or OLORA can be saved "
                                                        "as a plain LoRA"));
    }
    absl::StatusOr<proto::AdapterConfig> plain = e->method->plain_lora_config(config);
    if (!plain.ok()) {
      return absl::Status(plain.status().code(), absl::StrCat("adapter '", name, "': ", plain.status().message()));
    }
    config = *std::move(plain);
  }
  // fan_in_fan_out: the adapted projections' own layout (GPT-2's Conv1D
  // stores [in, out]); a stream method has none.
  bool fan_in_fan_out = false;
  for (const LinearTarget& t : e->targets) fan_in_fan_out = fan_in_fan_out || t.linear->options.fan_in_fan_out;
  // adapter_config.json: the method's keys plus the keys every PEFT config
  // shares. Targets are written exactly (below), so exclusions and layer
  // filters are already applied (keys that older PEFT versions do not know,
  // such as exclude_modules for LoRA, are left out: they reject unknown keys).
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
  return io::write_directory_atomically(dir, overwrite, [&](const std::string& tmp) -> absl::Status {
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
    PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(sidecar_path));
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
    const std::string path = dir + "/adapter_config.json";
    PEFT_ASSIGN_OR_RETURN(std::string text, io::read_file(path));
    PEFT_ASSIGN_OR_RETURN(config, parse_hf_adapter_config(text, path));
  }
  const std::string name = !name_in.empty() ? name_in : (config.has_name() ? config.name() : "default");
  config.set_name(name);
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::SafetensorsFile> file,
                        io::SafetensorsFile::open(dir + "/adapter_model.safetensors"));
  // A failed load leaves the model as it was. Methods whose injection
  // rewrites the base weights of their targets (PiSSA, OLoRA, SORSA) get
  // those weights copied first; nothing else is copied (a whole-model copy
  // would double the memory of a 7B fp32 model for a plain LoRA).
  PEFT_ASSIGN_OR_RETURN(const AdapterMethod* method, method_of(config));
  std::vector<std::pair<at::Tensor, at::Tensor>> backup;
  if (method->rewrites_base && method->rewrites_base(config)) {
    absl::StatusOr<std::vector<LinearTarget>> targets = resolve_targets(*model_, config.target());
    if (!targets.ok())
      return absl::Status(targets.status().code(), absl::StrCat(dir, ": ", targets.status().message()));
    for (const LinearTarget& t : *targets) backup.emplace_back(t.linear->weight, t.linear->weight.detach().clone());
  }
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
      const at::Tensor loaded = *file->load(key);
      // A NaN or infinite adapter tensor makes every output garbage: refused
      // here, so generate and eval fail as merge does.
      TORCH_CHECK(at::isfinite(loaded).all().item<bool>(), "tensor '", key,
                  "' holds NaN or infinite values; the adapter is corrupt");
      t.copy_(loaded);
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
