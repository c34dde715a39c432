#include "tests/testing/safetensors_compare.h"

#include <algorithm>

#include <ATen/ATen.h>

#include "peft/io/safetensors.h"

namespace peft::testing {

SafetensorsDifference compare_safetensors(const std::string& a, const std::string& b) {
  SafetensorsDifference d;
  auto x = io::SafetensorsFile::open(a);
  auto y = io::SafetensorsFile::open(b);
  if (!x.ok() || !y.ok()) {
    d.error = std::string(!x.ok() ? x.status().message() : y.status().message());
    return d;
  }
  if ((*x)->tensors().size() != (*y)->tensors().size()) {
    d.error = a + " holds " + std::to_string((*x)->tensors().size()) + " tensors, " + b + " " +
              std::to_string((*y)->tensors().size());
    return d;
  }
  for (const io::TensorInfo& t : (*x)->tensors()) {
    auto u = (*x)->load(t.name);
    auto v = (*y)->load(t.name);
    if (!u.ok() || !v.ok()) {
      d.error = "tensor " + t.name + ": " + std::string(!u.ok() ? u.status().message() : v.status().message());
      return d;
    }
    if (u->sizes() != v->sizes()) {
      d.error = "tensor " + t.name + " differs in shape";
      return d;
    }
    const at::Tensor ud = u->to(at::kDouble), vd = v->to(at::kDouble);
    if (ud.numel() == 0) continue;
    d.max_abs_difference = std::max(d.max_abs_difference, (ud - vd).abs().max().item<double>());
    d.max_abs_value = std::max(d.max_abs_value, ud.abs().max().item<double>());
  }
  return d;
}

}  // namespace peft::testing
