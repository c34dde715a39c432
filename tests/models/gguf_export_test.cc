// Models written as GGUF, read back by the independent test reader
// (tests/testing/gguf_reader.h) and compared with references that do not go
// through models/gguf: the raw llama2.c and safetensors files, hand-written
// index formulas for the q/k permutation and GPT-2's Conv1D transpose,
// transformers' llama3 RoPE formula, and the tokenizer files themselves.
#include "models/gguf/export.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "data/tokenizer.h"
#include "models/gguf/vocab.h"
#include "models/llama2c.h"
#include "models/model_io.h"
#include "peft/io/safetensors.h"
#include "tests/testing/assets.h"
#include "tests/testing/gguf_reader.h"
#include "tests/testing/tiny_models.h"

namespace peft::models::gguf {
namespace {

namespace fs = std::filesystem;
using testing::GgufFile;
using testing::GgufValue;

// A vocabulary of `n` plain tokens, for models without a tokenizer.
Vocab plain_vocab(int64_t n, const std::string& model = "llama") {
  Vocab v;
  v.model = model;
  v.pre = model == "llama" ? "default" : "gpt-2";
  for (int64_t i = 0; i < n; ++i) {
    v.tokens.push_back("t" + std::to_string(i));
    if (model == "llama") v.scores.push_back(-static_cast<float>(i));
    v.types.push_back(kTokenNormal);
  }
  v.bos = 1;
  v.eos = 2;
  return v;
}

// float32 values of a raw little-endian file, from float index `first`.
std::vector<float> raw_floats(const std::string& path, int64_t first, int64_t count) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(first * 4);
  std::vector<float> out(count);
  in.read(reinterpret_cast<char*>(out.data()), count * 4);
  return out;
}

GgufFile export_and_read(CausalLm& lm, const Vocab& v, const std::string& path, TensorType dtype = TensorType::kF32) {
  ExportOptions o;
  o.dtype = dtype;
  o.name = "test";
  absl::StatusOr<ExportStats> s = export_model(lm, v, path, o);
  EXPECT_TRUE(s.ok()) << s.status();
  GgufFile f = testing::read_gguf(path);
  EXPECT_EQ(f.error, "") << path;
  if (s.ok()) {
    EXPECT_EQ(s->file_bytes, f.bytes.size());
  }
  return f;
}

std::vector<std::string> tensor_names(const GgufFile& f) {
  std::vector<std::string> out;
  for (const auto& t : f.tensors) out.push_back(t.name);
  std::sort(out.begin(), out.end());
  return out;
}

TEST(GgufExport, TensorNames) {
  const ModelConfig llama = testing::tiny_llama_config();
  EXPECT_EQ(tensor_name(llama, "model.embed_tokens.weight"), "token_embd.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.11.self_attn.q_proj.weight"), "blk.11.attn_q.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.0.self_attn.k_proj.bias"), "blk.0.attn_k.bias");
  EXPECT_EQ(tensor_name(llama, "model.layers.0.self_attn.o_proj.weight"), "blk.0.attn_output.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.input_layernorm.weight"), "blk.1.attn_norm.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.post_attention_layernorm.weight"), "blk.1.ffn_norm.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.mlp.gate_proj.weight"), "blk.1.ffn_gate.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.mlp.up_proj.weight"), "blk.1.ffn_up.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.mlp.down_proj.weight"), "blk.1.ffn_down.weight");
  EXPECT_EQ(tensor_name(llama, "model.norm.weight"), "output_norm.weight");
  EXPECT_EQ(tensor_name(llama, "lm_head.weight"), "output.weight");
  EXPECT_EQ(tensor_name(llama, "model.layers.1.mlp.act.weight"), "");
  const ModelConfig gpt2 = testing::tiny_gpt2_config();
  EXPECT_EQ(tensor_name(gpt2, "transformer.wte.weight"), "token_embd.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.wpe.weight"), "position_embd.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.ln_1.bias"), "blk.3.attn_norm.bias");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.attn.c_attn.weight"), "blk.3.attn_qkv.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.attn.c_proj.bias"), "blk.3.attn_output.bias");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.ln_2.weight"), "blk.3.ffn_norm.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.mlp.c_fc.weight"), "blk.3.ffn_up.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.h.3.mlp.c_proj.weight"), "blk.3.ffn_down.weight");
  EXPECT_EQ(tensor_name(gpt2, "transformer.ln_f.weight"), "output_norm.weight");

  EXPECT_EQ(storage_type("blk.0.attn_q.weight", {64, 64}, TensorType::kQ8_0), TensorType::kQ8_0);
  EXPECT_EQ(storage_type("blk.0.attn_q.weight", {64, 48}, TensorType::kQ8_0), TensorType::kF16);
  EXPECT_EQ(storage_type("blk.0.attn_q.bias", {64}, TensorType::kF16), TensorType::kF32);
  EXPECT_EQ(storage_type("blk.0.attn_norm.weight", {64}, TensorType::kQ8_0), TensorType::kF32);
  EXPECT_EQ(storage_type("position_embd.weight", {128, 64}, TensorType::kF16), TensorType::kF32);
  EXPECT_EQ(storage_type("blk.0.attn_q.weight.lora_b", {64, 8}, TensorType::kQ8_0), TensorType::kF16);
}

