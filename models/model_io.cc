#include "models/model_io.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "models/gpt2.h"
#include "models/llama.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "peft/io/safetensors.h"

namespace peft::models {
namespace fs = std::filesystem;
namespace {

std::string shape_str(at::IntArrayRef s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

// Asks for transparent huge pages on a large, not yet touched buffer. With
// THP in "madvise" mode (Debian's default) first-touch page faults dominate
// loading on VMs: 3.3 s vs 1.6 s for 640 MB measured here.
void advise_huge_pages(const at::Tensor& t) {
  constexpr uintptr_t kHuge = 2u << 20;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHuge - 1) / kHuge * kHuge;
  const uintptr_t end = (p + t.nbytes()) / kHuge * kHuge;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Buffers that transformers checkpoints may carry and transformers ignores.
bool ignorable(const std::string& name) {
  return ends_with(name, "rotary_emb.inv_freq") || ends_with(name, "attn.bias") ||
         ends_with(name, "attn.masked_bias") || name == "lm_head.weight";
}

}  // namespace

absl::StatusOr<c10::ScalarType> dtype_from_name(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", name, "' (float32, bfloat16, float16)"));
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    default: return "float32";
  }
}

absl::StatusOr<std::shared_ptr<CausalLm>> create_model(const ModelConfig& config, const CreateOptions& options) {
  PEFT_RETURN_IF_ERROR(validate_model_config(config));
  // Before allocating: a config whose weights (in the dtype they will be
  // stored in, and the RoPE table) cannot fit in this machine's available
  // memory is refused with the numbers, instead of allocating until the
  // kernel kills the process.
  const double params = estimated_parameters(config);
  const double need =
      estimated_model_bytes(config) - params * (4.0 - static_cast<double>(c10::elementSize(options.dtype)));
  const int64_t avail = available_memory_bytes();
  if (options.check_memory && avail > 0 && need > static_cast<double>(avail)) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "config.json: this model needs about %.1f GB in %s (%.3g parameters) but %.1f GB of memory is available",
        need / 1e9, dtype_name(options.dtype), params, static_cast<double>(avail) / 1e9));
  }
  std::shared_ptr<CausalLm> lm;
  PEFT_RETURN_IF_ERROR(status_from_torch_error("create model", [&] {
    if (config.arch == Architecture::kLlama) {
      lm = std::make_shared<LlamaForCausalLMImpl>(config);
    } else {
      lm = std::make_shared<Gpt2LMHeadModelImpl>(config);
    }
  }));
  return lm;
}

void init_weights_(CausalLm& model, uint64_t seed, double std) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  torch::NoGradGuard no_grad;
  for (const auto& item : model.module().named_modules("", /*include_self=*/false)) {
    torch::nn::Module* m = item.value().get();
    if (auto* norm = dynamic_cast<RmsNormImpl*>(m)) {
      norm->weight.fill_(1.0);
    } else if (auto* ln = dynamic_cast<LayerNormImpl*>(m)) {
      ln->weight.fill_(1.0);
      ln->bias.zero_();
    } else if (auto* emb = dynamic_cast<EmbeddingImpl*>(m)) {
      emb->weight.normal_(0.0, std, gen);
    } else if (auto* lin = dynamic_cast<AdaptableLinearImpl*>(m)) {
      if (lin->options.owns_weight) lin->weight.normal_(0.0, std, gen);
      if (lin->bias.defined()) lin->bias.zero_();
    }
  }
}

