// Memory and time of a GGUF export (not a test; numbers for
// docs/benchmarks.md):
//
//   bazel-bin/examples/peft init --output=/tmp/m110 --hidden_size=768 --num_layers=12
//       --num_heads=12 --intermediate_size=2048 --vocab_size=32000 --tie_word_embeddings
//   bazel build //tests/models:gguf_export_bench
//   bazel-bin/tests/models/gguf_export_bench /tmp/m110 /tmp/gguf_out
//
// In one process: load the model, add a LoRA (r 16, all linear projections,
// random B) and merge it as `peft export --adapter` does, then export f32,
// f16 and q8_0 (glibc keeps the merge's freed temporaries until
// malloc_trim, which `peft export` calls before writing). Before each
// export the peak-RSS counter is reset
// (/proc/self/clear_refs "5"), so "peak during export" is the export's own
// peak, with the merged model resident.
#include <malloc.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "models/gguf/export.h"
#include "models/model_io.h"
#include "peft/lora/lora.h"
#include "peft/peft_model.h"
#include "trainers/process_stats.h"

namespace {

namespace gguf = peft::models::gguf;
using peft::trainers::now_seconds;
using peft::trainers::proc_status_mb;

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s MODEL_DIR OUTPUT_DIR\n", argv[0]);
    return 2;
  }
  at::set_num_threads(2);
  const std::string model_dir = argv[1], out_dir = argv[2];
  std::filesystem::create_directories(out_dir);
  const double base_rss = proc_status_mb("VmRSS");
  auto lm = peft::models::load_model(model_dir);
  if (!lm.ok()) {
    std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
    return 1;
  }
  int64_t params = 0;
  for (const auto& p : (*lm)->hf_parameters()) params += p.tensor.numel();
  const double model_mb = params * 4.0 / (1 << 20);
  const double load_peak = proc_status_mb("VmHWM");

  const double loaded_rss = proc_status_mb("VmRSS");
  peft::PeftModel pm(*lm);
  peft::proto::AdapterConfig c;
  c.mutable_lora()->set_r(16);
  c.mutable_lora()->set_alpha(32);
  c.mutable_target()->set_preset("all_linear");
  if (!pm.add_adapter(c, 1).ok()) return 1;
  {
    torch::NoGradGuard no_grad;
    for (const auto& t : pm.targets("default")) {
      dynamic_cast<peft::LoraLinearImpl*>(t.linear->adapter("default"))->lora_B.normal_(0.0, 0.01);
    }
  }
  if (!pm.merge_and_unload_().ok()) return 1;
  const double untrimmed_rss = proc_status_mb("VmRSS");
  // As `peft export` does: the merge's freed temporaries go back to the OS.
  malloc_trim(0);
  const double merged_rss = proc_status_mb("VmRSS");

  gguf::Vocab v;
  v.model = "llama";
  v.pre = "default";
  for (int64_t i = 0; i < pm.model().config().vocab_size(); ++i) {
    v.tokens.push_back("t" + std::to_string(i));
    v.scores.push_back(0.0f);
    v.types.push_back(gguf::kTokenNormal);
  }
  std::printf("model %s: %lld parameters, %.0f MB in fp32\n", model_dir.c_str(), static_cast<long long>(params),
              model_mb);
  std::printf(
      "RSS: %.0f MB before loading (LibTorch), peak %.0f MB while loading, %.0f MB loaded, %.0f MB after the LoRA "
      "merge, %.0f MB after malloc_trim\n",
      base_rss, load_peak, loaded_rss, untrimmed_rss, merged_rss);
  std::printf(
      "| dtype | file MB | seconds | RSS before export MB | peak RSS during export MB | "
      "peak above the merged model's RSS |\n|---|---:|---:|---:|---:|---:|\n");
  for (gguf::TensorType type : {gguf::TensorType::kF32, gguf::TensorType::kF16, gguf::TensorType::kQ8_0}) {
    const std::string path = out_dir + "/model-" + gguf::tensor_type_name(type) + ".gguf";
    std::filesystem::remove(path);
    if (!peft::trainers::reset_peak_rss()) std::fprintf(stderr, "warning: cannot reset the peak RSS counter\n");
    const double before = proc_status_mb("VmRSS");
    const double t0 = now_seconds();
    gguf::ExportOptions o;
    o.dtype = type;
    absl::StatusOr<gguf::ExportStats> s = gguf::export_model(pm.model(), v, path, o);
    const double secs = now_seconds() - t0;
    const double peak = proc_status_mb("VmHWM");
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", s.status().ToString().c_str());
      return 1;
    }
    std::printf("| %s | %.0f | %.2f | %.0f | %.0f | %+.0f MB = %+.1f%% of the model |\n", gguf::tensor_type_name(type),
                s->file_bytes / 1048576.0, secs, before, peak, peak - merged_rss,
                100.0 * (peak - merged_rss) / model_mb);
    std::filesystem::remove(path);
  }
  return 0;
}
