#include "third_party/sentencepiece_shim/spm_loader.h"

#include <dlfcn.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

// How the shim is opened. A sanitizer build that never loads libtorch (the
// fuzz harness, scripts/fuzz.sh) defines it without RTLD_DEEPBIND, which
// AddressSanitizer refuses to dlopen.
#ifndef PEFT_SPM_SHIM_DLOPEN_FLAGS
#define PEFT_SPM_SHIM_DLOPEN_FLAGS (RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND)
#endif

namespace peft::spm_shim {
namespace fs = std::filesystem;

namespace {

#if defined(__SANITIZE_ADDRESS__)
// --config=asan: the copy built without sanitizers (see the BUILD file).
constexpr const char* kShimRelPath = "third_party/sentencepiece_shim/unsanitized/libpeft_spm_shim.so";
#else
constexpr const char* kShimRelPath = "third_party/sentencepiece_shim/libpeft_spm_shim.so";
#endif
constexpr int kMaxParentLevels = 6;

struct DlCloser {
  void operator()(void* handle) const {
    if (handle != nullptr) dlclose(handle);
  }
};
using DlHandle = std::unique_ptr<void, DlCloser>;

std::string env_or_empty(const char* name) {
  const char* value = getenv(name);
  return value != nullptr ? std::string(value) : std::string();
}

bool is_file(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);  // follows symlinks (runfiles are links)
}

std::string self_exe() {
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.string();
}

// "<ws>/third_party/..." in a runfiles manifest ("<runfiles path> <real path>" lines).
std::string from_manifest(const std::string& manifest, const std::vector<std::string>& workspaces) {
  std::ifstream in(manifest);
  std::string line;
  while (std::getline(in, line)) {
    size_t space = line.find(' ');
    if (space == std::string::npos) continue;
    std::string key = line.substr(0, space);
    for (const std::string& ws : workspaces) {
      if (key == ws + "/" + kShimRelPath) return line.substr(space + 1);
    }
  }
  return "";
}

}  // namespace

struct ShimApi {
  DlHandle handle;
  std::string path;
  decltype(&peft_spm_abi_version) abi_version = nullptr;
  decltype(&peft_spm_load) load = nullptr;
  decltype(&peft_spm_free_model) free_model = nullptr;
  decltype(&peft_spm_free_buffer) free_buffer = nullptr;
  decltype(&peft_spm_encode) encode = nullptr;
  decltype(&peft_spm_encode_with_prefix) encode_with_prefix = nullptr;
  decltype(&peft_spm_model_info) model_info = nullptr;
  decltype(&peft_spm_decode) decode = nullptr;
  decltype(&peft_spm_piece_size) piece_size = nullptr;
  decltype(&peft_spm_id_to_piece) id_to_piece = nullptr;
  decltype(&peft_spm_bos_id) bos_id = nullptr;
  decltype(&peft_spm_eos_id) eos_id = nullptr;
  decltype(&peft_spm_pad_id) pad_id = nullptr;
  decltype(&peft_spm_unk_id) unk_id = nullptr;
  decltype(&peft_spm_is_control) is_control = nullptr;
  decltype(&peft_spm_score) score = nullptr;
  decltype(&peft_spm_piece_type) piece_type = nullptr;
};

