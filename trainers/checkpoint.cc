#include "trainers/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/optim/optimizer.h>
#include <torch/serialize.h>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "models/model_io.h"
#include "peft/core/json_fields.h"
#include "peft/core/status.h"
#include "peft/io/atomic_file.h"
#include "peft/io/safetensors.h"

namespace peft::trainers {
namespace {

namespace fs = std::filesystem;

std::vector<std::pair<int64_t, fs::path>> checkpoints(const fs::path& root) {
  std::vector<std::pair<int64_t, fs::path>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t step = checkpoint_step(e.path().string());
    if (step < 0 || !fs::exists(e.path() / "state.json", ec)) continue;
    out.emplace_back(step, e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Keys of rank r's generators in trainable.safetensors. Rank 0's CPU key is
// the one checkpoints had before per-rank states.
std::string rng_key(const char* kind, size_t rank) {
  return rank == 0 ? absl::StrCat("__rng_", kind, "__") : absl::StrCat("__rng_", kind, "_rank", rank, "__");
}

bool is_rng_key(const std::string& name) { return name.rfind("__rng_", 0) == 0; }

}  // namespace

int64_t checkpoint_step(const std::string& checkpoint_dir) {
  const std::string name = fs::path(checkpoint_dir).filename().string();
  int64_t step = -1;
  if (name.rfind("step-", 0) != 0 || !absl::SimpleAtoi(name.substr(5), &step) || step < 0) return -1;
  return step;
}

std::string checkpoint_dir(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "checkpoints" / absl::StrFormat("step-%08d", step)).string();
}

absl::Status save_training_state(const std::string& run_dir, const TrainingState& state,
                                 torch::optim::Optimizer& optimizer, int keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  fs::create_directories(root, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", root.string(), ": ", ec.message()));
  const std::string dir = checkpoint_dir(run_dir, state.step);
  std::vector<io::NamedTensor> tensors;
  for (const auto& [name, t] : state.trainable) tensors.push_back({name, t.detach().to(at::kCPU).contiguous()});
  // Every rank's generators (dropout) as raw bytes.
  const std::vector<RngState> rng = state.rng.empty() ? std::vector<RngState>{capture_rng_state()} : state.rng;
  for (size_t r = 0; r < rng.size(); ++r) {
    tensors.push_back({rng_key("cpu", r), rng[r].cpu.to(at::kCPU).contiguous()});
    if (rng[r].cuda.defined()) tensors.push_back({rng_key("cuda", r), rng[r].cuda.to(at::kCPU).contiguous()});
  }
  nlohmann::json j = {{"step", state.step},
                      {"data_epoch", state.data_epoch},
                      {"data_index", state.data_index},
                      {"world_size", state.world_size}};
  PEFT_RETURN_IF_ERROR(io::write_directory_atomically(dir, /*overwrite=*/true, [&](const std::string& tmp) {
    PEFT_RETURN_IF_ERROR(io::save_safetensors(tmp + "/trainable.safetensors", tensors));
    PEFT_RETURN_IF_ERROR(
        status_from_torch_error("save optimizer", [&] { torch::save(optimizer, tmp + "/optimizer.pt"); }));
    // state.json last: a directory with it is complete.
    return io::write_file_atomically(tmp + "/state.json", j.dump(2) + "\n");
  }));
  // Pruning never leaves a partial checkpoint under its final name (a kill
  // in the middle of remove_all would): each one goes to a hidden name first.
  // The caller holds the run directory's lock, so hidden ".step-*.removing-*"
  // directories and step-* ones without state.json (what such a kill, or an
  // older version's, left) belong to dead processes and go too.
  auto prune = [&](const fs::path& p) {
    const fs::path doomed = root / absl::StrCat(".", p.filename().string(), ".removing-", getpid());
    std::error_code e2;
    fs::rename(p, doomed, e2);
    fs::remove_all(e2 ? p : doomed, e2);
  };
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(".step-", 0) == 0 && name.find(".removing-") != std::string::npos) {
      std::error_code e2;
      fs::remove_all(e.path(), e2);
    } else if (checkpoint_step(e.path().string()) >= 0 && !fs::exists(e.path() / "state.json", ec)) {
      prune(e.path());
    }
  }
  auto all = checkpoints(root);
  for (size_t i = 0; i + static_cast<size_t>(std::max(keep_last, 1)) < all.size(); ++i) prune(all[i].second);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<std::string>> latest_checkpoint(const std::string& run_dir) {
  auto all = checkpoints(fs::path(run_dir) / "checkpoints");
  if (all.empty()) return std::optional<std::string>();
  return std::optional<std::string>(all.back().second.string());
}

std::optional<std::string> previous_checkpoint(const std::string& run_dir, int64_t before) {
  std::optional<std::string> out;
  for (const auto& [step, path] : checkpoints(fs::path(run_dir) / "checkpoints")) {
    if (step < before) out = path.string();
  }
  return out;
}

absl::Status parse_training_state_json(const std::string& text, const std::string& source, TrainingState* state) {
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("step")) {
    return absl::InvalidArgumentError(absl::StrCat(source, " is corrupt"));
  }
  // Each number strictly: a string, a fraction or a value beyond int64 is an
  // error naming the key, never a cast or an exception.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> step, json_fields::integer(j, "step", source, 0, kMax));
  if (!step) return absl::InvalidArgumentError(absl::StrCat(source, " is corrupt: \"step\" is null"));
  PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> epoch, json_fields::integer(j, "data_epoch", source, 0, kMax));
  PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> index, json_fields::integer(j, "data_index", source, 0, kMax));
  PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> world, json_fields::integer(j, "world_size", source, 0, kMax));
  state->step = *step;
  state->data_epoch = epoch.value_or(0);
  state->data_index = index.value_or(0);
  state->world_size = world.value_or(0);
  return absl::OkStatus();
}

