#!/usr/bin/env bash
# Bring-your-own-model benchmark (prints a markdown table; not a test):
# models of real config.json shapes with random weights (`peft init
# --config`, ../shared/assets/configs), LoRA r=16 on all linear layers,
# micro-batch 1, plain text (Tiny Shakespeare), precision FP32. For each model
# and sequence length: the base in float32, in bf16 storage
# (training.base_dtype BF16), and bf16 storage with activation checkpointing;
# each row gives tokens/s, the peak RSS `peft train` measured and the memory
# plan it printed before loading (summary.json). Then a --dry_run plan of
# Mistral-7B from its config.json alone (no weights are written).
#
#   scripts/bench_byom.sh [--models=llama-3.2-1b,qwen2.5-0.5b] [--seqs=256,512] [--steps=2] [--work=DIR]
#                         [--variants=fp32,bf16,bf16-ckpt]
#
# Needs `bazel build //examples:peft` and about 2.5 GB of disk per 1B model
# (weights written in bf16). Run it on a quiet machine: tokens/s are
# meaningless beside another build.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${PEFT_SHARED_DIR:-../shared}
PEFT=${PEFT_BIN:-bazel-bin/examples/peft}
models=llama-3.2-1b,qwen2.5-0.5b
seqs=256,512
steps=2
variants=fp32,bf16,bf16-ckpt
work=${TMPDIR:-/tmp}/peft-bench-byom
for a in "$@"; do
  case "$a" in
    --models=*) models=${a#--models=} ;;
    --seqs=*) seqs=${a#--seqs=} ;;
    --steps=*) steps=${a#--steps=} ;;
    --work=*) work=${a#--work=} ;;
    --variants=*) variants=${a#--variants=} ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[ -x "$PEFT" ] || { echo "build the CLI first: bazel build //examples:peft" >&2; exit 2; }
mkdir -p "$work"
tok=$SHARED/assets/llama3_tokenizer
data=$SHARED/assets/corpus/tinyshakespeare.txt
grep -m1 -o 'model name.*' /proc/cpuinfo | head -1
grep -o -w 'avx512_bf16\|amx_bf16\|avx2' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
echo
echo "| model | seq | base | checkpointing | tokens/s | peak RSS MB | plan MB | plan vs peak |"
echo "|---|---:|---|---|---:|---:|---:|---:|"
IFS=, read -r -a model_list <<<"$models"
IFS=, read -r -a seq_list <<<"$seqs"
IFS=, read -r -a variant_list <<<"$variants"
for m in "${model_list[@]}"; do
  dir=$work/$m
  if [ ! -f "$dir/config.json" ]; then
    "$PEFT" init --config="$SHARED/assets/configs/$m.json" --output="$dir" --dtype=bfloat16 >/dev/null
  fi
  for s in "${seq_list[@]}"; do
    for variant in "${variant_list[@]}"; do
      case "$variant" in
        fp32) base=FP32 ckpt=false ;;
        bf16) base=BF16 ckpt=false ;;
        bf16-ckpt) base=BF16 ckpt=true ;;
        *) echo "unknown variant $variant (fp32, bf16, bf16-ckpt)" >&2; exit 2 ;;
      esac
      run=$work/run-$m-$s-$base-$ckpt
      rm -rf "$run"
      cat >"$work/recipe.textproto" <<RECIPE
model: "$dir"
tokenizer: "$tok"
output_dir: "$run"
data { train_file: "$data" format: PLAIN_TEXT seq_len: $s }
adapters { name: "default" lora { r: 16 alpha: 32 } target { preset: "all_linear" } }
training { steps: $steps micro_batch: 1 precision: FP32 base_dtype: $base activation_checkpointing: $ckpt }
eval { max_batches: 1 }
logging { progress_bar: false }
RECIPE
      "$PEFT" train --recipe="$work/recipe.textproto" >"$work/out.json" 2>"$work/err.txt" || {
        echo "| $m | $s | $base | $ckpt | failed: $(tail -1 "$work/err.txt") | | | |"; continue; }
      python3 - "$run/summary.json" "$m" "$s" "$base" "$ckpt" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
m, seq, base, ckpt = sys.argv[2:]
peak, plan = s["peak_rss_mb"], s["planned_peak_mb"]
print(f"| {m} | {seq} | {base.lower()} | {'on' if ckpt == 'true' else 'off'} | {s['tokens_per_second']:.1f} | "
      f"{peak:.0f} | {plan:.0f} | {100 * (plan - peak) / peak:+.1f}% |")
PY
    done
  done
done
echo
# Mistral-7B: the plan from config.json alone (a directory holding only it).
mdir=$work/mistral-7b-config-only
mkdir -p "$mdir"
cp "$SHARED/assets/configs/mistral-7b-v0.1.json" "$mdir/config.json"
for base in FP32 BF16; do
  cat >"$work/recipe.textproto" <<RECIPE
model: "$mdir"
tokenizer: "$SHARED/assets/mistral_tokenizer"
output_dir: "$work/run-mistral-7b"
data { train_file: "$data" format: PLAIN_TEXT seq_len: 512 }
adapters { name: "default" lora { r: 16 alpha: 32 } target { preset: "all_linear" } }
training { micro_batch: 1 base_dtype: $base activation_checkpointing: true }
RECIPE
  echo "mistral-7b-v0.1, base $base, seq 512, checkpointing on: peft train --dry_run"
  "$PEFT" train --recipe="$work/recipe.textproto" --dry_run 2>&1 | sed -n '/memory plan/,/expected peak/p;/refused\|available\|no weights/p' | head -20 || true
done