// The permutation llama.cpp's converter applies: within each head, HF row
// t * D/2 + j (half t, pair j) goes to row 2j + t.
TEST(GgufExport, RotaryInterleaveIsTheInverseOfTheLlama2cImport) {
  const int64_t heads = 3, d = 8, in = 5;
  at::Tensor w = at::arange(heads * d * in, at::kFloat).reshape({heads * d, in});
  at::Tensor g = interleave_rotary_rows(w, heads);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < d / 2; ++j) {
      for (int64_t t = 0; t < 2; ++t) {
        EXPECT_TRUE(at::equal(g[h * d + 2 * j + t], w[h * d + t * d / 2 + j])) << h << " " << j << " " << t;
      }
    }
  }
  EXPECT_TRUE(at::equal(permute_rotary_rows(g, heads), w));
  at::Tensor bias = at::randn({heads * d});
  EXPECT_TRUE(at::equal(permute_rotary_rows(interleave_rotary_rows(bias.unsqueeze(1), heads), heads).squeeze(1), bias));
  EXPECT_TRUE(
      at::equal(interleave_rotary_rows(bias, heads), interleave_rotary_rows(bias.unsqueeze(1), heads).squeeze(1)));
}

class Stories260K : public ::testing::Test {
 protected:
  void SetUp() override {
    assets_ = testing::shared_assets_dir();
    if (assets_.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
    bin_ = assets_ + "/llama2c_stories260K/stories260K.bin";
    absl::StatusOr<std::shared_ptr<CausalLm>> lm = import_llama2c(bin_);
    ASSERT_TRUE(lm.ok()) << lm.status();
    lm_ = *lm;
    dir_ = testing::make_temp_dir("gguf_stories");
  }
  Vocab vocab(const std::string& file) {
    auto tok = data::load_tokenizer(assets_ + "/llama2c_stories260K/" + file);
    EXPECT_TRUE(tok.ok()) << tok.status();
    absl::StatusOr<Vocab> v = vocab_from_tokenizer(**tok, assets_ + "/llama2c_stories260K/" + file);
    EXPECT_TRUE(v.ok()) << v.status();
    return v.ok() ? *v : Vocab();
  }
  // Offsets in floats of the llama2.c file (PROVENANCE.md): a 7-int32
  // header, token_embedding [512, 64], rms_att [5, 64], wq [5, 64, 64],
  // wk [5, 32, 64], ...
  static constexpr int64_t kEmbed = 7, kWq = 7 + 512 * 64 + 5 * 64, kWk = kWq + 5 * 64 * 64;

  std::string assets_, bin_, dir_;
  std::shared_ptr<CausalLm> lm_;
};

TEST_F(Stories260K, SentencepieceF32) {
  const GgufFile f = export_and_read(*lm_, vocab("tok512.model"), dir_ + "/s.gguf");
  ASSERT_EQ(f.error, "");
  EXPECT_EQ(f.get("general.architecture")->s, "llama");
  EXPECT_EQ(f.get("general.type")->s, "model");
  EXPECT_EQ(f.get("general.name")->s, "test");
  EXPECT_EQ(f.get("general.file_type")->u, 0u);
  const std::pair<const char*, uint64_t> u32s[] = {
      {"llama.context_length", 512},      {"llama.embedding_length", 64},    {"llama.block_count", 5},
      {"llama.feed_forward_length", 172}, {"llama.attention.head_count", 8}, {"llama.attention.head_count_kv", 4},
      {"llama.rope.dimension_count", 8},  {"llama.vocab_size", 512},
  };
  for (const auto& [key, value] : u32s) {
    ASSERT_NE(f.get(key), nullptr) << key;
    EXPECT_EQ(f.get(key)->type, 4u) << key;
    EXPECT_EQ(f.get(key)->u, value) << key;
  }
  EXPECT_EQ(f.get("llama.rope.freq_base")->f, 10000.0);
  EXPECT_EQ(f.get("llama.attention.layer_norm_rms_epsilon")->type, 6u);
  EXPECT_FLOAT_EQ(f.get("llama.attention.layer_norm_rms_epsilon")->f, 1e-5f);
  EXPECT_EQ(f.get("llama.attention.key_length"), nullptr);  // head_dim = hidden / heads

  // Tied classifier: no output tensor. 2 + 9 per block.
  EXPECT_EQ(f.tensor("output.weight"), nullptr);
  EXPECT_EQ(f.tensors.size(), 2u + 9u * 5u);
  for (const auto& t : f.tensors) EXPECT_EQ(t.type, 0u) << t.name;
  EXPECT_EQ(f.tensor("token_embd.weight")->ne, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(f.tensor("blk.0.attn_k.weight")->ne, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f.tensor("blk.0.ffn_gate.weight")->ne, (std::vector<uint64_t>{64, 172}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight")->ne, (std::vector<uint64_t>{172, 64}));
  // llama2.c stores q/k in Meta's interleaved layout, which is llama.cpp's:
  // the export must give back the file's bytes exactly.
  EXPECT_EQ(f.values("token_embd.weight"), raw_floats(bin_, kEmbed, 512 * 64));
  EXPECT_EQ(f.values("blk.0.attn_q.weight"), raw_floats(bin_, kWq, 64 * 64));
  EXPECT_EQ(f.values("blk.3.attn_q.weight"), raw_floats(bin_, kWq + 3 * 64 * 64, 64 * 64));
  EXPECT_EQ(f.values("blk.4.attn_k.weight"), raw_floats(bin_, kWk + 4 * 32 * 64, 32 * 64));

  // The sentencepiece vocabulary.
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "llama");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "default");
  const std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(tokens[258], "<0xFF>");
  const GgufValue& types = *f.get("tokenizer.ggml.token_type");
  EXPECT_EQ(types.elem_type, 5u);
  EXPECT_EQ(types.array[0].i, 2);
  EXPECT_EQ(types.array[1].i, 3);
  EXPECT_EQ(types.array[2].i, 3);
  EXPECT_EQ(types.array[3].i, 6);
  EXPECT_EQ(types.array[258].i, 6);
  EXPECT_EQ(types.array[259].i, 1);
  EXPECT_EQ(f.get("tokenizer.ggml.scores")->array.size(), 512u);
  EXPECT_EQ(f.get("tokenizer.ggml.bos_token_id")->u, 1u);
  EXPECT_EQ(f.get("tokenizer.ggml.eos_token_id")->u, 2u);
  EXPECT_EQ(f.get("tokenizer.ggml.unknown_token_id")->u, 0u);
  EXPECT_EQ(f.get("tokenizer.ggml.padding_token_id"), nullptr);
  EXPECT_TRUE(f.get("tokenizer.ggml.add_bos_token")->b);
  EXPECT_FALSE(f.get("tokenizer.ggml.add_eos_token")->b);
  EXPECT_TRUE(f.get("tokenizer.ggml.add_space_prefix")->b);
  EXPECT_EQ(f.get("tokenizer.ggml.merges"), nullptr);

  // The llama2.c tokenizer.bin of the same vocabulary gives the same
  // tokens, scores and types (PROVENANCE.md: identical after the "▁" and
  // BOS/EOS renaming).
  const GgufFile g = export_and_read(*lm_, vocab("tok512.bin"), dir_ + "/b.gguf");
  EXPECT_EQ(g.strings("tokenizer.ggml.tokens"), tokens);
  for (size_t i = 0; i < 512; ++i) {
    ASSERT_EQ(g.get("tokenizer.ggml.scores")->array[i].f, f.get("tokenizer.ggml.scores")->array[i].f) << i;
    ASSERT_EQ(g.get("tokenizer.ggml.token_type")->array[i].i, types.array[i].i) << i << " " << tokens[i];
  }
}

TEST_F(Stories260K, QuantizedAndHalfTypes) {
  const Vocab v = vocab("tok512.model");
  const std::vector<float> wq = raw_floats(bin_, kWq, 64 * 64);
  const GgufFile q = export_and_read(*lm_, v, dir_ + "/q.gguf", TensorType::kQ8_0);
  EXPECT_EQ(q.get("general.file_type")->u, 7u);
  EXPECT_EQ(q.tensor("blk.0.attn_q.weight")->type, 8u);
  EXPECT_EQ(q.tensor("token_embd.weight")->type, 8u);
  EXPECT_EQ(q.tensor("blk.0.ffn_down.weight")->type, 1u);  // rows of 172: not whole blocks -> f16
  EXPECT_EQ(q.tensor("blk.0.attn_norm.weight")->type, 0u);
  EXPECT_EQ(q.tensor("output_norm.weight")->type, 0u);
  const std::vector<float> dq = q.values("blk.0.attn_q.weight");
  for (size_t b = 0; b < wq.size(); b += 32) {
    float amax = 0;
    for (size_t j = b; j < b + 32; ++j) amax = std::max(amax, std::fabs(wq[j]));
    for (size_t j = b; j < b + 32; ++j) ASSERT_NEAR(dq[j], wq[j], 0.6f * amax / 127) << j;
  }
  // Each block: the fp16 scale is max|x| / 127 of exactly these 32 values.
  const std::string raw = q.data("blk.0.attn_q.weight");
  for (size_t b = 0; b < wq.size() / 32; ++b) {
    float amax = 0;
    for (size_t j = 32 * b; j < 32 * b + 32; ++j) amax = std::max(amax, std::fabs(wq[j]));
    const uint16_t d = static_cast<uint16_t>(static_cast<unsigned char>(raw[34 * b]) |
                                             (static_cast<unsigned char>(raw[34 * b + 1]) << 8));
    ASSERT_NEAR(testing::half_bits_to_float(d), amax / 127, amax / 127 * 0x1p-10) << b;
  }

  const GgufFile h = export_and_read(*lm_, v, dir_ + "/h.gguf", TensorType::kF16);
  EXPECT_EQ(h.get("general.file_type")->u, 1u);
  EXPECT_EQ(h.tensor("blk.0.attn_q.weight")->type, 1u);
  EXPECT_EQ(h.tensor("blk.0.ffn_norm.weight")->type, 0u);
  const std::vector<float> hq = h.values("blk.0.attn_q.weight");
  for (size_t j = 0; j < wq.size(); ++j) ASSERT_NEAR(hq[j], wq[j], std::fabs(wq[j]) * 0x1p-11 + 1e-7) << j;

  const GgufFile b = export_and_read(*lm_, v, dir_ + "/bf.gguf", TensorType::kBF16);
  EXPECT_EQ(b.get("general.file_type")->u, 32u);
  EXPECT_EQ(b.tensor("blk.0.attn_q.weight")->type, 30u);
  EXPECT_LT(q.bytes.size(), h.bytes.size());
}

TEST(GgufExport, HfTinyLlamaPermutedQkAndUntiedOutput) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string dir = assets + "/hf_tiny/llama_tiny";
  auto lm = load_model(dir);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const GgufFile f = export_and_read(**lm, plain_vocab(128), testing::make_temp_dir("gguf_llama") + "/l.gguf");
  ASSERT_NE(f.tensor("output.weight"), nullptr);
  auto reader = io::CheckpointReader::open(dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  // q [64, 64] with 4 heads of 16, k [32, 64] with 2: GGUF row h*D + 2j + t is
  // checkpoint row h*D + t*D/2 + j.
  for (auto [hf, gg, heads] : {std::tuple{"model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4},
                               std::tuple{"model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2},
                               std::tuple{"model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight", 0}}) {
    at::Tensor ck = *(*reader)->load(hf);
    const std::vector<float> g = f.values(gg);
    const int64_t rows = ck.size(0), cols = ck.size(1), d = 16;
    ASSERT_EQ(static_cast<int64_t>(g.size()), rows * cols);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t h = r / d, j = (r % d) / 2, t = r % 2;
      const int64_t src = heads == 0 ? r : h * d + t * d / 2 + j;
      for (int64_t c = 0; c < cols; ++c) {
        ASSERT_EQ(g[r * cols + c], ck[src][c].item<float>()) << gg << " row " << r;
      }
    }
  }
  at::Tensor head = *(*reader)->load("lm_head.weight");
  const std::vector<float> out = f.values("output.weight");
  EXPECT_TRUE(at::equal(at::tensor(out).reshape({128, 64}), head));
}

// transformers' _compute_llama3_parameters, restated: the GGUF rope_freqs
// are what each base frequency is divided by.
TEST(GgufExport, Llama3RopeFreqs) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  auto lm = load_model(assets + "/hf_tiny/llama_tiny_rope_scaled");
  ASSERT_TRUE(lm.ok()) << lm.status();
  const GgufFile f = export_and_read(**lm, plain_vocab(128), testing::make_temp_dir("gguf_rope") + "/r.gguf");
  ASSERT_NE(f.tensor("rope_freqs.weight"), nullptr);
  EXPECT_EQ(f.tensor("rope_freqs.weight")->type, 0u);
  EXPECT_EQ(f.tensor("rope_freqs.weight")->ne, (std::vector<uint64_t>{8}));
  EXPECT_EQ(f.tensor("output.weight"), nullptr);  // tied
  EXPECT_EQ(f.get("llama.rope.scaling.type"), nullptr);
  const std::vector<float> got = f.values("rope_freqs.weight");
  // config: theta 10000, head_dim 16, factor 8, low 1, high 4, original 64.
  const double old_len = 64, low_wavelen = old_len / 1.0, high_wavelen = old_len / 4.0;
  for (int i = 0; i < 8; ++i) {
    const double freq = 1.0 / std::pow(10000.0, 2.0 * i / 16.0);
    const double wavelen = 2 * M_PI / freq;
    double expect = 1.0;
    if (wavelen > low_wavelen) {
      expect = 8.0;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (old_len / wavelen - 1.0) / (4.0 - 1.0);
      expect = 1.0 / ((1 - smooth) / 8.0 + smooth);
    }
    EXPECT_NEAR(got[i], expect, 1e-5 * expect) << i;
  }
  EXPECT_NE(got.front(), got.back());
}

TEST(GgufExport, LinearRopeScalingKeys) {
  ModelConfig c = testing::tiny_llama_config();
  c.llama.rope_scaling.rope_type = "linear";
  c.llama.rope_scaling.factor = 4.0;
  c.llama.head_dim = 16;  // != hidden / heads: key_length and value_length are written
  Metadata md;
  ASSERT_TRUE(add_architecture_metadata(c, ExportOptions(), &md).ok());
  const std::string dir = testing::make_temp_dir("gguf_linear");
  auto w = GgufWriter::create(dir + "/m.gguf", md, {});
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->commit().ok());
  const GgufFile f = testing::read_gguf(dir + "/m.gguf");
  EXPECT_EQ(f.get("llama.rope.scaling.type")->s, "linear");
  EXPECT_EQ(f.get("llama.rope.scaling.factor")->f, 4.0);
  EXPECT_EQ(f.get("llama.rope.dimension_count")->u, 16u);
  EXPECT_EQ(f.get("llama.attention.key_length")->u, 16u);
  EXPECT_EQ(f.get("llama.attention.value_length")->u, 16u);
}

TEST(GgufExport, HfTinyGpt2) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string dir = assets + "/hf_tiny/gpt2_tiny";
  auto lm = load_model(dir);
  ASSERT_TRUE(lm.ok()) << lm.status();
  const GgufFile f = export_and_read(**lm, plain_vocab(128, "gpt2"), testing::make_temp_dir("gguf_gpt2") + "/g.gguf",
                                     TensorType::kF16);
  EXPECT_EQ(f.get("general.architecture")->s, "gpt2");
  EXPECT_EQ(f.get("gpt2.context_length")->u, 128u);
  EXPECT_EQ(f.get("gpt2.embedding_length")->u, 64u);
  EXPECT_EQ(f.get("gpt2.feed_forward_length")->u, 256u);
  EXPECT_EQ(f.get("gpt2.block_count")->u, 2u);
  EXPECT_EQ(f.get("gpt2.attention.head_count")->u, 4u);
  EXPECT_FLOAT_EQ(f.get("gpt2.attention.layer_norm_epsilon")->f, 1e-5f);
  std::vector<std::string> expected = {"token_embd.weight", "position_embd.weight", "output_norm.weight",
                                       "output_norm.bias"};
  for (int i = 0; i < 2; ++i) {
    for (const char* t : {"attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"}) {
      for (const char* s : {"weight", "bias"}) expected.push_back("blk." + std::to_string(i) + "." + t + "." + s);
    }
  }
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(tensor_names(f), expected);  // tied head: no output
  EXPECT_EQ(f.tensor("position_embd.weight")->type, 0u);
  EXPECT_EQ(f.tensor("position_embd.weight")->ne, (std::vector<uint64_t>{64, 128}));
  EXPECT_EQ(f.tensor("blk.0.attn_qkv.bias")->type, 0u);
  EXPECT_EQ(f.tensor("blk.0.attn_qkv.weight")->type, 1u);
  EXPECT_EQ(f.tensor("blk.0.attn_qkv.weight")->ne, (std::vector<uint64_t>{64, 192}));
  EXPECT_EQ(f.tensor("blk.0.ffn_up.weight")->ne, (std::vector<uint64_t>{64, 256}));
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight")->ne, (std::vector<uint64_t>{256, 64}));
  // The checkpoint's Conv1D c_attn is [in 64, out 192]; GGUF holds its
  // transpose: element (out o, in i) at o * 64 + i.
  auto reader = io::CheckpointReader::open(dir);
  ASSERT_TRUE(reader.ok()) << reader.status();
  at::Tensor ck = *(*reader)->load("h.0.attn.c_attn.weight");
  ASSERT_EQ(ck.sizes().vec(), (std::vector<int64_t>{64, 192}));
  const std::vector<float> g = f.values("blk.0.attn_qkv.weight");
  for (int64_t o = 0; o < 192; ++o) {
    for (int64_t i = 0; i < 64; ++i) {
      const float want = ck[i][o].item<float>();
      ASSERT_NEAR(g[o * 64 + i], want, std::fabs(want) * 0x1p-11 + 1e-7) << o << " " << i;
    }
  }
  at::Tensor wpe = *(*reader)->load("wpe.weight");
  EXPECT_TRUE(at::equal(at::tensor(f.values("position_embd.weight")).reshape({128, 64}), wpe));
}

