#include "peft/hsm/prune.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "models/llama.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/registry.h"

namespace peft {
namespace {

// The projection's weight as forward() sees it: base plus every active,
// unmerged adapter, computed in `cd` (fp32 or fp64).
at::Tensor effective_weight(const AdaptableLinearImpl& lin, at::ScalarType cd) {
  const at::Tensor base = lin.weight.detach();
  at::Tensor w = base.to(cd);
  for (const auto& [name, scale] : lin.active()) {
    const auto& merged = lin.merged();
    if (std::any_of(merged.begin(), merged.end(), [&](const auto& m) { return m.first == name; })) continue;
    const at::Tensor w32 = base.to(at::kFloat);
    const at::Tensor delta = lin.adapter(name)->merged_weight(w32).to(cd) - w32.to(cd);
    w = w + delta * scale;
  }
  return w;
}

// One HSM's fold: rows of M W for W [H, in] with M = diag(f)(I + B A), f = g ⊙ γ.
at::Tensor fold_rows(const HsmModuleImpl& s, const at::Tensor& f, const at::Tensor& w) {
  const at::ScalarType cd = w.scalar_type();
  const at::Tensor A = s.A.detach().to(cd), B = s.B.detach().to(cd);
  return (w + at::matmul(B, at::matmul(A, w))) * f.to(cd).unsqueeze(1);
}

// E Mᵀ for E [V, H].
at::Tensor fold_cols(const HsmModuleImpl& s, const at::Tensor& f, const at::Tensor& e) {
  const at::ScalarType cd = e.scalar_type();
  const at::Tensor A = s.A.detach().to(cd), B = s.B.detach().to(cd);
  return (e + at::matmul(at::matmul(e, A.t()), B.t())) * f.to(cd).unsqueeze(0);
}

void assign(at::Tensor& dst, const at::Tensor& value, const char* what) {
  TORCH_CHECK(dst.sizes() == value.sizes(), "prune_hsm: ", what, " has shape ", value.sizes(),
              ", the pruned model needs ", dst.sizes());
  dst.copy_(value);
}

}  // namespace

absl::StatusOr<HsmAdapterImpl*> find_hsm_adapter(PeftModel& pm, const std::string& name) {
  const proto::AdapterConfig* cfg = pm.config(name);
  if (cfg == nullptr) return absl::NotFoundError(absl::StrCat("no adapter named '", name, "'"));
  if (!cfg->has_hsm()) return absl::InvalidArgumentError(absl::StrCat("adapter '", name, "' is not an hsm adapter"));
  // PeftModel registers a stream adapter's module as root child "peft_<name>".
  for (const auto& child : pm.model().module().named_children()) {
    if (child.key() != "peft_" + name) continue;
    if (auto* h = dynamic_cast<HsmAdapterImpl*>(child.value().get())) return h;
  }
  return absl::InternalError(absl::StrCat("adapter '", name, "': its HSM module is not registered on the model"));
}

absl::StatusOr<std::shared_ptr<models::CausalLm>> prune_hsm(PeftModel& pm, const std::string& name) {
  PEFT_ASSIGN_OR_RETURN(HsmAdapterImpl * hsm, find_hsm_adapter(pm, name));
  auto* src = dynamic_cast<models::LlamaForCausalLMImpl*>(&pm.model().module());
  if (src == nullptr) return absl::UnimplementedError("prune_hsm: only LLaMA models can be pruned");
  if (!hsm->hard_gate()) {
    return absl::FailedPreconditionError(
        absl::StrCat("prune_hsm: adapter '", name,
                     "' must use the hard gate (set_hard_gate_(true)) so that the pruned channels are "
                     "exactly zero"));
  }
  bool active = false;
  for (const auto& [a, w] : pm.active()) {
    if (a == name) {
      active = true;
      continue;
    }
    PEFT_ASSIGN_OR_RETURN(const AdapterMethod* m, method_of(*pm.config(a)));
    if (m->make_stream) {
      return absl::UnimplementedError(absl::StrCat("prune_hsm: active adapter '", a, "' (", m->name,
                                                   ") inserts modules on the stream and cannot be folded"));
    }
  }
  if (!active) return absl::FailedPreconditionError(absl::StrCat("prune_hsm: adapter '", name, "' is not active"));

  const models::ModelConfig& cfg = src->config();
  const int64_t H = cfg.llama.hidden_size;
  const at::ScalarType dtype = src->model->embed_tokens->weight.scalar_type();
  const at::ScalarType cd = dtype == at::kDouble ? at::kDouble : at::kFloat;
  torch::NoGradGuard no_grad;
  const at::Tensor g = hsm->gate().detach();                // [H], 0/1
  const at::Tensor keep = at::nonzero(g > 0.5).view({-1});  // K
  const int64_t Hp = keep.numel();
  if (Hp == 0) return absl::FailedPreconditionError("prune_hsm: the hard gate keeps no channel (every m_c <= 0)");
  const double ratio = static_cast<double>(H) / static_cast<double>(Hp);
  const double norm_factor = std::sqrt(ratio);

  // Embedding (writer) and head (reader) first: they decide the tying.
  const at::Tensor emb = src->model->embed_tokens->weight.detach().to(cd);
  const at::Tensor new_emb = fold_cols(*hsm->embed, hsm->embed->channel_factor(g), emb).index_select(1, keep);
  const at::Tensor new_head = effective_weight(*src->lm_head, cd).index_select(1, keep);
  models::ModelConfig nc = cfg;
  nc.llama.hidden_size = Hp;
  nc.llama.rms_norm_eps = cfg.llama.rms_norm_eps * ratio;
  nc.llama.tie_word_embeddings = cfg.llama.tie_word_embeddings && at::equal(new_emb, new_head);
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<models::CausalLm> out_lm, models::create_model(nc));
  auto* dst = dynamic_cast<models::LlamaForCausalLMImpl*>(&out_lm->module());
  if (dtype != at::kFloat) dst->to(dtype);

