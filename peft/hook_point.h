//
// Where a model lets adapters wrap its residual-stream writes (bottleneck
// adapters, masks): part of the adapter interface, so that models include it
// (models depend on the adapter layer, never the reverse). The hook receives
// the sublayer output h [B, T, C] at `point` of block `layer` (-1 for the
// embedding) and returns a tensor of the same shape, before it is added to
// the residual stream.
#ifndef PEFT_HOOK_POINT_H_
#define PEFT_HOOK_POINT_H_

#include <cstdint>
#include <functional>

#include <ATen/core/Tensor.h>

namespace peft {

enum class HookPoint { kEmbedding, kAttentionOutput, kMlpOutput };
using StreamHook = std::function<at::Tensor(HookPoint point, int64_t layer, const at::Tensor& h)>;

}  // namespace peft

#endif  // PEFT_HOOK_POINT_H_
