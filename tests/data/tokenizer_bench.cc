// Tokenizer encode throughput in MB/s (a benchmark program, not a test).
//
//   bazel build //tests/data:tokenizer_bench
//   PEFT_SHARED_DIR=... bazel-bin/tests/data/tokenizer_bench [--tokenizer=PATH]
//       [--text=PATH] [--passes=3] [--threads=1] [--split_special_tokens]
//
// Defaults: the Llama 3 tokenizer.json and tinyshakespeare.txt from the shared
// assets. The text is cut into documents at blank lines (as the dataset
// reader does for plain text) and each document is encoded with one encode()
// call; each thread encodes every document. Pass 1 starts with an empty word
// cache; later passes show the warm rate. MB/s counts input bytes per thread,
// over wall time and over the thread's own CPU time (the second is what a
// shared, busy machine cannot distort much).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "data/tokenizer.h"
#include "tests/testing/assets.h"

namespace {

bool flag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0 || arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

std::vector<std::string> documents(const std::string& text) {
  std::vector<std::string> docs;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find("\n\n", start);
    if (end == std::string::npos) end = text.size();
    if (end > start) docs.push_back(text.substr(start, end - start));
    start = end + 2;
  }
  return docs;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string assets = peft::testing::shared_assets_dir();
  std::string tokenizer = assets + "/llama3_tokenizer/tokenizer.json";
  std::string text_path = assets + "/corpus/tinyshakespeare.txt";
  std::string passes_s = "3", threads_s = "1";
  peft::data::TokenizerOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (flag(argv[i], "--tokenizer", &v)) {
      tokenizer = v;
    } else if (flag(argv[i], "--text", &v)) {
      text_path = v;
    } else if (flag(argv[i], "--passes", &v)) {
      passes_s = v;
    } else if (flag(argv[i], "--threads", &v)) {
      threads_s = v;
    } else if (std::strcmp(argv[i], "--split_special_tokens") == 0) {
      options.split_special_tokens = true;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  const int passes = std::atoi(passes_s.c_str()), threads = std::atoi(threads_s.c_str());
  if (passes < 1 || threads < 1) {
    std::fprintf(stderr, "--passes and --threads must be >= 1\n");
    return 2;
  }
  const std::string text = peft::testing::slurp(text_path);
  if (text.empty()) {
    std::fprintf(stderr, "cannot read %s (set PEFT_SHARED_DIR or pass --text)\n", text_path.c_str());
    return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto tok = peft::data::load_tokenizer(tokenizer, options);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::vector<std::string> docs = documents(text);
  size_t bytes = 0;
  for (const std::string& d : docs) bytes += d.size();
  std::printf("tokenizer %s (%s), loaded in %.2f s\n", tokenizer.c_str(), (*tok)->kind().c_str(), load_s);
  std::printf("text %s: %zu documents, %.2f MB; %d thread(s)\n", text_path.c_str(), docs.size(), bytes / 1e6, threads);
  // Each thread runs every pass, so pass 1 starts with an empty word cache
  // (caches are per thread) and later passes show the warm rate.
  std::vector<std::vector<double>> wall(threads, std::vector<double>(passes)), cpu = wall;
  std::vector<int64_t> tokens(threads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int pass = 0; pass < passes; ++pass) {
        const auto w0 = std::chrono::steady_clock::now();
        const double c0 = thread_cpu_seconds();
        int64_t n = 0;
        for (const std::string& d : docs) n += static_cast<int64_t>((*tok)->encode(d).size());
        cpu[t][pass] = thread_cpu_seconds() - c0;
        wall[t][pass] = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
        tokens[t] = n;
      }
    });
  }
  for (std::thread& t : pool) t.join();
  for (int pass = 0; pass < passes; ++pass) {
    double w = 0, c = 0;
    for (int t = 0; t < threads; ++t) {
      w += wall[t][pass] / threads;
      c += cpu[t][pass] / threads;
    }
    std::printf(
        "pass %d%s: %.2f MB/s per thread (wall), %.2f MB/s per thread (CPU time), %lld tokens (%.2f bytes/token)\n",
        pass + 1, pass == 0 ? " (empty cache)" : "", bytes / 1e6 / w, bytes / 1e6 / c,
        static_cast<long long>(tokens[0]), bytes / double(tokens[0]));
  }
  return 0;
}
