#!/usr/bin/env bash
# The main job on the built-in default: installs what is missing, builds the
# `peft` tool, and runs it end to end. Outputs go to runs/quickstart/.
#
# With ../shared/assets (or PEFT_SHARED_DIR) present it converts the real
# stories260K llama2.c model to a Hugging Face directory and tells a story;
# without it, it creates a small random LLaMA, saves it as a Hugging Face
# directory, loads it back and generates from token ids.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/install_deps.sh
echo "quickstart: building //:peft (first build takes a few minutes)"
bazel build //:peft
PEFT="$ROOT/bazel-bin/examples/peft"
OUT="$ROOT/runs/quickstart"
mkdir -p "$OUT"

SHARED="${PEFT_SHARED_DIR:-$ROOT/../shared}"
if [ -f "$SHARED/assets/llama2c_stories260K/stories260K.bin" ]; then
  A="$SHARED/assets/llama2c_stories260K"
  echo "quickstart: converting stories260K (llama2.c) to a Hugging Face model directory"
  "$PEFT" convert --from=llama2c --input="$A/stories260K.bin" --tokenizer="$A/tok512.model" \
    --output="$OUT/stories260K" --overwrite
  echo "quickstart: greedy story from \"Once upon a time\""
  "$PEFT" generate --model="$OUT/stories260K" --prompt="Once upon a time" --max_new_tokens=120
  echo '{"text": "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."}' \
    > "$OUT/eval.jsonl"
  echo "quickstart: teacher-forced loss on a short story"
  "$PEFT" eval --model="$OUT/stories260K" --data="$OUT/eval.jsonl"
  echo "quickstart: done. The model directory is $OUT/stories260K (config.json, model.safetensors, tokenizer.model)."
else
  echo "quickstart: ../shared/assets not found; using a random LLaMA instead"
  "$PEFT" init --arch=llama --output="$OUT/random_llama" --vocab_size=512 --hidden_size=128 \
    --num_layers=4 --num_heads=4 --num_kv_heads=2 --max_positions=256 --seed=1 --overwrite
  "$PEFT" generate --model="$OUT/random_llama" --prompt_ids=1,5,9 --max_new_tokens=16 --format=json
  echo "quickstart: done. The model directory is $OUT/random_llama."
fi
