#include "models/gguf/export.h"

#include <regex>
#include <utility>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "models/blocks.h"
#include "peft/core/status.h"

namespace peft::models::gguf {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Block-local Hugging Face module names -> llama.cpp's, per architecture.
struct NameRule {
  const char* hf;
  const char* gguf;
};

constexpr NameRule kLlamaBlock[] = {
    {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"},      {"self_attn.k_proj", "attn_k"},
    {"self_attn.v_proj", "attn_v"},   {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
    {"mlp.gate_proj", "ffn_gate"},    {"mlp.up_proj", "ffn_up"},           {"mlp.down_proj", "ffn_down"},
};
constexpr NameRule kLlamaGlobal[] = {
    {"model.embed_tokens", "token_embd"},
    {"model.norm", "output_norm"},
    {"lm_head", "output"},
};
constexpr NameRule kGpt2Block[] = {
    {"ln_1", "attn_norm"}, {"attn.c_attn", "attn_qkv"}, {"attn.c_proj", "attn_output"},
    {"ln_2", "ffn_norm"},  {"mlp.c_fc", "ffn_up"},      {"mlp.c_proj", "ffn_down"},
};
constexpr NameRule kGpt2Global[] = {
    {"transformer.wte", "token_embd"},
    {"transformer.wpe", "position_embd"},
    {"transformer.ln_f", "output_norm"},
    {"lm_head", "output"},
};

}  // namespace

std::string architecture_name(const ModelConfig& config) {
  if (config.arch == Architecture::kGpt2) return "gpt2";
  // convert_hf_to_gguf.py: MistralForCausalLM is its LlamaModel (arch llama),
  // Qwen2ForCausalLM its Qwen2Model (arch qwen2).
  return config.llama.family == LlamaFamily::kQwen2 ? "qwen2" : "llama";
}

std::vector<std::string> export_notes(const ModelConfig& config) {
  std::vector<std::string> notes;
  if (config.arch != Architecture::kLlama || config.llama.family != LlamaFamily::kMistral) return notes;
  const LlamaConfig& c = config.llama;
  if (c.sliding_window > 0 && c.sliding_window < c.max_position_embeddings) {
    notes.push_back(absl::StrCat(
        "llama.cpp runs Mistral as architecture 'llama', whose graph has no sliding window: it attends over the "
        "whole context, which equals this model's sliding_window = ",
        c.sliding_window, " attention only while the context stays within ", c.sliding_window,
        " tokens (run llama.cpp with -c ", c.sliding_window, " or less for identical results)"));
  }
  return notes;
}

std::string tensor_name(const ModelConfig& config, const std::string& hf_name) {
  const bool llama = config.arch == Architecture::kLlama;
  static const std::regex kLlamaLayer(R"(model\.layers\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex kGpt2Layer(R"(transformer\.h\.(\d+)\.(.+)\.(weight|bias))");
  static const std::regex kGlobal(R"((.+)\.(weight|bias))");
  std::smatch m;
  if (std::regex_match(hf_name, m, llama ? kLlamaLayer : kGpt2Layer)) {
    const NameRule* begin = llama ? std::begin(kLlamaBlock) : std::begin(kGpt2Block);
    const NameRule* end = llama ? std::end(kLlamaBlock) : std::end(kGpt2Block);
    for (const NameRule* r = begin; r != end; ++r) {
      if (m[2] == r->hf) return absl::StrCat("blk.", m[1].str(), ".", r->gguf, ".", m[3].str());
    }
    return "";
  }
  if (std::regex_match(hf_name, m, kGlobal)) {
    const NameRule* begin = llama ? std::begin(kLlamaGlobal) : std::begin(kGpt2Global);
    const NameRule* end = llama ? std::end(kLlamaGlobal) : std::end(kGpt2Global);
    for (const NameRule* r = begin; r != end; ++r) {
      if (m[1] == r->hf) return absl::StrCat(r->gguf, ".", m[2].str());
    }
  }
  return "";
}

TensorType storage_type(const std::string& name, const std::vector<int64_t>& shape, TensorType requested) {
  // convert_hf_to_gguf.py's rules: vectors and norms stay f32 (most of ggml
  // only handles f32 there), as does the position embedding; only weights
  // (and LoRA factors) take the requested type.
  if (shape.size() <= 1 || ends_with(name, "_norm.weight") || name.rfind("position_embd.", 0) == 0) {
    return TensorType::kF32;
  }
  if (!ends_with(name, ".weight") && !ends_with(name, ".lora_a") && !ends_with(name, ".lora_b")) {
    return TensorType::kF32;
  }
  if (requested == TensorType::kQ8_0 && shape.back() % kQ8BlockValues != 0) return TensorType::kF16;
  return requested;
}

at::Tensor interleave_rotary_rows(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0);
  TORCH_CHECK(heads > 0 && rows % (2 * heads) == 0, "interleave_rotary_rows: ", rows, " rows do not split into ", heads,
              " heads of pairs");
  std::vector<int64_t> view = {heads, 2, rows / heads / 2};
  for (int64_t d = 1; d < w.dim(); ++d) view.push_back(w.size(d));
  return w.reshape(view).transpose(1, 2).reshape(w.sizes()).contiguous();
}

int64_t rotary_heads(const ModelConfig& config, const std::string& name) {
  // Only llama.cpp's "llama" graph rotates interleaved pairs; qwen2's uses
  // rotate-half (NEOX) as Hugging Face does, so its rows stay.
  if (config.arch != Architecture::kLlama || architecture_name(config) != "llama") return 0;
  for (const char* kind : {".attn_q.", ".attn_k."}) {
    const size_t at = name.find(kind);
    if (at == std::string::npos || name.rfind("blk.", 0) != 0) continue;
    const std::string rest = name.substr(at + 8);  // after ".attn_q."
    if (rest.rfind("weight", 0) != 0 && rest.rfind("bias", 0) != 0) continue;
    return kind[6] == 'q' ? config.llama.num_attention_heads : config.llama.num_key_value_heads;
  }
  return 0;
}

std::vector<float> llama3_rope_divisors(const LlamaConfig& c) {
  RopeSpec base;
  base.head_dim = c.head_dim;
  base.max_positions = 1;
  base.theta = c.rope_theta;
  RopeSpec scaled = base;
  scaled.rope_type = c.rope_scaling.rope_type;
  scaled.factor = c.rope_scaling.factor;
  scaled.low_freq_factor = c.rope_scaling.low_freq_factor;
  scaled.high_freq_factor = c.rope_scaling.high_freq_factor;
  scaled.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
  const at::Tensor ratio =
      (make_rope_tables(base).inv_freq.to(at::kDouble) / make_rope_tables(scaled).inv_freq.to(at::kDouble))
          .to(at::kFloat)
          .contiguous();
  return std::vector<float>(ratio.data_ptr<float>(), ratio.data_ptr<float>() + ratio.numel());
}

absl::Status add_architecture_metadata(const ModelConfig& config, const ExportOptions& options, Metadata* md) {
  const std::string arch = architecture_name(config);
  auto key = [&arch](const char* k) { return absl::StrCat(arch, ".", k); };
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  md->add_string("general.architecture", arch);
  md->add_string("general.type", "model");
  if (!options.name.empty()) md->add_string("general.name", options.name);
  md->add_uint32("general.file_type", file_type_of(options.dtype));
  md->add_uint32("general.quantization_version", 2);
  if (config.arch == Architecture::kLlama) {
    const LlamaConfig& c = config.llama;
    if (c.family == LlamaFamily::kQwen2) {
      // llama.cpp's qwen2 graph reads no rope_freqs tensor and has no window.
      if (c.rope_scaling.rope_type == "llama3") {
        return absl::UnimplementedError(
            "this qwen2 model uses llama3 RoPE scaling, which llama.cpp's qwen2 architecture does not apply (it "
            "reads no rope_freqs tensor): it cannot be exported to GGUF");
      }
      for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
        if (c.attention_window(l) > 0 && c.attention_window(l) < c.max_position_embeddings) {
          return absl::UnimplementedError(
              absl::StrCat("this qwen2 model uses sliding-window attention (use_sliding_window: true, window ",
                           c.attention_window(l), " from layer ", l,
                           " on), which llama.cpp's qwen2 architecture does not apply: it cannot be exported to "
                           "GGUF"));
        }
      }
    }
    md->add_uint32(key("vocab_size"), u32(c.vocab_size));
    md->add_uint32(key("context_length"), u32(c.max_position_embeddings));
    md->add_uint32(key("embedding_length"), u32(c.hidden_size));
    md->add_uint32(key("block_count"), u32(c.num_hidden_layers));
    md->add_uint32(key("feed_forward_length"), u32(c.intermediate_size));
    md->add_uint32(key("attention.head_count"), u32(c.num_attention_heads));
    md->add_uint32(key("attention.head_count_kv"), u32(c.num_key_value_heads));
    md->add_float32(key("rope.freq_base"), static_cast<float>(c.rope_theta));
    md->add_float32(key("attention.layer_norm_rms_epsilon"), static_cast<float>(c.rms_norm_eps));
    md->add_uint32(key("rope.dimension_count"), u32(c.head_dim));
    if (c.head_dim * c.num_attention_heads != c.hidden_size) {
      md->add_uint32(key("attention.key_length"), u32(c.head_dim));
      md->add_uint32(key("attention.value_length"), u32(c.head_dim));
    }
    if (c.rope_scaling.rope_type == "linear") {
      md->add_string(key("rope.scaling.type"), "linear");
      md->add_float32(key("rope.scaling.factor"), static_cast<float>(c.rope_scaling.factor));
    }
  } else {
    const Gpt2Config& c = config.gpt2;
    if (!c.scale_attn_weights || c.scale_attn_by_inverse_layer_idx) {
      return absl::UnimplementedError(
          "this GPT-2 scales attention differently from llama.cpp's GPT-2 (scale_attn_weights=false or "
          "scale_attn_by_inverse_layer_idx=true): it cannot be exported to GGUF");
    }
    md->add_uint32(key("vocab_size"), u32(c.vocab_size));
    md->add_uint32(key("context_length"), u32(c.n_positions));
    md->add_uint32(key("embedding_length"), u32(c.n_embd));
    md->add_uint32(key("block_count"), u32(c.n_layer));
    md->add_uint32(key("feed_forward_length"), u32(c.n_inner));
    md->add_uint32(key("attention.head_count"), u32(c.n_head));
    md->add_float32(key("attention.layer_norm_epsilon"), static_cast<float>(c.layer_norm_epsilon));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExportStats> export_model(CausalLm& model, Vocab vocab, const std::string& path,
                                         const ExportOptions& options) {
  const ModelConfig& config = model.config();
  Metadata md;
  PEFT_RETURN_IF_ERROR(add_architecture_metadata(config, options, &md));
  PEFT_RETURN_IF_ERROR(fit_vocab_to_model(config, &vocab));
  add_vocab_metadata(vocab, &md);

  // The plan: every tensor's name, shape and type, before any data.
  struct Planned {
    at::Tensor tensor;  // the model's parameter (not copied)
    int64_t heads = 0;  // > 0: rows to interleave
  };
  std::vector<TensorInfo> infos;
  std::vector<Planned> plan;
  std::vector<float> rope_freqs;
  if (config.arch == Architecture::kLlama && config.llama.rope_scaling.rope_type == "llama3") {
    PEFT_RETURN_IF_ERROR(
        status_from_torch_error("rope_freqs", [&] { rope_freqs = llama3_rope_divisors(config.llama); }));
    infos.push_back({"rope_freqs.weight", {static_cast<int64_t>(rope_freqs.size())}, TensorType::kF32});
  }
  ExportStats stats;
  for (const HfParameter& p : model.hf_parameters()) {
    const std::string name = tensor_name(config, p.hf_name);
    if (name.empty()) {
      return absl::InternalError(absl::StrCat("parameter '", p.hf_name, "' has no llama.cpp tensor name"));
    }
    // Our parameters are [out, in] (GPT-2's Conv1D already transposed on
    // load), which is what llama.cpp wants: ne = {in, out}.
    const std::vector<int64_t> shape = p.tensor.sizes().vec();
    infos.push_back({name, shape, storage_type(name, shape, options.dtype)});
    plan.push_back({p.tensor, rotary_heads(config, name)});
    stats.parameters += p.tensor.numel();
  }

  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> w,
                        GgufWriter::create(path, md, std::move(infos), WriterOptions{options.overwrite}));
  if (!rope_freqs.empty()) PEFT_RETURN_IF_ERROR(w->write_tensor(rope_freqs.data(), rope_freqs.size()));
  torch::NoGradGuard no_grad;
  for (const Planned& p : plan) {
    const std::string name = w->next_tensor();
    at::Tensor t;
    PEFT_RETURN_IF_ERROR(status_from_torch_error(name.c_str(), [&] {
      t = p.tensor.detach().to(at::kCPU, at::kFloat).contiguous();  // no copy for a CPU fp32 parameter
      if (p.heads > 0) t = interleave_rotary_rows(t, p.heads);
    }));
    PEFT_RETURN_IF_ERROR(w->write_tensor(t.data_ptr<float>(), static_cast<size_t>(t.numel())));
  }
  PEFT_RETURN_IF_ERROR(w->commit());
  stats.tensors = static_cast<int64_t>(plan.size() + (rope_freqs.empty() ? 0 : 1));
  stats.file_bytes = w->file_bytes();
  return stats;
}

}  // namespace peft::models::gguf