// ---- llama.cpp's computation, restated from the GGUF tensors ---------------
//
// A forward pass that reads only the GGUF file and follows llama.cpp's graphs
// (src/models/llama.cpp, gpt2.cpp): ggml's "normal" RoPE rotates adjacent
// pairs (2i, 2i+1) by pos * base^(-2i/n_rot) / rope_freqs[i]; GPT-2 splits
// attn_qkv's rows into q, k, v and uses tanh-GELU. Its logits must match the
// peft-cpp model the file came from.

at::Tensor gguf_matrix(const GgufFile& f, const std::string& name) {
  const testing::GgufTensor* t = f.tensor(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return at::Tensor();
  at::Tensor v = at::tensor(f.values(name));
  if (t->ne.size() == 1) return v;
  return v.reshape({static_cast<int64_t>(t->ne[1]), static_cast<int64_t>(t->ne[0])});
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, true) + eps) * w;
}

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  const at::Tensor mu = x.mean(-1, true);
  const at::Tensor var = (x - mu).pow(2).mean(-1, true);
  return (x - mu) * at::rsqrt(var + eps) * w + b;
}

// x [T, H, D]: adjacent pairs rotated.
at::Tensor rope_normal(const at::Tensor& x, double base, const at::Tensor& freq_factors) {
  const int64_t t = x.size(0), d = x.size(2);
  at::Tensor out = x.clone();
  for (int64_t p = 0; p < t; ++p) {
    for (int64_t i = 0; i < d / 2; ++i) {
      double theta = p * std::pow(base, -2.0 * i / d);
      if (freq_factors.defined()) theta /= freq_factors[i].item<double>();
      const at::Tensor x0 = x.select(0, p).select(1, 2 * i), x1 = x.select(0, p).select(1, 2 * i + 1);
      out.select(0, p).select(1, 2 * i).copy_(x0 * std::cos(theta) - x1 * std::sin(theta));
      out.select(0, p).select(1, 2 * i + 1).copy_(x0 * std::sin(theta) + x1 * std::cos(theta));
    }
  }
  return out;
}

