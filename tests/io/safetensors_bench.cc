// Load benchmark for peft::io: writes a >= 600 MB F32 checkpoint to a temp
// dir, then measures open + view + copy_ into preallocated tensors, with and
// without release() after each tensor, and reports load time and peak RSS
// (VmHWM) relative to the file size.
//
//   bazel run //tests/io:safetensors_bench -- [megabytes=640] [shard_mb=0]
//
// shard_mb > 0 writes a sharded checkpoint. Before each cold run the file's
// page cache is dropped with posix_fadvise(DONTNEED), so "cold" reads the
// disk; "warm" runs read from the page cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"

namespace {

int64_t status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string prefix = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) == 0) return std::stoll(line.substr(prefix.size()));
  }
  return -1;
}

// Writing "5" to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return static_cast<bool>(out);
}

void drop_page_cache(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    int fd = open(e.path().c_str(), O_RDONLY);
    if (fd < 0) continue;
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    close(fd);
  }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void run(const std::string& dir, std::vector<at::Tensor>& dst, const std::vector<std::string>& names, bool release,
         bool cold, double file_mb) {
  if (cold) drop_page_cache(dir);
  for (at::Tensor& t : dst) t.zero_();
  reset_peak_rss();
  const int64_t base_kb = status_kb("VmRSS");
  auto t0 = std::chrono::steady_clock::now();
  auto reader = peft::io::CheckpointReader::open(dir);
  if (!reader.ok()) {
    std::fprintf(stderr, "open failed: %s\n", std::string(reader.status().message()).c_str());
    std::exit(1);
  }
  for (size_t i = 0; i < names.size(); ++i) {
    absl::StatusOr<at::Tensor> v = (*reader)->view(names[i]);
    if (!v.ok()) std::exit(1);
    dst[i].copy_(*v);
    if (release) (*reader)->release(names[i]);
  }
  const double secs = seconds_since(t0);
  const int64_t peak_kb = status_kb("VmHWM");
  const double extra_mb = (peak_kb - base_kb) / 1024.0;
  std::printf(
      "%-5s %-15s load %6.3f s (%6.0f MB/s)  peak RSS %7.1f MB = base %7.1f "
      "+ %6.1f MB (%.3f x file)\n",
      cold ? "cold" : "warm", release ? "with release" : "without release", secs, file_mb / secs, peak_kb / 1024.0,
      base_kb / 1024.0, extra_mb, extra_mb / file_mb);
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t megabytes = argc > 1 ? std::atoll(argv[1]) : 640;
  const int64_t shard_mb = argc > 2 ? std::atoll(argv[2]) : 0;
  at::set_num_threads(static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN))));

  const std::string dir = peft::testing::make_temp_dir("safetensors_bench");
  // 16 MiB tensors ([4096, 1024] F32), like mid-sized projection weights.
  const int64_t count = (megabytes + 15) / 16;
  std::vector<std::string> names;
  std::vector<at::Tensor> dst;
  {
    std::vector<peft::io::NamedTensor> tensors;
    at::manual_seed(0);
    for (int64_t i = 0; i < count; ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), "model.layers.%03ld.weight", static_cast<long>(i));
      tensors.push_back({name, at::randn({4096, 1024})});
      names.push_back(name);
    }
    auto t0 = std::chrono::steady_clock::now();
    absl::Status s =
        peft::io::save_checkpoint(dir, tensors, shard_mb > 0 ? static_cast<uint64_t>(shard_mb) << 20 : 5ull << 30);
    if (!s.ok()) {
      std::fprintf(stderr, "save failed: %s\n", std::string(s.message()).c_str());
      return 1;
    }
    std::printf("wrote %ld tensors, %.1f MB in %.2f s to %s\n", static_cast<long>(count), count * 16.0,
                seconds_since(t0), dir.c_str());
  }  // the source tensors are freed here

  uint64_t file_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    file_bytes += e.file_size();
  }
  const double file_mb = file_bytes / (1024.0 * 1024.0);
  // Preallocated, touched destinations (as a model's parameters would be).
  for (int64_t i = 0; i < count; ++i) dst.push_back(at::zeros({4096, 1024}));
  std::printf("checkpoint files: %.1f MB; destinations allocated: RSS %.1f MB\n", file_mb, status_kb("VmRSS") / 1024.0);

  run(dir, dst, names, /*release=*/true, /*cold=*/true, file_mb);
  run(dir, dst, names, /*release=*/true, /*cold=*/false, file_mb);
  run(dir, dst, names, /*release=*/false, /*cold=*/true, file_mb);
  run(dir, dst, names, /*release=*/false, /*cold=*/false, file_mb);

  std::filesystem::remove_all(dir);
  return 0;
}
