// libFuzzer harness: a .safetensors file as SafetensorsFile::open reads it
// (mmap and the whole header validation; the reader takes a path, so the
// input is written to a scratch file), then every tensor through view, load
// (as stored and converted to float32), read_into and release, and the same
// file through CheckpointReader. Any input must give a file whose tensors
// tile its data exactly, or a Status; never a crash, a sanitizer report or
// an allocation beyond the file's size.
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "fuzz/fuzz_files.h"
#include "peft/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path =
      peft::fuzz::write_scratch("x.safetensors", std::string_view(reinterpret_cast<const char*>(data), size));
  absl::StatusOr<std::unique_ptr<peft::io::SafetensorsFile>> f = peft::io::SafetensorsFile::open(path);
  if (!f.ok()) return 0;
  const peft::io::SafetensorsFile& file = **f;
  uint64_t covered = 0;
  for (const peft::io::TensorInfo& t : file.tensors()) {
    covered += t.nbytes();
    if (t.end > file.data_bytes()) __builtin_trap();  // open() checked the tiling
    absl::StatusOr<at::Tensor> v = file.view(t.name);
    if (!v.ok()) continue;  // a dtype LibTorch 1.13 lacks
    if (static_cast<uint64_t>(v->nbytes()) != t.nbytes()) __builtin_trap();
    (void)v->sum();  // touches every byte of the mapping
    absl::StatusOr<at::Tensor> as_float = file.load(t.name, at::kFloat);
    absl::StatusOr<at::Tensor> copy = file.load(t.name);
    if (!as_float.ok() || !copy.ok()) __builtin_trap();  // view() worked, so must these
    const at::Tensor dst = at::empty(t.shape, at::TensorOptions().dtype(t.scalar_type));
    if (!file.read_into(t.name, dst).ok()) __builtin_trap();
    file.release(t.name);
  }
  if (covered != file.data_bytes()) __builtin_trap();
  for (const auto& [key, value] : file.metadata()) (void)(key.size() + value.size());
  absl::StatusOr<std::unique_ptr<peft::io::CheckpointReader>> r = peft::io::CheckpointReader::open(path);
  if (!r.ok() || (*r)->names().size() != file.tensors().size()) __builtin_trap();
  file.release_all();
  return 0;
}