// q [T, H, D], k/v [T, G, D]; query head h reads KV head h / (H / G).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const int64_t t = q.size(0), h = q.size(1), d = q.size(2), g = k.size(1);
  at::Tensor out = at::empty({t, h, d});
  const at::Tensor mask = at::ones({t, t}).triu(1).to(at::kBool);
  for (int64_t head = 0; head < h; ++head) {
    const int64_t kv = head / (h / g);
    at::Tensor s = at::matmul(q.select(1, head), k.select(1, kv).t()) / std::sqrt(static_cast<double>(d));
    s = s.masked_fill(mask, -INFINITY).softmax(-1);
    out.select(1, head).copy_(at::matmul(s, v.select(1, kv)));
  }
  return out.reshape({t, h * d});
}

at::Tensor llama_cpp_logits(const GgufFile& f, const std::vector<int64_t>& ids) {
  const std::string a = f.get("general.architecture")->s;
  const int64_t n_head = f.get(a + ".attention.head_count")->u, layers = f.get(a + ".block_count")->u;
  const at::Tensor embd = gguf_matrix(f, "token_embd.weight");
  const at::Tensor idx = at::tensor(ids);
  at::Tensor x = embd.index_select(0, idx);
  const int64_t t = x.size(0);
  if (a == "gpt2") {
    const double eps = f.get("gpt2.attention.layer_norm_epsilon")->f;
    x = x + gguf_matrix(f, "position_embd.weight").narrow(0, 0, t);
    for (int64_t l = 0; l < layers; ++l) {
      auto w = [&](const std::string& n) { return gguf_matrix(f, "blk." + std::to_string(l) + "." + n); };
      at::Tensor cur = layer_norm(x, w("attn_norm.weight"), w("attn_norm.bias"), eps);
      const at::Tensor qkv = at::matmul(cur, w("attn_qkv.weight").t()) + w("attn_qkv.bias");
      const int64_t c = x.size(1), hd = c / n_head;
      const at::Tensor q = qkv.narrow(1, 0, c).reshape({t, n_head, hd});
      const at::Tensor k = qkv.narrow(1, c, c).reshape({t, n_head, hd});
      const at::Tensor v = qkv.narrow(1, 2 * c, c).reshape({t, n_head, hd});
      x = x + at::matmul(attention(q, k, v), w("attn_output.weight").t()) + w("attn_output.bias");
      cur = layer_norm(x, w("ffn_norm.weight"), w("ffn_norm.bias"), eps);
      cur = at::gelu(at::matmul(cur, w("ffn_up.weight").t()) + w("ffn_up.bias"), "tanh");
      x = x + at::matmul(cur, w("ffn_down.weight").t()) + w("ffn_down.bias");
    }
    x = layer_norm(x, gguf_matrix(f, "output_norm.weight"), gguf_matrix(f, "output_norm.bias"), eps);
  } else {
    const double eps = f.get("llama.attention.layer_norm_rms_epsilon")->f;
    const double base = f.get("llama.rope.freq_base")->f;
    const int64_t n_kv = f.get("llama.attention.head_count_kv")->u, d = f.get("llama.rope.dimension_count")->u;
    const at::Tensor factors = f.tensor("rope_freqs.weight") ? gguf_matrix(f, "rope_freqs.weight") : at::Tensor();
    for (int64_t l = 0; l < layers; ++l) {
      auto w = [&](const std::string& n) { return gguf_matrix(f, "blk." + std::to_string(l) + "." + n); };
      at::Tensor cur = rms_norm(x, w("attn_norm.weight"), eps);
      at::Tensor q = at::matmul(cur, w("attn_q.weight").t()).reshape({t, n_head, d});
      at::Tensor k = at::matmul(cur, w("attn_k.weight").t()).reshape({t, n_kv, d});
      const at::Tensor v = at::matmul(cur, w("attn_v.weight").t()).reshape({t, n_kv, d});
      q = rope_normal(q, base, factors);
      k = rope_normal(k, base, factors);
      x = x + at::matmul(attention(q, k, v), w("attn_output.weight").t());
      cur = rms_norm(x, w("ffn_norm.weight"), eps);
      cur = at::silu(at::matmul(cur, w("ffn_gate.weight").t())) * at::matmul(cur, w("ffn_up.weight").t());
      x = x + at::matmul(cur, w("ffn_down.weight").t());
    }
    x = rms_norm(x, gguf_matrix(f, "output_norm.weight"), eps);
  }
  const at::Tensor out = f.tensor("output.weight") ? gguf_matrix(f, "output.weight") : embd;
  return at::matmul(x, out.t());
}

