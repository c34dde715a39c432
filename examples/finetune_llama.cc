// Fine-tune a LLaMA-family model with LoRA through the C++ API, in a few
// lines: build a recipe in code and call trainers::train().
//
//   bazel-bin/examples/finetune_llama MODEL_DIR TRAIN_FILE RUN_DIR [STEPS]
#include <cstdio>
#include <cstdlib>

#include "trainers/trainer.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: finetune_llama MODEL_DIR TRAIN_FILE RUN_DIR [STEPS]\n");
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
  a->mutable_target()->set_preset("all_linear");  // q,k,v,o,gate,up,down
  r.mutable_optimizer()->set_lr(2e-3);
  r.mutable_training()->set_steps(argc > 4 ? std::atoi(argv[4]) : 100);
  r.mutable_checkpoint()->set_merge_on_finish(true);  // RUN_DIR/merged is a plain HF model
  auto summary = peft::trainers::train(r);
  if (!summary.ok()) {
    std::fprintf(stderr, "finetune_llama: %s\n", std::string(summary.status().message()).c_str());
    return 1;
  }
  std::printf("eval loss %.4f -> %.4f; adapter in %s/adapter, merged model in %s/merged\n", summary->initial_eval_loss,
              summary->final_eval_loss, argv[3], argv[3]);
  return 0;
}
