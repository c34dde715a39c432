#include "trainers/progress.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"

namespace peft::trainers {

std::string clock_text(double seconds) {
  const int64_t t = std::isfinite(seconds) ? static_cast<int64_t>(std::max(0.0, seconds)) : 0;
  if (t >= 3600) return absl::StrFormat("%d:%02d:%02d", t / 3600, t / 60 % 60, t % 60);
  return absl::StrFormat("%02d:%02d", t / 60, t % 60);
}

std::string progress_bar(int64_t done, int64_t total) {
  constexpr int kWidth = 20;
  const double f = total > 0 ? std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0) : 1.0;
  const int full = static_cast<int>(f * kWidth);
  std::string bar(kWidth, ' ');
  for (int i = 0; i < full; ++i) bar[i] = '=';
  if (full > 0 && full < kWidth) bar[full - 1] = '>';
  return absl::StrFormat("[%s] %3d%%", bar, static_cast<int>(f * 100));
}

}  // namespace peft::trainers