void expect_llama_cpp_logits_match(CausalLm& lm, const GgufFile& f, double tol) {
  const std::vector<int64_t> ids = {1, 17, 42, 5, 99, 3, 64, 8, 120, 7, 33};
  const at::Tensor want = lm.forward(at::tensor(ids).unsqueeze(0), nullptr).squeeze(0).detach();
  const at::Tensor got = llama_cpp_logits(f, ids);
  ASSERT_EQ(got.sizes(), want.sizes());
  const double diff = (got - want).abs().max().item<double>();
  EXPECT_LT(diff, tol) << "max |logit difference| " << diff << " (logits up to " << want.abs().max().item<double>()
                       << ")";
  EXPECT_TRUE(at::equal(got.argmax(-1), want.argmax(-1)));
}

TEST(GgufExport, LlamaCppComputationMatchesTheModel) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string dir = testing::make_temp_dir("gguf_semantics");
  torch::NoGradGuard no_grad;
  {
    auto lm = import_llama2c(assets + "/llama2c_stories260K/stories260K.bin");
    ASSERT_TRUE(lm.ok());
    SCOPED_TRACE("stories260K");
    expect_llama_cpp_logits_match(**lm, export_and_read(**lm, plain_vocab(512), dir + "/s.gguf"), 1e-3);
  }
  for (const char* name : {"llama_tiny", "llama_tiny_rope_scaled", "gpt2_tiny"}) {
    SCOPED_TRACE(name);
    auto lm = load_model(assets + "/hf_tiny/" + name);
    ASSERT_TRUE(lm.ok()) << lm.status();
    const std::string model = std::string(name).rfind("gpt2", 0) == 0 ? "gpt2" : "llama";
    expect_llama_cpp_logits_match(**lm, export_and_read(**lm, plain_vocab(128, model), dir + "/" + name + ".gguf"),
                                  1e-3);
  }
}

