#include "models/llama2c.h"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <torch/csrc/autograd/grad_mode.h>

#include "absl/strings/str_cat.h"
#include "models/llama.h"
#include "models/model_io.h"
#include "peft/core/status.h"

namespace peft::models {

at::Tensor permute_rotary_rows(const at::Tensor& w, int64_t heads) {
  const int64_t rows = w.size(0), in = w.size(1);
  TORCH_CHECK(rows % (2 * heads) == 0, "permute_rotary_rows: ", rows, " rows do not split into ", heads,
              " heads of even size");
  const int64_t d = rows / heads;
  return w.reshape({heads, d / 2, 2, in}).transpose(1, 2).reshape({rows, in});
}

absl::StatusOr<std::shared_ptr<CausalLm>> import_llama2c(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  std::ifstream in(path, std::ios::binary);
  if (!in || file_size < 28) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": too short for a llama2.c header (", file_size, " bytes)"));
  }
  int32_t h[7];
  in.read(reinterpret_cast<char*>(h), sizeof(h));
  uint32_t magic;
  std::memcpy(&magic, h, 4);
  if (magic == 0x616b3432u) {
    return absl::UnimplementedError(absl::StrCat(path, ": llama2.c export version ", h[1],
                                                 " is not supported; only the version-0 (legacy) layout is"));
  }
  const int64_t dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], seq_len = h[6];
  const bool shared = h[5] > 0;
  const int64_t vocab = h[5] > 0 ? h[5] : -static_cast<int64_t>(h[5]);
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": not a llama2.c checkpoint (", what, "; header dim=", dim, " hidden_dim=", hidden, " n_layers=", layers,
        " n_heads=", heads, " n_kv_heads=", kv_heads, " vocab_size=", h[5], " seq_len=", seq_len, ")"));
  };
  if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || vocab <= 0 || seq_len <= 0 ||
      dim > (1 << 16) || hidden > (1 << 18) || layers > 1024 || vocab > (1 << 22) || seq_len > (1 << 22)) {
    return bad("header values out of range");
  }
  if (dim % heads != 0 || heads % kv_heads != 0 || (dim / heads) % 2 != 0) return bad("inconsistent head counts");
  const int64_t hs = dim / heads, kv_dim = kv_heads * hs;
  const int64_t weights = vocab * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv_dim * dim + 3 * dim * hidden) + dim +
                          (shared ? 0 : vocab * dim);
  const int64_t freq = seq_len * hs;  // freq_cis_real + freq_cis_imag, [seq_len, hs/2] each
  const uint64_t with_freq = 28 + 4 * static_cast<uint64_t>(weights + freq);
  const uint64_t without_freq = 28 + 4 * static_cast<uint64_t>(weights);
  if (file_size != with_freq && file_size != without_freq) {
    return bad(absl::StrCat("file has ", file_size, " bytes, the header implies ", with_freq, " (or ", without_freq,
                            " without freq_cis)"));
  }

  ModelConfig cfg;
  cfg.arch = Architecture::kLlama;
  LlamaConfig& c = cfg.llama;
  c.vocab_size = vocab;
  c.hidden_size = dim;
  c.intermediate_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.head_dim = hs;
  c.max_position_embeddings = seq_len;
  c.rms_norm_eps = 1e-5;  // run.c's rmsnorm
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = shared;
  cfg.bos_token_id = 1;
  cfg.eos_token_ids = {2};
  cfg.torch_dtype = "float32";
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<CausalLm> lm, create_model(cfg));
  auto* llama = dynamic_cast<LlamaForCausalLMImpl*>(lm.get());

  absl::Status st = status_from_torch_error("llama2c import", [&] {
    torch::NoGradGuard no_grad;
    // `what`: run.c's name of the tensor. A NaN or infinite weight makes
    // every output garbage: refused here, as load_model refuses it.
    auto read = [&](std::vector<int64_t> shape, const char* what) {
      at::Tensor t = at::empty(shape, at::kFloat);
      in.read(reinterpret_cast<char*>(t.data_ptr<float>()), t.numel() * 4);
      TORCH_CHECK(in.good(), "unexpected end of file");
      TORCH_CHECK(at::isfinite(t).all().item<bool>(), what, " holds NaN or infinite values; the checkpoint is corrupt");
      return t;
    };
    auto layer = [&](int64_t i) { return llama->model->layers[i]->as<LlamaDecoderLayerImpl>(); };
    llama->model->embed_tokens->weight.copy_(read({vocab, dim}, "token_embedding_table"));
    at::Tensor t = read({layers, dim}, "rms_att_weight");
    for (int64_t i = 0; i < layers; ++i) layer(i)->input_layernorm->weight.copy_(t[i]);
    t = read({layers, dim, dim}, "wq");
    for (int64_t i = 0; i < layers; ++i) layer(i)->self_attn->q_proj->weight.copy_(permute_rotary_rows(t[i], heads));
    t = read({layers, kv_dim, dim}, "wk");
    for (int64_t i = 0; i < layers; ++i) layer(i)->self_attn->k_proj->weight.copy_(permute_rotary_rows(t[i], kv_heads));
    t = read({layers, kv_dim, dim}, "wv");
    for (int64_t i = 0; i < layers; ++i) layer(i)->self_attn->v_proj->weight.copy_(t[i]);
    t = read({layers, dim, dim}, "wo");
    for (int64_t i = 0; i < layers; ++i) layer(i)->self_attn->o_proj->weight.copy_(t[i]);
    t = read({layers, dim}, "rms_ffn_weight");
    for (int64_t i = 0; i < layers; ++i) layer(i)->post_attention_layernorm->weight.copy_(t[i]);
    t = read({layers, hidden, dim}, "w1");
    for (int64_t i = 0; i < layers; ++i) layer(i)->mlp->gate_proj->weight.copy_(t[i]);  // w1
    t = read({layers, dim, hidden}, "w2");
    for (int64_t i = 0; i < layers; ++i) layer(i)->mlp->down_proj->weight.copy_(t[i]);  // w2
    t = read({layers, hidden, dim}, "w3");
    for (int64_t i = 0; i < layers; ++i) layer(i)->mlp->up_proj->weight.copy_(t[i]);  // w3
    llama->model->norm->weight.copy_(read({dim}, "rms_final_weight"));
    if (!shared) {
      if (file_size == with_freq) in.seekg(4 * freq, std::ios::cur);
      llama->lm_head->weight.copy_(read({vocab, dim}, "wcls"));
    }
  });
  if (!st.ok()) {
    // The first line: LibTorch's "Exception raised from ..." trace is not for users.
    std::string msg(st.message());
    if (size_t nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", msg));
  }
  return lm;
}

}  // namespace peft::models
