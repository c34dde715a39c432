#include <ATen/ATen.h>

#include "kernels/linear_cross_entropy.h"

namespace peft::kernels {

at::Tensor linear_cross_entropy_ref(const at::Tensor& h, const at::Tensor& W, const at::Tensor& labels,
                                    int64_t ignore_index) {
  const at::Tensor logits =
      at::matmul(h, W.t()).to(h.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);  // [N, V]
  return at::cross_entropy_loss(logits, labels, {}, at::Reduction::None, ignore_index);
}

}  // namespace peft::kernels