TEST(GgufExport, RefusesGpt2WithLayerScaledAttention) {
  ModelConfig c = testing::tiny_gpt2_config();
  c.gpt2.scale_attn_by_inverse_layer_idx = true;
  auto lm = testing::tiny_model(c, 1);
  const std::string dir = testing::make_temp_dir("gguf_refuse");
  absl::StatusOr<ExportStats> s = export_model(*lm, plain_vocab(80, "gpt2"), dir + "/x.gguf", ExportOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("scale_attn_by_inverse_layer_idx"), std::string::npos) << s.status();
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(GgufExport, VocabularyPaddedToTheModelAndCheckedAgainstIt) {
  auto lm = testing::tiny_model(testing::tiny_llama_config(), 1);  // vocab 96
  const std::string dir = testing::make_temp_dir("gguf_pad");
  const GgufFile f = export_and_read(*lm, plain_vocab(90), dir + "/p.gguf");
  const std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 96u);
  EXPECT_EQ(tokens[90], "[PAD90]");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->array[95].i, kTokenUnused);
  EXPECT_EQ(f.get("tokenizer.ggml.scores")->array.size(), 96u);
  absl::StatusOr<ExportStats> s = export_model(*lm, plain_vocab(97), dir + "/big.gguf", ExportOptions());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("97 tokens"), std::string::npos) << s.status();
  EXPECT_FALSE(fs::exists(dir + "/big.gguf"));
  // A config listing several eos ids: eos, then eot and eom.
  ModelConfig c = testing::tiny_llama_config();
  c.eos_token_ids = {2, 7, 9};
  Vocab v = plain_vocab(96);
  ASSERT_TRUE(fit_vocab_to_model(c, &v).ok());
  EXPECT_EQ(v.eos, 2);
  EXPECT_EQ(v.eot, 7);
  EXPECT_EQ(v.eom, 9);
}