absl::Status load_training_state(const std::string& dir, TrainingState* state, torch::optim::Optimizer& optimizer,
                                 int rank, const c10::Device& device) {
  std::ifstream in(dir + "/state.json");
  if (!in) return absl::NotFoundError(absl::StrCat(dir, ": no state.json (incomplete checkpoint?)"));
  std::ostringstream text;
  text << in.rdbuf();
  TrainingState numbers;
  PEFT_RETURN_IF_ERROR(parse_training_state_json(text.str(), dir + "/state.json", &numbers));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<io::SafetensorsFile> file,
                        io::SafetensorsFile::open(dir + "/trainable.safetensors"));
  for (const auto& [name, t] : state->trainable) {
    const io::TensorInfo* info = file->find(name);
    if (info == nullptr) return absl::InvalidArgumentError(absl::StrCat(dir, ": checkpoint lacks tensor '", name, "'"));
    if (info->shape != t.sizes().vec()) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": tensor '", name, "' has another shape in the checkpoint"));
    }
  }
  size_t saved = 0;
  for (const io::TensorInfo& info : file->tensors()) saved += is_rng_key(info.name) ? 0 : 1;
  if (saved != state->trainable.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": checkpoint holds ", saved, " trainable tensors, this run has ", state->trainable.size()));
  }
  // This rank's generators; rank 0's when the checkpoint has none for it.
  const size_t r = static_cast<size_t>(std::max(rank, 0));
  const std::string cpu_key = file->find(rng_key("cpu", r)) != nullptr ? rng_key("cpu", r) : rng_key("cpu", 0);
  if (file->find(cpu_key) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": checkpoint lacks the RNG state '", cpu_key, "'"));
  }
  std::string cuda_key = file->find(rng_key("cuda", r)) != nullptr ? rng_key("cuda", r) : rng_key("cuda", 0);
  if (!device.is_cuda() || file->find(cuda_key) == nullptr) cuda_key.clear();
  RngState rng;
  PEFT_ASSIGN_OR_RETURN(rng.cpu, file->load(cpu_key));
  if (!cuda_key.empty()) {
    PEFT_ASSIGN_OR_RETURN(rng.cuda, file->load(cuda_key));
  }
  PEFT_RETURN_IF_ERROR(status_from_torch_error("restore tensors", [&] {
    torch::NoGradGuard no_grad;
    for (auto& [name, t] : state->trainable) t.copy_(*file->load(name));
    restore_rng_state(rng, device);
  }));
  // The moments go to the training device, wherever they were saved from.
  PEFT_RETURN_IF_ERROR(
      status_from_torch_error("restore optimizer", [&] { torch::load(optimizer, dir + "/optimizer.pt", device); }));
  state->step = numbers.step;
  state->data_epoch = numbers.data_epoch;
  state->world_size = numbers.world_size;
  state->data_index = numbers.data_index;
  return absl::OkStatus();
}

}  // namespace peft::trainers