namespace {

// A buffer allocated by the shim, released by the shim.
struct ShimBuffer {
  const ShimApi* api;
  void* ptr = nullptr;
  ~ShimBuffer() { api->free_buffer(ptr); }
};

std::string take_error(const ShimApi& api, char* error) {
  ShimBuffer owned{&api, error};
  return error != nullptr ? std::string(error) : std::string("unknown error");
}

template <typename Fn>
bool bind(void* handle, const char* name, Fn* out, std::vector<std::string>* missing) {
  *out = reinterpret_cast<Fn>(dlsym(handle, name));
  if (*out == nullptr) missing->push_back(name);
  return *out != nullptr;
}

absl::StatusOr<std::shared_ptr<const ShimApi>> open_shim(const std::string& path) {
  dlerror();
  // RTLD_DEEPBIND: the shim and its libsentencepiece resolve symbols in their
  // own dependency tree first, so sentencepiece's embedded protobuf never
  // binds to the libprotobuf that libtorch loaded (or the other way round).
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer refuses RTLD_DEEPBIND (google/sanitizers#611). Under it
  // (bazel --config=asan, which builds the shim without sanitizers) the shim
  // gets a link-map namespace of its own instead: the same isolation, with
  // its own copies of libc and libstdc++. Every buffer it hands out is freed
  // by the shim itself, so the two heaps never mix.
  DlHandle handle(dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL));
#else
  DlHandle handle(dlopen(path.c_str(), PEFT_SPM_SHIM_DLOPEN_FLAGS));
#endif
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::FailedPreconditionError(
        absl::StrCat("cannot dlopen the sentencepiece shim ", path, ": ", why ? why : "unknown error"));
  }
  auto api = std::make_shared<ShimApi>();
  void* h = handle.get();
  std::vector<std::string> missing;
  bind(h, "peft_spm_abi_version", &api->abi_version, &missing);
  bind(h, "peft_spm_load", &api->load, &missing);
  bind(h, "peft_spm_free_model", &api->free_model, &missing);
  bind(h, "peft_spm_free_buffer", &api->free_buffer, &missing);
  bind(h, "peft_spm_encode", &api->encode, &missing);
  bind(h, "peft_spm_encode_with_prefix", &api->encode_with_prefix, &missing);
  bind(h, "peft_spm_model_info", &api->model_info, &missing);
  bind(h, "peft_spm_decode", &api->decode, &missing);
  bind(h, "peft_spm_piece_size", &api->piece_size, &missing);
  bind(h, "peft_spm_id_to_piece", &api->id_to_piece, &missing);
  bind(h, "peft_spm_bos_id", &api->bos_id, &missing);
  bind(h, "peft_spm_eos_id", &api->eos_id, &missing);
  bind(h, "peft_spm_pad_id", &api->pad_id, &missing);
  bind(h, "peft_spm_unk_id", &api->unk_id, &missing);
  bind(h, "peft_spm_is_control", &api->is_control, &missing);
  bind(h, "peft_spm_score", &api->score, &missing);
  bind(h, "peft_spm_piece_type", &api->piece_type, &missing);
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("sentencepiece shim ", path, " lacks symbols: ", absl::StrJoin(missing, ", ")));
  }
  if (int v = api->abi_version(); v != PEFT_SPM_SHIM_ABI_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrCat("sentencepiece shim ", path, " has ABI version ", v, ", expected ", PEFT_SPM_SHIM_ABI_VERSION));
  }
  api->handle = std::move(handle);
  api->path = path;
  return std::shared_ptr<const ShimApi>(std::move(api));
}

// The shim is loaded once per process and never unloaded: protobuf (inside
// libsentencepiece) does not support being unloaded and loaded again, and
// unloading at exit would race other static destructors. The cache object is
// deliberately leaked for the same reason.
absl::StatusOr<std::shared_ptr<const ShimApi>> shared_shim() {
  static std::mutex mu;
  static auto* cached = new std::shared_ptr<const ShimApi>();
  std::lock_guard<std::mutex> lock(mu);
  if (*cached) return *cached;
  absl::StatusOr<std::string> path = find_shim_library();
  absl::StatusOr<std::shared_ptr<const ShimApi>> api =
      path.ok() ? open_shim(*path) : open_shim(kShimFileName);  // last resort: ld.so search
  if (!api.ok()) {
    if (!path.ok()) return path.status();  // the more useful message: where we looked
    return api.status();
  }
  *cached = *api;
  return *cached;
}

}  // namespace

