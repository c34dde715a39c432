// Fine-tune a GPT-2 model with LoRA on its fused attention projection
// (PEFT's default target, written with fan_in_fan_out so Python PEFT loads
// the adapter), through the C++ API.
//
//   bazel-bin/examples/finetune_gpt2 MODEL_DIR TRAIN_FILE RUN_DIR [STEPS]
#include <cstdio>
#include <cstdlib>

#include "trainers/trainer.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: finetune_gpt2 MODEL_DIR TRAIN_FILE RUN_DIR [STEPS]\n");
    return 2;
  }
  peft::proto::Recipe r;
  r.set_model(argv[1]);
  r.mutable_data()->set_train_file(argv[2]);
  r.mutable_data()->set_seq_len(128);
  r.set_output_dir(argv[3]);
  peft::proto::AdapterConfig* a = r.add_adapters();
  a->mutable_lora()->set_r(8);
  a->mutable_lora()->set_alpha(16);
  a->mutable_target()->add_modules("c_attn");
  r.mutable_optimizer()->set_lr(1e-3);
  r.mutable_training()->set_steps(argc > 4 ? std::atoi(argv[4]) : 100);
  auto summary = peft::trainers::train(r);
  if (!summary.ok()) {
    std::fprintf(stderr, "finetune_gpt2: %s\n", std::string(summary.status().message()).c_str());
    return 1;
  }
  std::printf("eval loss %.4f -> %.4f; adapter in %s/adapter\n", summary->initial_eval_loss, summary->final_eval_loss,
              argv[3]);
  return 0;
}