// GPT-2's byte alphabet (encoder.py's bytes_to_unicode), for the test's own
// tokenizer.json.
std::vector<std::string> byte_symbols() {
  std::vector<std::string> out(256);
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : 256 + n++;
    std::string s;
    if (cp < 0x80) {
      s.push_back(static_cast<char>(cp));
    } else {
      s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = s;
  }
  return out;
}

// The quickstart's tokenizer: byte-level BPE, 256 byte ids and
// <|endoftext|> = 256, no merges.
TEST(GgufExport, ByteLevelTokenizerJsonWithoutMerges) {
  const std::string dir = testing::make_temp_dir("gguf_bytes");
  nlohmann::json vocab = nlohmann::json::object();
  const std::vector<std::string> sym = byte_symbols();
  for (int b = 0; b < 256; ++b) vocab[sym[b]] = b;
  vocab["<|endoftext|>"] = 256;
  nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", 256}, {"content", "<|endoftext|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}},
  };
  std::ofstream(dir + "/tokenizer.json") << tok.dump();
  std::ofstream(dir + "/tokenizer_config.json")
      << R"({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "add_bos_token": false})";
  auto t = data::load_tokenizer(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  auto v = vocab_from_tokenizer(**t, dir);
  ASSERT_TRUE(v.ok()) << v.status();
  ModelConfig c = testing::tiny_llama_config();
  c.llama.vocab_size = 257;
  c.bos_token_id = 256;
  c.eos_token_ids = {256};
  auto lm = testing::tiny_model(c, 2);
  const GgufFile f = export_and_read(*lm, *v, dir + "/m.gguf");
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "gpt-2");
  const GgufValue* merges = f.get("tokenizer.ggml.merges");
  ASSERT_NE(merges, nullptr);  // llama.cpp refuses a gpt2 vocabulary without the key
  EXPECT_EQ(merges->type, 9u);
  EXPECT_EQ(merges->elem_type, 8u);
  EXPECT_TRUE(merges->array.empty());
  const std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 257u);
  EXPECT_EQ(tokens[' '], "\xC4\xA0");  // "Ġ"
  EXPECT_EQ(tokens['a'], "a");
  EXPECT_EQ(tokens[256], "<|endoftext|>");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->array[256].i, kTokenControl);
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->array['a'].i, kTokenNormal);
  EXPECT_EQ(f.get("tokenizer.ggml.scores"), nullptr);
  EXPECT_EQ(f.get("tokenizer.ggml.bos_token_id")->u, 256u);
  EXPECT_EQ(f.get("tokenizer.ggml.eos_token_id")->u, 256u);
  EXPECT_FALSE(f.get("tokenizer.ggml.add_bos_token")->b);
}

TEST(GgufExport, Gpt2BpeFiles) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  auto t = data::load_tokenizer(assets + "/gpt2_bpe");
  ASSERT_TRUE(t.ok()) << t.status();
  auto v = vocab_from_tokenizer(**t, assets + "/gpt2_bpe");
  ASSERT_TRUE(v.ok()) << v.status();
  ModelConfig c = testing::tiny_gpt2_config();
  c.gpt2.vocab_size = 50257;
  c.bos_token_id = 50256;
  c.eos_token_ids = {50256};
  auto lm = testing::tiny_model(c, 3);
  const GgufFile f = export_and_read(*lm, *v, testing::make_temp_dir("gguf_gpt2bpe") + "/g.gguf");
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "gpt-2");
  const std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 50257u);
  EXPECT_EQ(tokens[50256], "<|endoftext|>");
  EXPECT_EQ(tokens[262], "\xC4\xA0the");  // "Ġthe" in encoder.json
  const std::vector<std::string> merges = f.strings("tokenizer.ggml.merges");
  ASSERT_EQ(merges.size(), 50000u);
  // vocab.bpe's first and last merge lines.
  std::ifstream bpe(assets + "/gpt2_bpe/vocab.bpe");
  std::string line, first, last;
  std::getline(bpe, line);  // #version
  std::getline(bpe, first);
  while (std::getline(bpe, line)) {
    if (!line.empty()) last = line;
  }
  EXPECT_EQ(merges.front(), first);
  EXPECT_EQ(merges.back(), last);
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->array[50256].i, kTokenControl);
  EXPECT_EQ(f.get("tokenizer.ggml.bos_token_id")->u, 50256u);
  EXPECT_FALSE(f.get("tokenizer.ggml.add_bos_token")->b);
}

