// libFuzzer harness: a sharded checkpoint's model.safetensors.index.json as
// CheckpointReader::open reads it, in a scratch directory that also holds two
// valid shards (a, b in model-00001-of-00002.safetensors; c, d in
// model-00002-of-00002.safetensors) and a file that is not one. Then every
// name through find, view and load. Any input must give a reader or a
// Status, never a crash or a sanitizer report.
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz/fuzz_files.h"
#include "peft/io/safetensors.h"

namespace {

const std::string& checkpoint_dir() {
  static const std::string dir = [] {
    const std::string d = peft::fuzz::scratch_dir();
    using peft::io::save_safetensors;
    const at::Tensor x = at::arange(6, at::kFloat).reshape({2, 3});
    if (!save_safetensors(d + "/model-00001-of-00002.safetensors", {{"a", x}, {"b", x.to(at::kBFloat16)}}).ok() ||
        !save_safetensors(d + "/model-00002-of-00002.safetensors", {{"c", x[0]}, {"d", at::ones({}, at::kLong)}})
             .ok()) {
      std::abort();
    }
    peft::fuzz::write_scratch("notes.txt", "not a safetensors file\n");
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = checkpoint_dir();
  peft::fuzz::write_scratch("model.safetensors.index.json",
                            std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::unique_ptr<peft::io::CheckpointReader>> r = peft::io::CheckpointReader::open(dir);
  if (!r.ok()) return 0;
  for (const std::string& name : (*r)->names()) {
    if ((*r)->find(name) == nullptr || (*r)->file_of(name) == nullptr) __builtin_trap();
    if (!(*r)->view(name).ok() || !(*r)->load(name, at::kDouble).ok()) __builtin_trap();
    (*r)->release(name);
  }
  (void)(*r)->total_bytes();
  return 0;
}
