#include "models/gpt2.h"

#include <cmath>
#include <memory>
#include <utility>

#include <ATen/ATen.h>

#include "models/checkpoint.h"

namespace peft::models {
namespace {

// Conv1D projection: [out, in] here, [in, out] in the checkpoint.
AdaptableLinear conv1d(int64_t in, int64_t out) {
  return AdaptableLinear(AdaptableLinearOptions{in, out, /*bias=*/true, /*fan_in_fan_out=*/true, true});
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

Gpt2AttentionImpl::Gpt2AttentionImpl(const Gpt2Config& c, int64_t layer_idx)
    : num_heads(c.n_head),
      head_dim(c.n_embd / c.n_head),
      scale((c.scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(c.n_embd / c.n_head)) : 1.0) /
            (c.scale_attn_by_inverse_layer_idx ? static_cast<double>(layer_idx + 1) : 1.0)) {
  c_attn = register_module("c_attn", conv1d(c.n_embd, 3 * c.n_embd));
  c_proj = register_module("c_proj", conv1d(c.n_embd, c.n_embd));
}

at::Tensor Gpt2AttentionImpl::forward(const at::Tensor& x, KvCache* cache, int64_t layer) {
  const int64_t b = x.size(0), t = x.size(1), c = num_heads * head_dim;
  std::vector<at::Tensor> qkv = c_attn->forward(x).split(c, -1);            // 3 x [B, T, C]
  at::Tensor q = qkv[0].view({b, t, num_heads, head_dim}).transpose(1, 2);  // [B, H, T, D]
  at::Tensor k = qkv[1].view({b, t, num_heads, head_dim}).transpose(1, 2);
  at::Tensor v = qkv[2].view({b, t, num_heads, head_dim}).transpose(1, 2);
  if (cache) std::tie(k, v) = cache->append(layer, k, v);
  at::Tensor y = causal_attention(q, k, v, scale);  // [B, H, T, D]
  return c_proj->forward(y.transpose(1, 2).reshape({b, t, c}));
}

Gpt2MlpImpl::Gpt2MlpImpl(const Gpt2Config& c) : tanh_gelu(c.activation_function != "gelu") {
  c_fc = register_module("c_fc", conv1d(c.n_embd, c.n_inner));
  c_proj = register_module("c_proj", conv1d(c.n_inner, c.n_embd));
}

at::Tensor Gpt2MlpImpl::forward(const at::Tensor& x) {
  // gelu_new == tanh-approximated GELU.
  return c_proj->forward(at::gelu(c_fc->forward(x), tanh_gelu ? "tanh" : "none"));
}

Gpt2BlockImpl::Gpt2BlockImpl(const Gpt2Config& c, int64_t layer_idx) {
  ln_1 = register_module("ln_1", LayerNorm(c.n_embd, c.layer_norm_epsilon));
  attn = register_module("attn", Gpt2Attention(c, layer_idx));
  ln_2 = register_module("ln_2", LayerNorm(c.n_embd, c.layer_norm_epsilon));
  mlp = register_module("mlp", Gpt2Mlp(c));
}

at::Tensor Gpt2BlockImpl::forward(const at::Tensor& x, KvCache* cache, int64_t layer, const StreamHook& hook) {
  at::Tensor a = attn->forward(ln_1->forward(x), cache, layer);
  if (hook) a = hook(HookPoint::kAttentionOutput, layer, a);
  at::Tensor h = x + a;
  at::Tensor m = mlp->forward(ln_2->forward(h));
  if (hook) m = hook(HookPoint::kMlpOutput, layer, m);
  return h + m;
}

Gpt2ModelImpl::Gpt2ModelImpl(const Gpt2Config& c) {
  wte = register_module("wte", Embedding(c.vocab_size, c.n_embd));
  wpe = register_module("wpe", Embedding(c.n_positions, c.n_embd));
  h = register_module("h", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.n_layer; ++i) h->push_back(Gpt2Block(c, i));
  ln_f = register_module("ln_f", LayerNorm(c.n_embd, c.layer_norm_epsilon));
}

Gpt2LMHeadModelImpl::Gpt2LMHeadModelImpl(const ModelConfig& cfg) : config_(cfg) {
  TORCH_CHECK(cfg.arch == Architecture::kGpt2, "GPT2LMHeadModel needs a gpt2 config");
  const Gpt2Config& c = cfg.gpt2;
  transformer = register_module("transformer", Gpt2Model(c));
  const bool tied = c.tie_word_embeddings;
  lm_head =
      register_module("lm_head", AdaptableLinear(AdaptableLinearOptions{c.n_embd, c.vocab_size, false, false, !tied}));
  if (tied) lm_head->tie_weight_(transformer->wte->weight);
  for (const auto& item : named_parameters(/*recurse=*/true)) base_names_.insert(item.key());
}

at::Tensor Gpt2LMHeadModelImpl::forward_hidden(const at::Tensor& ids, KvCache* cache) {
  TORCH_CHECK(ids.dim() == 2, "input_ids must be [B, T], got ", ids.sizes());
  const int64_t past = cache ? cache->length : 0;
  const int64_t t = ids.size(1);
  TORCH_CHECK(past + t <= config_.gpt2.n_positions, "sequence of ", past + t, " positions exceeds n_positions ",
              config_.gpt2.n_positions);
  at::Tensor pos = at::arange(past, past + t, ids.options().dtype(at::kLong));
  at::Tensor h = transformer->wte->forward(ids) + transformer->wpe->forward(pos).unsqueeze(0);  // [B, T, C]
  if (hook_) h = hook_(HookPoint::kEmbedding, -1, h);
  const bool checkpoint = checkpointing_ && cache == nullptr && is_training() && at::GradMode::is_enabled();
  for (int64_t i = 0; i < static_cast<int64_t>(transformer->h->size()); ++i) {
    std::shared_ptr<Gpt2BlockImpl> block = transformer->h->ptr<Gpt2BlockImpl>(i);
    if (!checkpoint) {
      h = block->forward(h, cache, i, hook_);
      continue;
    }
    BlockFn fn = [block, i, hook = hook_](const at::Tensor& x) {
      return block->forward(x, /*cache=*/nullptr, i, hook);
    };
    // The hook is assumed trainable: its parameters are not the block's.
    h = checkpoint_block(std::move(fn), h, static_cast<bool>(hook_) || any_requires_grad(block->parameters()));
  }
  if (cache) cache->advance(t);
  return transformer->ln_f->forward(h);
}

at::Tensor Gpt2LMHeadModelImpl::logits_from_hidden(const at::Tensor& hidden) { return lm_head->forward(hidden); }

at::Tensor Gpt2LMHeadModelImpl::plain_head_weight() { return lm_head->plain_weight(); }

KvCache Gpt2LMHeadModelImpl::make_cache(int64_t batch, int64_t capacity) const {
  const Gpt2Config& c = config_.gpt2;
  return KvCache::create(c.n_layer, batch, c.n_head, capacity, c.n_embd / c.n_head,
                         transformer->wte->weight.options().requires_grad(false));
}

std::vector<HfParameter> Gpt2LMHeadModelImpl::hf_parameters() {
  std::vector<HfParameter> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) {
    const std::string& name = item.key();
    if (!base_names_.count(name)) continue;  // adapters are not part of the checkpoint
    // Conv1D weights live under attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj.
    const bool conv =
        ends_with(name, "c_attn.weight") || ends_with(name, "c_proj.weight") || ends_with(name, "c_fc.weight");
    out.push_back(HfParameter{name, item.value(), conv});
  }
  return out;
}

std::vector<AdaptableSlot> Gpt2LMHeadModelImpl::adaptable_slots() {
  // Read off the structure (not parsed out of names): each block's attention
  // then MLP projections, then the head, as named_modules() orders them.
  std::vector<AdaptableSlot> out;
  for (int64_t i = 0; i < static_cast<int64_t>(transformer->h->size()); ++i) {
    const std::shared_ptr<Gpt2BlockImpl> b = transformer->h->ptr<Gpt2BlockImpl>(i);
    const std::string block = "transformer.h." + std::to_string(i) + ".";
    out.push_back(AdaptableSlot{block + "attn.c_attn", i, b->attn->c_attn.get()});
    out.push_back(AdaptableSlot{block + "attn.c_proj", i, b->attn->c_proj.get()});
    out.push_back(AdaptableSlot{block + "mlp.c_fc", i, b->mlp->c_fc.get()});
    out.push_back(AdaptableSlot{block + "mlp.c_proj", i, b->mlp->c_proj.get()});
  }
  out.push_back(AdaptableSlot{"lm_head", -1, lm_head.get()});  // tied to wte by default; outside the blocks
  return out;
}

std::vector<TargetPreset> Gpt2LMHeadModelImpl::target_presets() const {
  // GPT-2 has two c_proj: the block-qualified suffixes tell them apart, and
  // PEFT's plain "c_proj" matches both.
  return {
      {"attention", {"attn.c_attn", "attn.c_proj"}},
      {"mlp", {"mlp.c_fc", "mlp.c_proj"}},
      {"all_linear", {"c_attn", "c_proj", "c_fc"}},
      // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["gpt2"].
      {"default", {"c_attn"}},
  };
}

}  // namespace peft::models
