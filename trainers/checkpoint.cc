#include "trainers/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/io/safetensors.h"

namespace peft::trainers {
namespace {

namespace fs = std::filesystem;

std::vector<std::pair<int64_t, fs::path>> checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("step-", 0) != 0 || !fs::exists(e.path() / "state.json", ec)) continue;
    try {
      out.emplace_back(std::stoll(n.substr(5)), e.path());
    } catch (...) {
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

absl::Status save_training_state(const std::string& run_dir, const TrainingState& state,
                                 torch::optim::Optimizer& optimizer, int keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", root.string(), ": ", ec.message()));
  const std::string dir = (root / absl::StrFormat("step-%08d", state.step)).string();
  std::vector<io::NamedTensor> tensors;
  for (const auto& [name, t] : state.trainable) tensors.push_back({name, t.detach().to(at::kCPU).contiguous()});
  // The CPU generator (dropout) as raw bytes.
  at::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  tensors.push_back({"__rng_cpu__", rng});
  nlohmann::json j = {{"step", state.step}, {"data_epoch", state.data_epoch}, {"data_index", state.data_index}};
  PEFT_RETURN_IF_ERROR(models::write_directory_atomically(dir, /*overwrite=*/true, [&](const std::string& tmp) {
    PEFT_RETURN_IF_ERROR(io::save_safetensors(tmp + "/trainable.safetensors", tensors));
    PEFT_RETURN_IF_ERROR(status_from_torch_error("save optimizer", [&] { torch::save(optimizer, tmp + "/optimizer.pt"); }));
    // state.json last: a directory with it is complete.
    return io::write_file_atomically(tmp + "/state.json", j.dump(2) + "\n");
  }));
  auto all = checkpoints(root);
  for (size_t i = 0; i + static_cast<size_t>(std::max(keep_last, 1)) < all.size(); ++i) fs::remove_all(all[i].second, ec);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> latest_checkpoint(const std::string& run_dir) {
  auto all = checkpoints(fs::path(run_dir) / "checkpoints");
  if (all.empty()) return std::optional<std::string>();
  return std::optional<std::string>(all.back().second.string());
}

absl::Status load_training_state(const std::string& dir, TrainingState* state, torch::optim::Optimizer& optimizer) {
  std::ifstream in(dir + "/state.json");
  if (!in) return absl::NotFoundError(absl::StrCat(dir, ": no state.json (incomplete checkpoint?)"));
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.contains("step")) return absl::InvalidArgumentError(absl::StrCat(dir, "/state.json is corrupt"));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::SafetensorsFile> file,
                        io::SafetensorsFile::open(dir + "/trainable.safetensors"));
  for (const auto& [name, t] : state->trainable) {
    const io::TensorInfo* info = file->find(name);
    if (info == nullptr) return absl::InvalidArgumentError(absl::StrCat(dir, ": checkpoint lacks tensor '", name, "'"));
    if (info->shape != t.sizes().vec()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor '", name, "' has another shape in the checkpoint"));
    }
  }
  if (file->tensors().size() != state->trainable.size() + 1) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": checkpoint holds ", file->tensors().size() - 1,
                                                   " trainable tensors, this run has ", state->trainable.size()));
  }
  PEFT_RETURN_IF_ERROR(status_from_torch_error("restore tensors", [&] {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : state->trainable) t.copy_(*file->load(name));
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    gen.set_state(*file->load("__rng_cpu__"));
  }));
  PEFT_RETURN_IF_ERROR(status_from_torch_error("restore optimizer", [&] { torch::load(optimizer, dir + "/optimizer.pt"); }));
  state->step = j["step"].get<int64_t>();
  state->data_epoch = j.value("data_epoch", int64_t{0});
  state->data_index = j.value("data_index", int64_t{0});
  return absl::OkStatus();
}

}  // namespace peft::trainers
