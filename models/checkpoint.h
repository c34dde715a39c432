//
// Activation checkpointing of one transformer block, in the reentrant style of
// PyTorch's torch.utils.checkpoint (use_reentrant=True). The forward pass runs
// the block without building a graph and keeps only its input; the backward
// pass runs the block again with grad enabled, from a detached copy of the
// input, and back-propagates through that fresh graph. Memory per block drops
// from every activation the block saves for backward to one [B, T, C] input,
// for about one extra block forward per step.
//
//   BlockFn fn = [layer](const at::Tensor& x) { return layer->forward(x); };
//   h = checkpoint_block(std::move(fn), h,
//                        /*params_need_grad=*/any_requires_grad(layer->parameters()));
//
// What the recomputation reproduces, so that loss and gradients equal those of
// the plain forward:
//  - Randomness: the default CPU generator's state (and, for CUDA inputs, the
//    default generator of the input's device) is captured before the forward
//    run, set again for the recomputation and restored afterwards, so dropout
//    draws the same masks and the training RNG stream continues as without
//    checkpointing.
//  - Autocast: the CPU and CUDA autocast state at forward time (on/off and the
//    dtype, read through peft/core/autocast.h) is re-entered for the
//    recomputation, whatever the state when backward() runs. Only bf16 (the
//    dtype AutocastScope sets) can be re-entered; another autocast dtype that
//    differs from the backward-time state fails with a message.
//  - The autocast weight-cast cache is switched off for the no-grad forward
//    run: otherwise it would keep grad-less low-precision copies of trainable
//    fp32 leaves (LoRA factors, fully tuned weights), and a recomputation in
//    the same autocast region (trainers call backward() inside their
//    AutocastScope) would reuse them and silently drop those gradients.
//
// How gradients reach the block's parameters: they are not inputs of the
// checkpoint node. The recomputation's own backward accumulates into their
// .grad (as the reentrant PyTorch version does), so only backward() is
// supported through a checkpointed block, not torch::autograd::grad() nor
// backward() with `inputs`.
//
// A block whose input does not require grad (the first block when the
// embedding is frozen) still needs a node in the graph, or backward would never
// reach its trainable parameters. Then a zero-size "anchor" tensor that
// requires grad is passed as an extra input (the cheapest thing that makes the
// output require grad); its gradient is always undefined. The caller says
// whether the block has trainable parameters (`params_need_grad`); when
// neither the input nor the parameters need grad, fn runs plainly.
//
// Requirements on fn: it must be deterministic given the RNG state, the
// autocast state and its input, and must not change state that a second run
// would change again. The adapters were checked for this (2026-11):
//  - LoRA, NoRA, SORSA, Bone/MiSS: forward is a pure function of x, their
//    parameters and buffers; dropout draws from the default generator
//    (restored, see above). aux_loss()/regularizer() read parameters, not
//    forward activations, so a second run counts nothing twice.
//  - Compacter: pure; the shared rule tensor `phm_rule` is a leaf used in
//    every block and receives one contribution per block recomputation, as
//    in the plain graph.
//  - HSM (PAT): the gate is recomputed from the shared mask and the schedule
//    step (set by on_step, not by forward); the Identity and mask losses read
//    parameters. Nothing is recorded during forward.
//  - AdaptableLinear::compute_weight caches a low-precision copy of a frozen
//    base weight under autocast; it is keyed on the weight's storage and
//    version, identical in both runs, and carries no gradient.
// A KV cache appends during forward, so models never checkpoint a forward
// that has one (generation does not train). Models pass the stream hook into
// the checkpointed function, so the hook's modules of that block are
// recomputed too; whether the hook has trainable parameters is not known to
// the model, so a block with a hook always gets a checkpoint node.
// Costs measured by tests/models/checkpoint_bench.cc (LLaMA 512x8, LoRA r=8,
// batch 8x256, 1 thread; docs/benchmarks.md): peak RSS above the built model
// fp32 3163 -> 1322 MB, bf16 2090 -> 1300 MB (what remains is mostly the
// 32000-way head and its cross-entropy); step time +21% (fp32) to +33% (bf16).
#ifndef PEFT_MODELS_CHECKPOINT_H_
#define PEFT_MODELS_CHECKPOINT_H_

#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace peft::models {

/// A block's forward: x [B, T, C] -> [B, T, C].
using BlockFn = std::function<at::Tensor(const at::Tensor&)>;

/// fn(x), checkpointed: under grad mode, the returned tensor's backward
/// recomputes fn (see the file comment). `params_need_grad` says whether
/// anything fn reads other than x requires grad (its parameters, a stream
/// hook's); when it is false and x does not require grad, or grad mode is
/// off, this is fn(x). fn is kept alive until the graph is freed.
at::Tensor checkpoint_block(BlockFn fn, const at::Tensor& x, bool params_need_grad);

/// True when any of `tensors` requires grad (e.g. module.parameters()).
bool any_requires_grad(const std::vector<at::Tensor>& tensors);

}  // namespace peft::models

#endif  // PEFT_MODELS_CHECKPOINT_H_