// Llama 3's tokenizer.json: "llama-bpe", 280,147 merges, BOS added. The tiny
// model's hidden size of 16 also shows q8_0's f16 fallback for short rows.
TEST(GgufExport, Llama3TokenizerJson) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string tdir = assets + "/llama3_tokenizer";
  auto t = data::load_tokenizer(tdir);
  ASSERT_TRUE(t.ok()) << t.status();
  auto v = vocab_from_tokenizer(**t, tdir);
  ASSERT_TRUE(v.ok()) << v.status();
  ModelConfig c = testing::tiny_llama_config();
  c.llama.vocab_size = 128256;
  c.llama.hidden_size = 16;
  c.llama.num_attention_heads = 2;
  c.llama.num_key_value_heads = 1;
  c.llama.head_dim = 8;
  c.llama.intermediate_size = 32;
  c.bos_token_id = 128000;
  c.eos_token_ids = {128001, 128008, 128009};
  auto lm = testing::tiny_model(c, 4);
  const GgufFile f = export_and_read(*lm, *v, testing::make_temp_dir("gguf_llama3") + "/l.gguf", TensorType::kQ8_0);
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "gpt2");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "llama-bpe");
  EXPECT_EQ(f.strings("tokenizer.ggml.tokens").size(), 128256u);
  EXPECT_EQ(f.strings("tokenizer.ggml.tokens")[128000], "<|begin_of_text|>");
  EXPECT_EQ(f.get("tokenizer.ggml.token_type")->array[128000].i, kTokenControl);
  EXPECT_EQ(f.get("tokenizer.ggml.merges")->array.size(), 280147u);
  EXPECT_EQ(f.get("tokenizer.ggml.bos_token_id")->u, 128000u);
  EXPECT_TRUE(f.get("tokenizer.ggml.add_bos_token")->b);
  EXPECT_EQ(f.get("tokenizer.ggml.eos_token_id")->u, 128001u);
  EXPECT_EQ(f.get("tokenizer.ggml.eot_token_id")->u, 128008u);
  EXPECT_EQ(f.get("tokenizer.ggml.eom_token_id")->u, 128009u);
  EXPECT_EQ(f.tensor("token_embd.weight")->type, 1u);      // rows of 16
  EXPECT_EQ(f.tensor("blk.0.ffn_down.weight")->type, 8u);  // rows of 32
}

// Qwen2's pre-tokenizer (Llama 3's split with single digits) is llama.cpp's
// "qwen2": Llama 3's tokenizer.json with that one change of the regex.
TEST(GgufExport, Qwen2SplitIsQwen2Pre) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string tdir = testing::make_temp_dir("gguf_qwen2_pre");
  std::string text = testing::slurp(assets + "/llama3_tokenizer/tokenizer.json");
  const std::string llama3_digits = R"(\\p{N}{1,3})";  // as JSON-escaped in the file
  const size_t at = text.find(llama3_digits);
  ASSERT_NE(at, std::string::npos);
  text.replace(at, llama3_digits.size(), R"(\\p{N})");
  std::ofstream(tdir + "/tokenizer.json") << text;
  auto t = data::load_tokenizer(tdir);
  ASSERT_TRUE(t.ok()) << t.status();
  auto v = vocab_from_tokenizer(**t, tdir);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->model, "gpt2");
  EXPECT_EQ(v->pre, "qwen2");
}

// Mistral's tokenizer.json (a byte_fallback BPE, "▁" prepended by the
// normalizer, a Sequence decoder) exported as llama.cpp's converter exports
// it without tokenizer.model (_set_vocab_llama_hf): model "llama", the
// vocabulary spellings, every score -1000, the special ids control (UNK
// included: it is one of transformers' all_special_ids), no merges. The
// expected ids are the file's: "▁the" 272, "<0x0A>" 13, "<unk>"/"<s>"/"</s>"
// 0/1/2 in added_tokens, tokenizer_config.json's add_bos_token true.
TEST(GgufExport, MistralTokenizerJson) {
  const std::string assets = testing::shared_assets_dir();
  if (assets.empty()) GTEST_SKIP() << testing::kNoAssetsReason;
  const std::string tdir = assets + "/mistral_tokenizer";
  auto t = data::load_tokenizer(tdir);
  ASSERT_TRUE(t.ok()) << t.status();
  auto v = vocab_from_tokenizer(**t, tdir);
  ASSERT_TRUE(v.ok()) << v.status();
  ModelConfig c = testing::tiny_llama_config();
  c.llama.vocab_size = 32000;
  c.llama.hidden_size = 16;
  c.llama.num_attention_heads = 2;
  c.llama.num_key_value_heads = 1;
  c.llama.head_dim = 8;
  c.llama.intermediate_size = 32;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  auto lm = testing::tiny_model(c, 5);
  const GgufFile f = export_and_read(*lm, *v, testing::make_temp_dir("gguf_mistral") + "/m.gguf");
  EXPECT_EQ(f.get("tokenizer.ggml.model")->s, "llama");
  EXPECT_EQ(f.get("tokenizer.ggml.pre")->s, "default");
  const std::vector<std::string> tokens = f.strings("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 32000u);
  EXPECT_EQ(tokens[272], "\xE2\x96\x81the");  // "▁the"
  EXPECT_EQ(tokens[13], "<0x0A>");
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  const GgufValue& types = *f.get("tokenizer.ggml.token_type");
  ASSERT_EQ(types.array.size(), 32000u);
  EXPECT_EQ(types.array[13].i, kTokenByte);
  EXPECT_EQ(types.array[1].i, kTokenControl);
  EXPECT_EQ(types.array[2].i, kTokenControl);
  EXPECT_EQ(types.array[0].i, kTokenControl);
  EXPECT_EQ(types.array[272].i, kTokenNormal);
  const GgufValue& scores = *f.get("tokenizer.ggml.scores");
  ASSERT_EQ(scores.array.size(), 32000u);
  for (int id : {0, 13, 272, 31999}) EXPECT_EQ(scores.array[id].f, -1000.0f) << id;
  EXPECT_EQ(f.get("tokenizer.ggml.merges"), nullptr);
  EXPECT_EQ(f.get("tokenizer.ggml.bos_token_id")->u, 1u);
  EXPECT_EQ(f.get("tokenizer.ggml.eos_token_id")->u, 2u);
  EXPECT_EQ(f.get("tokenizer.ggml.unknown_token_id")->u, 0u);
  EXPECT_EQ(f.get("tokenizer.ggml.padding_token_id"), nullptr);  // pad_token null
  EXPECT_TRUE(f.get("tokenizer.ggml.add_bos_token")->b);
  EXPECT_FALSE(f.get("tokenizer.ggml.add_eos_token")->b);
}

}  // namespace
}  // namespace peft::models::gguf
