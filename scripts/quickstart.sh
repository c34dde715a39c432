#!/usr/bin/env bash
# The main job: installs what is missing, builds, and runs the quickstart
# (examples/quickstart.cc) end to end. Outputs go to runs/quickstart/.
#
#   scripts/quickstart.sh                      # the built-in default (nothing from outside the repository)
#   scripts/quickstart.sh --base=stories260K   # the same recipe on stories260K from ../shared/assets
#   scripts/quickstart.sh --base=DIR           # ... or on any Hugging Face LLaMA/GPT-2 directory
#
# The default pretrains a small byte-level LLaMA on generated string tasks
# (cached in runs/quickstart/base: a second run skips it), measures greedy
# exact-match accuracy on "reverse: <word> -> " for 100 held-out words,
# fine-tunes LoRA r=8 on all linear layers through the recipe-driven trainer
# (examples/recipes/quickstart_lora.textproto), measures again, merges,
# exports a Hugging Face directory (runs/quickstart/merged) and a GGUF file
# for llama.cpp (runs/quickstart/merged.gguf), reloads the directory, checks
# it answers exactly as base + adapter, and generates from it.
# Other flags are passed to the program (bazel-bin/examples/quickstart --help).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/install_deps.sh
echo "quickstart: building //:peft and //examples:quickstart (the first build takes a few minutes)"
bazel build //:peft //examples:quickstart
PEFT="$ROOT/bazel-bin/examples/peft"
QUICKSTART="$ROOT/bazel-bin/examples/quickstart"

ARGS=()
WORK=""
for arg in "$@"; do
  case "$arg" in
    --base=stories260K)
      # llama2.c's stories260K from ../shared/assets (or $PEFT_SHARED_DIR/assets),
      # converted once to a Hugging Face directory with its sentencepiece tokenizer.
      SHARED="${PEFT_SHARED_DIR:-$ROOT/../shared}"
      A="$SHARED/assets/llama2c_stories260K"
      if [ ! -f "$A/stories260K.bin" ]; then
        echo "quickstart: --base=stories260K needs $A/stories260K.bin (set PEFT_SHARED_DIR)" >&2
        exit 2
      fi
      if [ ! -f "$ROOT/runs/stories260K/config.json" ]; then
        echo "quickstart: converting stories260K (llama2.c) to a Hugging Face model directory"
        "$PEFT" convert --from=llama2c --input="$A/stories260K.bin" --tokenizer="$A/tok512.model" \
          --output="$ROOT/runs/stories260K" --overwrite
      fi
      ARGS+=("--base=$ROOT/runs/stories260K")
      WORK="$ROOT/runs/quickstart_stories260K"
      ;;
    --base=*)
      ARGS+=("$arg")
      WORK="$ROOT/runs/quickstart_$(basename "${arg#--base=}")"
      ;;
    --work_dir=*)
      ARGS+=("$arg")
      WORK="${arg#--work_dir=}"
      ;;
    *)
      ARGS+=("$arg")
      ;;
  esac
done
WORK="${WORK:-$ROOT/runs/quickstart}"
case " ${ARGS[*]-} " in
  *" --work_dir="*) ;;
  *) ARGS+=("--work_dir=$WORK") ;;
esac

"$QUICKSTART" "${ARGS[@]}"

# The export is an ordinary Hugging Face directory: the `peft` tool uses it as is.
echo
echo "quickstart: the merged export with the peft tool:"
echo "  $PEFT generate --model=$WORK/merged --prompt='reverse: peft -> ' --max_new_tokens=8"
"$PEFT" generate --model="$WORK/merged" --prompt="reverse: peft -> " --max_new_tokens=8

# The same merged model as one GGUF file for llama.cpp (the program already
# wrote it; this is the command that does it for any model directory).
echo
echo "quickstart: the merged model as GGUF for llama.cpp:"
echo "  $PEFT export --model=$WORK/merged --format=gguf --output=$WORK/merged.gguf --overwrite"
"$PEFT" export --model="$WORK/merged" --format=gguf --output="$WORK/merged.gguf" --overwrite
if command -v llama-cli >/dev/null 2>&1; then
  llama-cli -m "$WORK/merged.gguf" -p "reverse: peft -> " -n 8 --temp 0 -no-cnv
else
  echo "  with llama.cpp installed: llama-cli -m $WORK/merged.gguf -p 'reverse: peft -> ' -n 8 --temp 0 -no-cnv"
fi
