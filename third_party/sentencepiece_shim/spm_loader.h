//
// C++ side of the sentencepiece shim: finds libpeft_spm_shim.so at run time,
// dlopen's it with RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND (so the protobuf that
// Debian's libsentencepiece embeds never meets libtorch's; see spm_shim.h),
// and wraps a loaded model in an RAII object. This target never links
// sentencepiece itself; it carries the .so as a data dependency so that the
// library lands in the runfiles of every binary and test that depends on it.
//
// Where the shim is looked for, first hit wins:
//   1. $PEFT_SPM_SHIM (a path to the .so; when set, nothing else is tried);
//   2. runfiles: $TEST_SRCDIR, $RUNFILES_DIR and <exe>.runfiles, each joined
//      with <workspace>/third_party/sentencepiece_shim/libpeft_spm_shim.so,
//      where <workspace> is $TEST_WORKSPACE, "__main__" or "peft_cpp";
//      then the entry in $RUNFILES_MANIFEST_FILE;
//   3. the directory of /proc/self/exe and up to 6 of its parents, joined with
//      third_party/sentencepiece_shim/libpeft_spm_shim.so, or holding
//      libpeft_spm_shim.so directly (this is what makes `bazel-bin/peft`
//      work outside `bazel run`);
//   4. the dynamic loader's own search (LD_LIBRARY_PATH, ld.so.cache).
//
//   PEFT_ASSIGN_OR_RETURN(auto model, peft::spm_shim::SpmModel::load(path));
//   PEFT_ASSIGN_OR_RETURN(std::vector<int32_t> ids, model->encode("Hello"));
#ifndef PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_LOADER_H_
#define PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_LOADER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "third_party/sentencepiece_shim/spm_shim.h"

namespace peft::spm_shim {

/// File name of the shim library.
inline constexpr const char* kShimFileName = "libpeft_spm_shim.so";

/// The path the shim would be loaded from (see the file comment for the
/// search order), or FailedPreconditionError listing every place tried.
absl::StatusOr<std::string> find_shim_library();

/// Function table of a dlopen'ed shim (defined in spm_loader.cc).
struct ShimApi;

/// A sentencepiece model that lives inside the dlopen'ed shim. Thread-safe for
/// concurrent const calls (sentencepiece's processor is).
class SpmModel final {
 public:
  /// Loads the shim (once per process) and then the model at `model_path`.
  /// FailedPreconditionError when the shim cannot be found or loaded;
  /// InvalidArgumentError naming `model_path` when sentencepiece rejects the
  /// file.
  static absl::StatusOr<std::unique_ptr<SpmModel>> load(const std::string& model_path);

  ~SpmModel();
  SpmModel(const SpmModel&) = delete;
  SpmModel& operator=(const SpmModel&) = delete;

  /// sentencepiece `Encode(text)`: ids without BOS/EOS.
  absl::StatusOr<std::vector<int32_t>> encode(std::string_view text) const;

  /// encode() with the dummy-prefix "▁" on or off, whatever the model's
  /// normalizer says (for encoding a long text in pieces).
  absl::StatusOr<std::vector<int32_t>> encode(std::string_view text, bool add_dummy_prefix) const;

  /// The model's normalizer and trainer settings (see spm_shim.h).
  absl::StatusOr<PeftSpmModelInfo> info() const;

  /// sentencepiece `Decode(ids)`; every id must be in [0, piece_size()).
  absl::StatusOr<std::string> decode(const std::vector<int32_t>& ids) const;

  /// Number of pieces.
  int32_t piece_size() const;

  /// The piece of `id` ("" when out of range); valid while this model lives.
  std::string_view id_to_piece(int32_t id) const;

  /// Special ids from the model's trainer spec; -1 when absent.
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t pad_id() const;
  int32_t unk_id() const;

  /// True for control pieces such as <s> and </s>.
  bool is_control(int32_t id) const;

  /// The score of `id` (0 when out of range).
  float score(int32_t id) const;

  /// The ModelProto piece type of `id` (1 normal, 2 unknown, 3 control,
  /// 5 unused, 6 byte); 0 when out of range. See spm_shim.h.
  int piece_type(int32_t id) const;

  /// Path of the shim library this model was loaded through.
  const std::string& shim_path() const;

 private:
  struct ModelDeleter {
    void (*free_model)(PeftSpmModel*) = nullptr;
    void operator()(PeftSpmModel* model) const;
  };

  SpmModel(std::shared_ptr<const ShimApi> api, std::unique_ptr<PeftSpmModel, ModelDeleter> model);

  // Declared first so that it is destroyed last: the model's code lives in it.
  std::shared_ptr<const ShimApi> api_;
  std::unique_ptr<PeftSpmModel, ModelDeleter> model_;
};

}  // namespace peft::spm_shim

#endif  // PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_LOADER_H_