absl::StatusOr<std::shared_ptr<CausalLm>> load_model(const std::string& dir, const LoadOptions& options,
                                                     LoadReport* report) {
  PEFT_ASSIGN_OR_RETURN(ModelConfig config, read_model_config(dir));
  CreateOptions create;
  create.dtype = options.dtype;
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<CausalLm> lm, create_model(config, create));
  if (options.dtype != at::kFloat) {
    // Fresh storage in the target dtype, never touched before the file is
    // read into it: a cast of the (unread) float32 parameters would make
    // both copies resident at once.
    torch::NoGradGuard no_grad;
    for (at::Tensor& p : lm->module().parameters()) {
      if (!options.matrices_only || p.dim() >= 2) p.set_data(at::empty(p.sizes(), p.options().dtype(options.dtype)));
    }
    if (options.matrices_only) {
      for (const std::shared_ptr<torch::nn::Module>& m : lm->module().modules()) {
        if (auto* emb = dynamic_cast<EmbeddingImpl*>(m.get())) emb->output_dtype = at::kFloat;
      }
    }
  }
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::CheckpointReader> reader, io::CheckpointReader::open(dir));

  std::set<std::string> unused;
  for (const std::string& n : reader->names()) unused.insert(n);
  std::vector<std::string> missing;
  torch::NoGradGuard no_grad;
  for (HfParameter& p : lm->hf_parameters()) {
    // Hub GPT-2 files name tensors without the "transformer." prefix.
    std::string name = p.hf_name;
    if (reader->find(name) == nullptr && config.arch == Architecture::kGpt2 && name.rfind("transformer.", 0) == 0) {
      name = name.substr(std::string("transformer.").size());
    }
    const io::TensorInfo* info = reader->find(name);
    if (info == nullptr) {
      missing.push_back(p.hf_name);
      continue;
    }
    unused.erase(name);
    std::vector<int64_t> expected = p.tensor.sizes().vec();
    if (p.transposed) std::reverse(expected.begin(), expected.end());
    if (info->shape != expected) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor '", name, "' has shape ", shape_str(info->shape),
                                                     " in the checkpoint but config.json implies ",
                                                     shape_str(expected)));
    }
    if (!p.transposed) {
      advise_huge_pages(p.tensor);
      PEFT_RETURN_IF_ERROR(reader->read_into(name, p.tensor));
    } else {
      // GPT-2 Conv1D [in, out]: read, then transpose into place (these are
      // per-layer matrices, so the temporary is small).
      PEFT_ASSIGN_OR_RETURN(at::Tensor src, reader->load(name));
      reader->release(name);
      PEFT_RETURN_IF_ERROR(status_from_torch_error(name.c_str(), [&] { p.tensor.copy_(src.t()); }));
    }
    // A NaN or infinite weight makes every output garbage: refused here, for
    // every command, while the tensor just read is still in cache.
    bool finite = true;
    PEFT_RETURN_IF_ERROR(
        status_from_torch_error(name.c_str(), [&] { finite = at::isfinite(p.tensor).all().item<bool>(); }));
    if (!finite) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": tensor '", p.hf_name, "' holds NaN or infinite values; the checkpoint is corrupt"));
    }
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 5);
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": checkpoint is missing ", missing.size(), " tensor(s) the config needs: ",
        absl::StrJoin(missing.begin(), missing.begin() + shown, ", "), missing.size() > shown ? ", ..." : ""));
  }
  if (report) {
    for (const std::string& n : unused) {
      (ignorable(n) ? report->ignored_tensors : report->unexpected_tensors).push_back(n);
    }
  }
  return lm;
}

std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& path) {
  std::vector<std::pair<std::string, std::string>> out;
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return {{path, fs::path(path).filename().string()}};
  for (const char* name :
       {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
        "merges.txt", "encoder.json", "vocab.bpe", "tokenizer.bin", "generation_config.json"}) {
    if (fs::is_regular_file(fs::path(path) / name, ec)) out.push_back({(fs::path(path) / name).string(), name});
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> export_files(const std::string& model_dir,
                                                              const std::string& tokenizer) {
  std::error_code ec;
  if (tokenizer.empty() || fs::equivalent(tokenizer, model_dir, ec)) return tokenizer_files(model_dir);
  std::vector<std::pair<std::string, std::string>> out = tokenizer_files(tokenizer);
  for (const auto& f : tokenizer_files(model_dir)) {
    if (f.second == "generation_config.json" &&
        std::none_of(out.begin(), out.end(), [&](const auto& o) { return o.second == f.second; })) {
      out.push_back(f);
    }
  }
  return out;
}

absl::Status save_model(CausalLm& model, const std::string& dir, const SaveOptions& options) {
  for (const auto& [src, name] : options.extra_files) {
    std::error_code ec;
    if (!fs::is_regular_file(src, ec)) return absl::NotFoundError(absl::StrCat("file to copy not found: ", src));
    if (name.empty() || name.find('/') != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("bad file name '", name, "' for ", src));
    }
  }
  return io::write_directory_atomically(dir, options.overwrite, [&](const std::string& tmp) -> absl::Status {
    ModelConfig config = model.config();
    config.torch_dtype = dtype_name(options.dtype);
    PEFT_RETURN_IF_ERROR(io::write_file_atomically(tmp + "/config.json", model_config_to_json(config)));
    std::vector<io::NamedTensor> tensors;
    PEFT_RETURN_IF_ERROR(status_from_torch_error("prepare tensors", [&] {
      for (const HfParameter& p : model.hf_parameters()) {
        at::Tensor t = p.tensor.detach();
        if (p.transposed) t = t.t();
        tensors.push_back(io::NamedTensor{p.hf_name, t.to(at::kCPU, options.dtype).contiguous()});
      }
    }));
    PEFT_RETURN_IF_ERROR(io::save_checkpoint(tmp, tensors, options.max_shard_bytes));
    for (const auto& [src, name] : options.extra_files) {
      std::error_code ec;
      fs::copy_file(src, fs::path(tmp) / name, fs::copy_options::overwrite_existing, ec);
      if (ec) return absl::InternalError(absl::StrCat("cannot copy ", src, ": ", ec.message()));
    }
    return absl::OkStatus();
  });
}

}  // namespace peft::models
