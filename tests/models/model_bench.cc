// Benchmark for the foundation (prints numbers, asserts nothing):
//  - load time and peak RSS for a generated LLaMA checkpoint of >= 500 MB
//    (hidden 1024, 8 layers, vocab 32000, untied: ~672 MB fp32);
//  - greedy generation tokens/s for that model and for stories260K.
// Each measurement runs in a fresh process (this binary re-executed) so that
// peak RSS (VmHWM) belongs to that phase alone.
//
//   bazel build -c opt //tests/models:model_bench && bazel-bin/tests/models/model_bench
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "models/generate.h"
#include "models/llama2c.h"
#include "models/model_io.h"
#include "tests/testing/assets.h"
#include "trainers/process_stats.h"

namespace {

namespace fs = std::filesystem;
using peft::models::CausalLm;

uint64_t dir_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") n += e.file_size();
  }
  return n;
}

int phase_load(const std::string& dir) {
  const double base_rss = peft::trainers::proc_status_mb("VmRSS");
  const double t0 = peft::trainers::now_seconds();
  auto lm = peft::models::load_model(dir);
  if (!lm.ok()) {
    std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
    return 1;
  }
  const double secs = peft::trainers::now_seconds() - t0;
  const double file_mb = dir_bytes(dir) / 1048576.0;
  const double hwm = peft::trainers::proc_status_mb("VmHWM");
  std::printf(
      "{\"phase\":\"load\",\"file_mb\":%.1f,\"seconds\":%.3f,\"mb_per_s\":%.0f,\"peak_rss_mb\":%.1f,"
      "\"peak_rss_over_file\":%.3f,\"rss_before_load_mb\":%.1f}\n",
      file_mb, secs, file_mb / secs, hwm, hwm / file_mb, base_rss);
  return 0;
}

int phase_generate(const std::string& name, std::shared_ptr<CausalLm> lm, int threads, int new_tokens) {
  at::set_num_threads(threads);
  peft::models::GenerateOptions o;
  o.max_new_tokens = new_tokens;
  o.use_config_eos = false;
  std::vector<int64_t> prompt = {1, 403, 407, 261, 378, 432, 383, 286};
  (void)peft::models::generate(*lm, prompt, o);  // warm-up
  auto r = peft::models::generate(*lm, prompt, o);
  if (!r.ok()) {
    std::fprintf(stderr, "%s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf(
      "{\"phase\":\"generate\",\"model\":\"%s\",\"threads\":%d,\"prompt_tokens\":%zu,\"new_tokens\":%zu,"
      "\"prefill_tok_per_s\":%.1f,\"decode_tok_per_s\":%.1f}\n",
      name.c_str(), threads, prompt.size(), r->generated_ids.size(), prompt.size() / r->prefill_seconds,
      (r->generated_ids.size() - 1) / r->decode_seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  if (argc >= 3 && std::string(argv[1]) == "load") return phase_load(argv[2]);
  if (argc >= 4 && std::string(argv[1]) == "generate") {
    auto lm = std::string(argv[2]).size() > 4 && std::string(argv[2]).substr(std::string(argv[2]).size() - 4) == ".bin"
                  ? peft::models::import_llama2c(argv[2])
                  : peft::models::load_model(argv[2]);
    if (!lm.ok()) {
      std::fprintf(stderr, "%s\n", lm.status().ToString().c_str());
      return 1;
    }
    return phase_generate(fs::path(argv[2]).filename().string(), *lm, std::atoi(argv[3]), 64);
  }

  // Driver: write the checkpoint once, then run each phase in its own process.
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = std::string(tmp ? tmp : "/tmp") + "/peft_bench_llama_1024x8";
  if (!fs::exists(dir + "/config.json")) {
    peft::models::ModelConfig c;
    c.arch = peft::models::Architecture::kLlama;
    c.llama.vocab_size = 32000;
    c.llama.hidden_size = 1024;
    c.llama.intermediate_size = 2816;
    c.llama.num_hidden_layers = 8;
    c.llama.num_attention_heads = 16;
    c.llama.num_key_value_heads = 16;
    c.llama.head_dim = 64;
    c.llama.max_position_embeddings = 2048;
    c.bos_token_id = 1;
    c.eos_token_ids = {2};
    std::fprintf(stderr, "writing %s ...\n", dir.c_str());
    auto lm = peft::models::create_model(c);
    peft::models::init_weights_(**lm, 1);
    absl::Status st = peft::models::save_model(**lm, dir);
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 1;
    }
  }
  int rc = std::system((self + " load " + dir).c_str());
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  for (int threads : {1, static_cast<int>(cores)}) {
    rc |= std::system((self + " generate " + dir + " " + std::to_string(threads)).c_str());
  }
  const std::string assets = peft::testing::shared_assets_dir();
  if (!assets.empty()) {
    for (int threads : {1, static_cast<int>(cores)}) {
      rc |= std::system(
          (self + " generate " + assets + "/llama2c_stories260K/stories260K.bin " + std::to_string(threads)).c_str());
    }
  } else {
    std::fprintf(stderr, "stories260K skipped: %s\n", peft::testing::kNoAssetsReason);
  }
  return rc == 0 ? 0 : 1;
}
