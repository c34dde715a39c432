// Fine-tune an adapter with a hand-written loop over the C++ API (no
// trainer): load a model and a tokenizer, inject an adapter described in
// protobuf text format, train, save the adapter, optionally merge.
//
// One command (a model from `peft convert`, see examples/recipes/stories260k_lora.textproto):
//   bazel-bin/examples/custom_loop --model=runs/stories260K
//       --text=../shared/assets/corpus/tinyshakespeare.txt
//       --adapter='lora { r: 8 alpha: 16 } target { preset: "all_linear" }'
//       --steps=40 --output=runs/custom_lora
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/Parallel.h>
#include <google/protobuf/text_format.h>

#include "data/tokenizer.h"
#include "examples/adapter_loop.h"
#include "examples/cli/flags.h"
#include "models/model_io.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"
#include "peft/peft_model.h"

namespace {

absl::Status run(const peft::cli::ParsedFlags& f) {
  PEFT_ASSIGN_OR_RETURN(int64_t threads, f.get_int("threads"));
  if (threads > 0) at::set_num_threads(static_cast<int>(threads));
  peft::proto::AdapterConfig config;
  if (!google::protobuf::TextFormat::ParseFromString(f.get("adapter"), &config)) {
    return absl::InvalidArgumentError("--adapter is not a valid AdapterConfig in protobuf text format");
  }
  PEFT_ASSIGN_OR_RETURN(std::shared_ptr<peft::models::CausalLm> lm, peft::models::load_model(f.get("model")));
  PEFT_ASSIGN_OR_RETURN(std::unique_ptr<peft::data::Tokenizer> tok,
                        peft::data::load_tokenizer(f.has("tokenizer") ? f.get("tokenizer") : f.get("model")));
  PEFT_ASSIGN_OR_RETURN(int64_t max_chars, f.get_int("max_chars"));
  PEFT_ASSIGN_OR_RETURN(const std::string all, peft::with_context(peft::io::read_file(f.get("text")), "--text"));
  std::string text = all.substr(0, static_cast<size_t>(max_chars));
  std::vector<int64_t> tokens;
  for (int32_t id : tok->encode(text)) tokens.push_back(id);

  peft::PeftModel pm(lm);
  PEFT_RETURN_IF_ERROR(pm.add_adapter(config, /*seed=*/0));
  pm.freeze_base_();
  std::fputs(pm.summary().c_str(), stderr);
  peft::examples::LoopOptions o;
  PEFT_ASSIGN_OR_RETURN(o.steps, f.get_int("steps"));
  PEFT_ASSIGN_OR_RETURN(o.lr, f.get_double("lr"));
  PEFT_ASSIGN_OR_RETURN(o.seq_len, f.get_int("seq_len"));
  PEFT_ASSIGN_OR_RETURN(o.batch, f.get_int("batch"));
  o.on_step = [](int64_t step, double loss) { std::fprintf(stderr, "step %lld loss %.4f\n", (long long)step, loss); };
  PEFT_ASSIGN_OR_RETURN(peft::examples::LoopResult r, peft::examples::train_adapter(pm, tokens, o));
  std::printf("{\"eval_loss_before\":%.6f,\"eval_loss_after\":%.6f,\"trainable\":%lld}\n", r.eval_loss_before,
              r.eval_loss_after, static_cast<long long>(pm.num_trainable()));
  if (f.has("output")) PEFT_RETURN_IF_ERROR(pm.save_adapter(f.get("output"), config.name()));
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  using peft::cli::double_flag, peft::cli::int_flag, peft::cli::text_flag;
  const std::vector<peft::cli::FlagSpec> specs = {
      text_flag("model", "Hugging Face model directory").required(),
      text_flag("tokenizer", "tokenizer (default: the model directory)"),
      text_flag("text", "training text file").required(),
      int_flag("max_chars", "use at most this many characters of the text", 200000),
      text_flag("adapter", "AdapterConfig in protobuf text format",
                "lora { r: 8 alpha: 16 } target { preset: \"all_linear\" }"),
      int_flag("steps", "optimizer steps", 40),
      double_flag("lr", "AdamW learning rate", 0.01),
      int_flag("seq_len", "tokens per training window", 64),
      int_flag("batch", "windows per step", 4),
      int_flag("threads", "LibTorch threads (0 = library default)", 0),
      text_flag("output", "write the trained adapter here"),
  };
  auto flags = peft::cli::parse_flags(std::vector<std::string>(argv + 1, argv + argc), specs);
  if (!flags.ok()) {
    std::fprintf(stderr, "custom_loop: %s\n%s", std::string(flags.status().message()).c_str(),
                 peft::cli::usage("custom_loop", "Fine-tune an adapter with a hand-written loop.", specs).c_str());
    return 2;
  }
  absl::Status st = run(*flags);
  if (!st.ok()) {
    std::fprintf(stderr, "custom_loop: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
