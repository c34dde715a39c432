#include "models/llama.h"

#include <cmath>
#include <memory>
#include <utility>

#include <ATen/ATen.h>

#include "models/checkpoint.h"

namespace peft::models {
namespace {

AdaptableLinear make_linear(int64_t in, int64_t out, bool bias) {
  return AdaptableLinear(AdaptableLinearOptions{in, out, bias, /*fan_in_fan_out=*/false, /*owns_weight=*/true});
}

}  // namespace

LlamaAttentionImpl::LlamaAttentionImpl(const LlamaConfig& c, int64_t layer)
    : num_heads(c.num_attention_heads),
      num_kv_heads(c.num_key_value_heads),
      head_dim(c.head_dim),
      window(c.attention_window(layer)) {
  q_proj = register_module("q_proj", make_linear(c.hidden_size, num_heads * head_dim, c.has_qkv_bias()));
  k_proj = register_module("k_proj", make_linear(c.hidden_size, num_kv_heads * head_dim, c.has_qkv_bias()));
  v_proj = register_module("v_proj", make_linear(c.hidden_size, num_kv_heads * head_dim, c.has_qkv_bias()));
  o_proj = register_module("o_proj", make_linear(num_heads * head_dim, c.hidden_size, c.has_o_bias()));
}

at::Tensor LlamaAttentionImpl::forward(const at::Tensor& x, const RopeTables& rope, KvCache* cache, int64_t layer) {
  const int64_t b = x.size(0), t = x.size(1);
  const int64_t past = cache ? cache->length : 0;
  at::Tensor q = q_proj->forward(x).view({b, t, num_heads, head_dim}).transpose(1, 2);     // [B, H, T, D]
  at::Tensor k = k_proj->forward(x).view({b, t, num_kv_heads, head_dim}).transpose(1, 2);  // [B, G, T, D]
  at::Tensor v = v_proj->forward(x).view({b, t, num_kv_heads, head_dim}).transpose(1, 2);  // [B, G, T, D]
  q = apply_rope(q, rope, past);
  k = apply_rope(k, rope, past);
  if (cache) std::tie(k, v) = cache->append(layer, k, v);  // [B, G, S, D]
  // [B, H, T, D]; with a window the cache keeps every position and the mask
  // hides the old ones, so cached decoding equals a full recompute.
  at::Tensor y = causal_attention(q, k, v, 1.0 / std::sqrt(static_cast<double>(head_dim)), window);
  return o_proj->forward(y.transpose(1, 2).reshape({b, t, num_heads * head_dim}));
}

LlamaMlpImpl::LlamaMlpImpl(const LlamaConfig& c) {
  gate_proj = register_module("gate_proj", make_linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
  up_proj = register_module("up_proj", make_linear(c.hidden_size, c.intermediate_size, c.mlp_bias));
  down_proj = register_module("down_proj", make_linear(c.intermediate_size, c.hidden_size, c.mlp_bias));
}

at::Tensor LlamaMlpImpl::forward(const at::Tensor& x) {
  return down_proj->forward(at::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const LlamaConfig& c, int64_t layer) {
  self_attn = register_module("self_attn", LlamaAttention(c, layer));
  mlp = register_module("mlp", LlamaMlp(c));
  input_layernorm = register_module("input_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(c.hidden_size, c.rms_norm_eps));
}

at::Tensor LlamaDecoderLayerImpl::forward(const at::Tensor& x, const RopeTables& rope, KvCache* cache, int64_t layer,
                                          const StreamHook& hook) {
  at::Tensor a = self_attn->forward(input_layernorm->forward(x), rope, cache, layer);
  if (hook) a = hook(HookPoint::kAttentionOutput, layer, a);
  at::Tensor h = x + a;
  at::Tensor m = mlp->forward(post_attention_layernorm->forward(h));
  if (hook) m = hook(HookPoint::kMlpOutput, layer, m);
  return h + m;
}

LlamaModelImpl::LlamaModelImpl(const LlamaConfig& c) {
  embed_tokens = register_module("embed_tokens", Embedding(c.vocab_size, c.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(c, i));
  norm = register_module("norm", RmsNorm(c.hidden_size, c.rms_norm_eps));
}

LlamaForCausalLMImpl::LlamaForCausalLMImpl(const ModelConfig& cfg) : config_(cfg) {
  TORCH_CHECK(cfg.arch == Architecture::kLlama, "LlamaForCausalLM needs a llama config");
  const LlamaConfig& c = cfg.llama;
  model = register_module("model", LlamaModel(c));
  const bool tied = c.tie_word_embeddings;
  lm_head = register_module("lm_head",
                            AdaptableLinear(AdaptableLinearOptions{c.hidden_size, c.vocab_size, false, false, !tied}));
  if (tied) lm_head->tie_weight_(model->embed_tokens->weight);
  RopeSpec spec;
  spec.head_dim = c.head_dim;
  spec.max_positions = c.max_position_embeddings;
  spec.theta = c.rope_theta;
  spec.rope_type = c.rope_scaling.rope_type;
  spec.factor = c.rope_scaling.factor;
  spec.low_freq_factor = c.rope_scaling.low_freq_factor;
  spec.high_freq_factor = c.rope_scaling.high_freq_factor;
  spec.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
  rope_ = make_rope_tables(spec);
  for (const auto& item : named_parameters(/*recurse=*/true)) base_names_.insert(item.key());
}

at::Tensor LlamaForCausalLMImpl::forward_hidden(const at::Tensor& ids, KvCache* cache) {
  TORCH_CHECK(ids.dim() == 2, "input_ids must be [B, T], got ", ids.sizes());
  const int64_t past = cache ? cache->length : 0;
  TORCH_CHECK(past + ids.size(1) <= config_.llama.max_position_embeddings, "sequence of ", past + ids.size(1),
              " positions exceeds max_position_embeddings ", config_.llama.max_position_embeddings);
  at::Tensor h = model->embed_tokens->forward(ids);  // [B, T, C]
  if (rope_.cos.device() != h.device()) {
    // The tables follow the model to its device once, not per layer and step.
    rope_ = RopeTables{rope_.inv_freq.to(h.device()), rope_.cos.to(h.device()), rope_.sin.to(h.device())};
  }
  if (hook_) h = hook_(HookPoint::kEmbedding, -1, h);
  const bool checkpoint = checkpointing_ && cache == nullptr && is_training() && at::GradMode::is_enabled();
  for (int64_t i = 0; i < static_cast<int64_t>(model->layers->size()); ++i) {
    std::shared_ptr<LlamaDecoderLayerImpl> layer = model->layers->ptr<LlamaDecoderLayerImpl>(i);
    if (!checkpoint) {
      h = layer->forward(h, rope_, cache, i, hook_);
      continue;
    }
    BlockFn fn = [layer, rope = rope_, i, hook = hook_](const at::Tensor& x) {
      return layer->forward(x, rope, /*cache=*/nullptr, i, hook);
    };
    // The hook is assumed trainable: its parameters are not the block's.
    h = checkpoint_block(std::move(fn), h, static_cast<bool>(hook_) || any_requires_grad(layer->parameters()));
  }
  if (cache) cache->advance(ids.size(1));
  return model->norm->forward(h);
}

at::Tensor LlamaForCausalLMImpl::logits_from_hidden(const at::Tensor& hidden) { return lm_head->forward(hidden); }

at::Tensor LlamaForCausalLMImpl::plain_head_weight() { return lm_head->plain_weight(); }

KvCache LlamaForCausalLMImpl::make_cache(int64_t batch, int64_t capacity) const {
  const LlamaConfig& c = config_.llama;
  return KvCache::create(c.num_hidden_layers, batch, c.num_key_value_heads, capacity, c.head_dim,
                         model->embed_tokens->weight.options().requires_grad(false));
}

std::vector<HfParameter> LlamaForCausalLMImpl::hf_parameters() {
  std::vector<HfParameter> out;
  for (const auto& item : named_parameters(/*recurse=*/true)) {
    // Parameters registered later (adapters) are not part of the checkpoint.
    if (!base_names_.count(item.key())) continue;
    out.push_back(HfParameter{item.key(), item.value(), false});
  }
  return out;  // a tied lm_head registers no weight, so it is absent here
}

std::vector<AdaptableSlot> LlamaForCausalLMImpl::adaptable_slots() {
  // Read off the structure (not parsed out of names): each decoder block's
  // attention then MLP projections, then the head, as named_modules() orders them.
  std::vector<AdaptableSlot> out;
  for (int64_t i = 0; i < static_cast<int64_t>(model->layers->size()); ++i) {
    const std::shared_ptr<LlamaDecoderLayerImpl> layer = model->layers->ptr<LlamaDecoderLayerImpl>(i);
    const std::string block = "model.layers." + std::to_string(i) + ".";
    LlamaAttentionImpl& a = *layer->self_attn;
    LlamaMlpImpl& m = *layer->mlp;
    const std::pair<const char*, AdaptableLinearImpl*> projections[] = {
        {"self_attn.q_proj", a.q_proj.get()}, {"self_attn.k_proj", a.k_proj.get()},
        {"self_attn.v_proj", a.v_proj.get()}, {"self_attn.o_proj", a.o_proj.get()},
        {"mlp.gate_proj", m.gate_proj.get()}, {"mlp.up_proj", m.up_proj.get()},
        {"mlp.down_proj", m.down_proj.get()},
    };
    for (const auto& [name, linear] : projections) {
      out.push_back(AdaptableSlot{block + name, i, linear});
    }
  }
  out.push_back(AdaptableSlot{"lm_head", -1, lm_head.get()});  // outside the blocks, tied or not
  return out;
}

std::vector<TargetPreset> LlamaForCausalLMImpl::target_presets() const {
  return {
      {"attention", {"q_proj", "k_proj", "v_proj", "o_proj"}},
      {"mlp", {"gate_proj", "up_proj", "down_proj"}},
      {"all_linear", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}},
      // PEFT's TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING["llama"].
      {"default", {"q_proj", "v_proj"}},
  };
}

}  // namespace peft::models