absl::StatusOr<std::string> find_shim_library() {
  std::vector<std::string> tried;
  if (std::string env = env_or_empty("PEFT_SPM_SHIM"); !env.empty()) {
    if (is_file(env)) return env;
    return absl::FailedPreconditionError(
        absl::StrCat("PEFT_SPM_SHIM=", env, " does not name a file (it should point at ", kShimFileName, ")"));
  }

  std::vector<std::string> workspaces;
  if (std::string ws = env_or_empty("TEST_WORKSPACE"); !ws.empty()) workspaces.push_back(ws);
  workspaces.push_back("__main__");  // the WORKSPACE has no name
  workspaces.push_back("peft_cpp");  // the name it once had

  const std::string exe = self_exe();
  std::vector<std::string> roots;
  for (const char* var : {"TEST_SRCDIR", "RUNFILES_DIR"}) {
    if (std::string root = env_or_empty(var); !root.empty()) roots.push_back(root);
  }
  if (!exe.empty()) roots.push_back(exe + ".runfiles");
  for (const std::string& root : roots) {
    for (const std::string& ws : workspaces) {
      fs::path p = fs::path(root) / ws / kShimRelPath;
      if (is_file(p)) return p.string();
      tried.push_back(p.string());
    }
  }
  if (std::string manifest = env_or_empty("RUNFILES_MANIFEST_FILE"); !manifest.empty()) {
    std::string p = from_manifest(manifest, workspaces);
    if (!p.empty() && is_file(p)) return p;
    tried.push_back(absl::StrCat("manifest ", manifest));
  }

  if (!exe.empty()) {
    fs::path dir = fs::path(exe).parent_path();
    for (int level = 0; level <= kMaxParentLevels && !dir.empty(); ++level) {
      for (const fs::path& p : {dir / kShimRelPath, dir / kShimFileName}) {
        if (is_file(p)) return p.string();
        tried.push_back(p.string());
      }
      if (dir == dir.root_path()) break;
      dir = dir.parent_path();
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat("cannot find the sentencepiece shim ", kShimFileName,
                   " (build //third_party/sentencepiece_shim:libpeft_spm_shim.so and depend on //data:tokenizer, "
                   "or set PEFT_SPM_SHIM to its path); tried: ",
                   absl::StrJoin(tried, ", ")));
}

void SpmModel::ModelDeleter::operator()(PeftSpmModel* model) const {
  if (model != nullptr && free_model != nullptr) free_model(model);
}

SpmModel::SpmModel(std::shared_ptr<const ShimApi> api, std::unique_ptr<PeftSpmModel, ModelDeleter> model)
    : api_(std::move(api)), model_(std::move(model)) {}

SpmModel::~SpmModel() = default;

absl::StatusOr<std::unique_ptr<SpmModel>> SpmModel::load(const std::string& model_path) {
  absl::StatusOr<std::shared_ptr<const ShimApi>> api = shared_shim();
  if (!api.ok()) return api.status();
  char* error = nullptr;
  PeftSpmModel* raw = (*api)->load(model_path.c_str(), &error);
  if (raw == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(model_path, ": not a valid sentencepiece model: ", take_error(**api, error)));
  }
  std::unique_ptr<PeftSpmModel, ModelDeleter> model(raw, ModelDeleter{(*api)->free_model});
  return std::unique_ptr<SpmModel>(new SpmModel(*std::move(api), std::move(model)));
}

absl::StatusOr<std::vector<int32_t>> SpmModel::encode(std::string_view text) const {
  int32_t* ids = nullptr;
  size_t n = 0;
  char* error = nullptr;
  if (api_->encode(model_.get(), text.data(), text.size(), &ids, &n, &error) != 0) {
    return absl::InternalError(absl::StrCat("sentencepiece encode: ", take_error(*api_, error)));
  }
  ShimBuffer owned{api_.get(), ids};
  return std::vector<int32_t>(ids, ids + n);
}

absl::StatusOr<std::vector<int32_t>> SpmModel::encode(std::string_view text, bool add_dummy_prefix) const {
  int32_t* ids = nullptr;
  size_t n = 0;
  char* error = nullptr;
  if (api_->encode_with_prefix(model_.get(), text.data(), text.size(), add_dummy_prefix ? 1 : 0, &ids, &n, &error) !=
      0) {
    return absl::InternalError(absl::StrCat("sentencepiece encode: ", take_error(*api_, error)));
  }
  ShimBuffer owned{api_.get(), ids};
  return std::vector<int32_t>(ids, ids + n);
}

absl::StatusOr<PeftSpmModelInfo> SpmModel::info() const {
  PeftSpmModelInfo info{};
  char* error = nullptr;
  if (api_->model_info(model_.get(), &info, &error) != 0) {
    return absl::InternalError(absl::StrCat("sentencepiece model info: ", take_error(*api_, error)));
  }
  return info;
}

absl::StatusOr<std::string> SpmModel::decode(const std::vector<int32_t>& ids) const {
  char* text = nullptr;
  size_t n = 0;
  char* error = nullptr;
  if (api_->decode(model_.get(), ids.data(), ids.size(), &text, &n, &error) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("sentencepiece decode: ", take_error(*api_, error)));
  }
  ShimBuffer owned{api_.get(), text};
  return std::string(text, n);
}

int32_t SpmModel::piece_size() const { return api_->piece_size(model_.get()); }

std::string_view SpmModel::id_to_piece(int32_t id) const {
  size_t len = 0;
  const char* piece = api_->id_to_piece(model_.get(), id, &len);
  return piece != nullptr ? std::string_view(piece, len) : std::string_view();
}

int32_t SpmModel::bos_id() const { return api_->bos_id(model_.get()); }
int32_t SpmModel::eos_id() const { return api_->eos_id(model_.get()); }
int32_t SpmModel::pad_id() const { return api_->pad_id(model_.get()); }
int32_t SpmModel::unk_id() const { return api_->unk_id(model_.get()); }
bool SpmModel::is_control(int32_t id) const { return api_->is_control(model_.get(), id) != 0; }
float SpmModel::score(int32_t id) const { return api_->score(model_.get(), id); }
int SpmModel::piece_type(int32_t id) const { return api_->piece_type(model_.get(), id); }
const std::string& SpmModel::shim_path() const { return api_->path; }

}  // namespace peft::spm_shim