  PEFT_RETURN_IF_ERROR(status_from_torch_error("prune_hsm", [&] {
    auto reader = [&](AdaptableLinearImpl& s, AdaptableLinearImpl& d, const char* what) {
      assign(d.weight, effective_weight(s, cd).index_select(1, keep), what);
      if (s.bias.defined()) assign(d.bias, s.bias.detach(), what);
    };
    auto writer = [&](AdaptableLinearImpl& s, AdaptableLinearImpl& d, const HsmModuleImpl& m, const char* what) {
      const at::Tensor f = m.channel_factor(g);
      assign(d.weight, fold_rows(m, f, effective_weight(s, cd)).index_select(0, keep), what);
      if (s.bias.defined()) {
        assign(d.bias, fold_rows(m, f, s.bias.detach().to(cd).unsqueeze(1)).squeeze(1).index_select(0, keep), what);
      }
    };
    auto norm = [&](const at::Tensor& s, at::Tensor& d, const char* what) {
      assign(d, s.detach().to(cd).index_select(0, keep) * norm_factor, what);
    };
    assign(dst->model->embed_tokens->weight, new_emb, "embed_tokens");
    if (!nc.llama.tie_word_embeddings) assign(dst->lm_head->weight, new_head, "lm_head");
    norm(src->model->norm->weight, dst->model->norm->weight, "norm");
    for (int64_t l = 0; l < cfg.llama.num_hidden_layers; ++l) {
      auto* s = (*src->model->layers)[l]->as<models::LlamaDecoderLayerImpl>();
      auto* d = (*dst->model->layers)[l]->as<models::LlamaDecoderLayerImpl>();
      reader(*s->self_attn->q_proj, *d->self_attn->q_proj, "q_proj");
      reader(*s->self_attn->k_proj, *d->self_attn->k_proj, "k_proj");
      reader(*s->self_attn->v_proj, *d->self_attn->v_proj, "v_proj");
      writer(*s->self_attn->o_proj, *d->self_attn->o_proj, *hsm->attn[l], "o_proj");
      reader(*s->mlp->gate_proj, *d->mlp->gate_proj, "gate_proj");
      reader(*s->mlp->up_proj, *d->mlp->up_proj, "up_proj");
      writer(*s->mlp->down_proj, *d->mlp->down_proj, *hsm->mlp[l], "down_proj");
      norm(s->input_layernorm->weight, d->input_layernorm->weight, "input_layernorm");
      norm(s->post_attention_layernorm->weight, d->post_attention_layernorm->weight, "post_attention_layernorm");
    }
  }));
  return out_lm;
}

}  // namespace peft
