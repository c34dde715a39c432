#!/usr/bin/env bash
# Crash consistency of `peft train` and `peft merge` under SIGKILL (too slow
# for the unit suite; see docs/reliability.md "Crash consistency").
#
#   scripts/crash_consistency.sh [--train=35] [--merge=15] [--seed=1] [--peft=PATH] [--keep]
#
# Builds the `peft` CLI (unless --peft), makes a tiny model (stories260K
# converted from ../shared/assets) and a small JSONL file, and runs a
# reference training (12 steps, a checkpoint every step, keep_last 2) and a
# reference merge. Then it starts --train runs and --merge merges and kills
# each with SIGKILL: a third of the runs after a random (seeded) delay over
# the reference run's length, a third as soon as a checkpoint (of a random
# step) is being written, a third as soon as the final adapter is being written (merges:
# half at a random delay, half once the output is being written). After
# each kill it checks that
#   - every output under its final name is complete: each checkpoint
#     step-N/ has state.json (valid JSON), trainable.safetensors (a
#     well-formed header whose tensors end at the file's end) and
#     optimizer.pt (a zip archive whose CRCs check); adapter/ and the merged
#     directory are whole; metrics.jsonl lines parse;
#   - `peft train --resume` succeeds (for a merge: the same merge again,
#     when the output is missing) and leaves no temporary directory;
#   - the resumed adapter (merged model) is byte for byte the reference's
#     (cmp), and the resumed metrics hold the reference's losses.
# Ends with "crash consistency: K kills (T train, M merge), P passed, F failed;
# phases: ..." and exits 1 when any kill failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${PEFT_SHARED_DIR:-$ROOT/../shared}
N_TRAIN=35
N_MERGE=15
SEED=1
PEFT=""
KEEP=0
for a in "$@"; do
  case $a in
    --train=*) N_TRAIN=${a#--train=} ;;
    --merge=*) N_MERGE=${a#--merge=} ;;
    --seed=*) SEED=${a#--seed=} ;;
    --peft=*) PEFT=${a#--peft=} ;;
    --keep) KEEP=1 ;;
    *) echo "crash: unknown argument $a (see the header of $0)"; exit 2 ;;
  esac
done
for tool in jq unzip cmp; do
  command -v "$tool" >/dev/null || { echo "crash: needs $tool"; exit 2; }
done
A=$SHARED/assets/llama2c_stories260K
[ -f "$A/stories260K.bin" ] || { echo "crash: $A/stories260K.bin not found (set PEFT_SHARED_DIR)"; exit 2; }
if [ -z "$PEFT" ]; then
  bazel build //examples:peft >/dev/null 2>&1 || { echo "crash: cannot build //examples:peft"; exit 2; }
  PEFT=$ROOT/bazel-bin/examples/peft
fi

W=$(mktemp -d /tmp/peft-crash.XXXXXX)
[ "$KEEP" = 1 ] || trap 'rm -rf "$W"' EXIT
echo "crash: working in $W (seed $SEED, $N_TRAIN train + $N_MERGE merge kills)"
# A private copy of the CLI and its sentencepiece shim (found beside it), so
# a rebuild (another --config) during the run cannot swap them.
SHIM=$(dirname "$PEFT")/libpeft_spm_shim.so
[ -f "$SHIM" ] || SHIM=$ROOT/bazel-bin/third_party/sentencepiece_shim/libpeft_spm_shim.so
mkdir -p "$W/bin" && cp "$PEFT" "$W/bin/peft" && cp "$SHIM" "$W/bin/" || { echo "crash: cannot copy $PEFT and $SHIM"; exit 2; }
PEFT=$W/bin/peft

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# ---- setup: model, data, recipe, references --------------------------------
"$PEFT" convert --from=llama2c --input="$A/stories260K.bin" --tokenizer="$A/tok512.model" \
  --output="$W/base" >/dev/null 2>"$W/convert.err" || { cat "$W/convert.err"; exit 2; }
head -c 60000 "$SHARED/assets/corpus/tinyshakespeare.txt" |
  jq -R -s -c 'split("\n\n")[] | select(length > 0) | {text: .}' >"$W/train.jsonl"
cat >"$W/recipe.textproto" <<EOF
model: "$W/base"
output_dir: "$W/unused"
data { train_file: "$W/train.jsonl" seq_len: 64 }
adapters { name: "default" lora { r: 4 alpha: 8 } target { preset: "all_linear" } }
optimizer { lr: 0.01 }
schedule { kind: COSINE warmup_steps: 2 }
training { steps: 12 micro_batch: 4 grad_accum: 2 threads: 1 }
eval { max_batches: 4 }
checkpoint { every_steps: 1 keep_last: 2 }
logging { every_steps: 1 }
EOF
# exec: started with &, the background job is peft itself, so kill -9 hits it.
train() { exec "$PEFT" train --recipe="$W/recipe.textproto" --output_dir="$1" "${@:2}"; }
merge() { exec "$PEFT" merge --model="$W/base" --adapter="$W/ref/adapter" --output="$1" --threads=1; }
losses() { jq -c 'select(has("loss")) | [.step, .loss]' "$1" 2>/dev/null; }

t0=$(now_ms)
(train "$W/ref") >/dev/null 2>"$W/ref.err" || { cat "$W/ref.err"; exit 2; }
T_TRAIN=$(( $(now_ms) - t0 ))
t0=$(now_ms)
(merge "$W/ref_merged") >/dev/null 2>"$W/ref_merged.err" || { cat "$W/ref_merged.err"; exit 2; }
T_MERGE=$(( $(now_ms) - t0 ))
losses "$W/ref/metrics.jsonl" >"$W/ref.losses"
[ "$(wc -l <"$W/ref.losses")" -eq 12 ] || { echo "crash: the reference run logged $(wc -l <"$W/ref.losses") losses"; exit 2; }
echo "crash: reference train ${T_TRAIN} ms, merge ${T_MERGE} ms"

# ---- checks -----------------------------------------------------------------
# A safetensors file: 8-byte little-endian header length N, N bytes of JSON,
# and the tensors' data_offsets ending exactly at the end of the file.
check_safetensors() {
  local f=$1 size n end
  [ -f "$f" ] || { echo "missing $f"; return 1; }
  size=$(stat -c %s "$f")
  [ "$size" -ge 8 ] || { echo "$f: $size bytes, shorter than the header length"; return 1; }
  n=$(od -An -t u8 -N 8 "$f" | tr -d ' ')
  [ "$n" -gt 0 ] && [ $(( 8 + n )) -le "$size" ] || { echo "$f: header length $n, file $size bytes"; return 1; }
  end=$(head -c $(( 8 + n )) "$f" | tail -c +9 |
        jq '[to_entries[] | select(.key != "__metadata__") | .value.data_offsets[1]] | max // 0' 2>/dev/null) ||
    { echo "$f: header is not JSON"; return 1; }
  [ $(( 8 + n + end )) -eq "$size" ] || { echo "$f: tensors end at $(( 8 + n + end )), file has $size bytes"; return 1; }
}
check_json() { jq -e . "$1" >/dev/null 2>&1 || { echo "$1: missing or not JSON"; return 1; }; }
check_checkpoint() {
  local d=$1 bad=0
  check_json "$d/state.json" || bad=1
  check_safetensors "$d/trainable.safetensors" || bad=1
  unzip -tq "$d/optimizer.pt" >/dev/null 2>&1 || { echo "$d/optimizer.pt: missing or not a whole zip archive"; bad=1; }
  return $bad
}
# Everything under a final name in run directory $1 is complete.
check_run_dir() {
  local r=$1 bad=0 d
  [ -d "$r" ] || return 0
  for d in "$r"/checkpoints/step-*; do
    [ -e "$d" ] || continue
    check_checkpoint "$d" || bad=1
  done
  if [ -e "$r/adapter" ]; then
    check_json "$r/adapter/adapter_config.json" || bad=1
    check_safetensors "$r/adapter/adapter_model.safetensors" || bad=1
  fi
  if [ -e "$r/summary.json" ]; then check_json "$r/summary.json" || bad=1; fi
  if [ -e "$r/metrics.jsonl" ]; then
    # Lines are written whole and flushed; a kill may cut the last one only
    # if a write is torn, which the resumed run must then repair.
    jq -c . "$r/metrics.jsonl" >/dev/null 2>&1 || echo "note: $r/metrics.jsonl has a torn line (allowed before resume)"
  fi
  return $bad
}
check_model_dir() {
  local m=$1 bad=0
  check_json "$m/config.json" || bad=1
  check_safetensors "$m/model.safetensors" || bad=1
  cmp -s "$m/tokenizer.model" "$W/ref_merged/tokenizer.model" || { echo "$m/tokenizer.model differs"; bad=1; }
  return $bad
}
leftovers() { find "$1" -name '.*.tmp-*' -o -name '.*.old-*' -o -name '.*.removing-*' 2>/dev/null; }

# Where a killed run was, from what it left.
train_phase() {
  local r=$1 exited=$2
  if [ "$exited" = 1 ]; then echo "after-finish"; return; fi
  if [ ! -d "$r" ] || ! compgen -G "$r/checkpoints/step-*/state.json" >/dev/null; then
    if compgen -G "$r/checkpoints/.step-*" >/dev/null; then echo "first-checkpoint-write"; else echo "start-up"; fi
    return
  fi
  if compgen -G "$r/.adapter.*" >/dev/null || compgen -G "$r/.summary.json*" >/dev/null || compgen -G "$r/.loss.svg*" >/dev/null ||
     { [ -e "$r/adapter" ] && [ ! -e "$r/summary.json" ]; }; then
    echo "final-outputs"; return
  fi
  if compgen -G "$r/checkpoints/.step-*" >/dev/null; then echo "checkpoint-write"; return; fi
  echo "steps"
}

# Random milliseconds in [0, $1] from bash's seeded generator.
rand_ms() { echo $(( (RANDOM * 32768 + RANDOM) % ($1 + 1) )); }
RANDOM=$SEED

# Polls (about every millisecond) until a glob matches or the process ends.
wait_for() {
  local pid=$1 pattern=$2 deadline=$(( $(now_ms) + 4 * T_TRAIN + 5000 ))
  while kill -0 "$pid" 2>/dev/null && [ "$(now_ms)" -lt "$deadline" ]; do
    compgen -G "$pattern" >/dev/null && return 0
    sleep 0.001
  done
  return 1
}

passed=0
failed=0
declare -A phases=()
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

for i in $(seq 1 "$N_TRAIN"); do
  r=$W/train-$i
  mode=$(( i % 3 ))
  train "$r" >"$r.out" 2>"$r.err" &
  pid=$!
  case $mode in
    0) d=$(rand_ms "$T_TRAIN"); sleep "$(awk -v d="$d" 'BEGIN{printf "%.3f", d/1000}')"; how="after ${d} ms" ;;
    1) k=$(( 1 + RANDOM % 12 ))
       wait_for "$pid" "$r/checkpoints/.step-$(printf %08d "$k").tmp-*"; d=$(rand_ms 2); sleep "0.00$d"
       how="step-$k checkpoint write +${d} ms" ;;
    2) wait_for "$pid" "$r/.adapter.*"; d=$(rand_ms 8); sleep "0.00$d"; how="adapter write +${d} ms" ;;
  esac
  exited=0
  kill -0 "$pid" 2>/dev/null || exited=1
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  phase=$(train_phase "$r" "$exited")
  phases[train:$phase]=$(( ${phases[train:$phase]:-0} + 1 ))
  problems=$(check_run_dir "$r")
  if [ -n "$problems" ] && echo "$problems" | grep -qv '^note:'; then
    fail "train $i ($how, $phase)" "incomplete output under a final name: $problems"
    continue
  fi
  if ! (train "$r" --resume) >"$r.resume.out" 2>"$r.resume.err"; then
    fail "train $i ($how, $phase)" "--resume failed: $(tail -n 3 "$r.resume.err")"
    continue
  fi
  problems=$(check_run_dir "$r")
  left=$(leftovers "$r")
  if [ -n "$problems" ] || [ -n "$left" ]; then
    fail "train $i ($how, $phase)" "after resume: $problems $left"
    continue
  fi
  if ! cmp -s "$r/adapter/adapter_model.safetensors" "$W/ref/adapter/adapter_model.safetensors"; then
    fail "train $i ($how, $phase)" "resumed adapter differs from the uninterrupted run's"
    continue
  fi
  if ! diff -q <(losses "$r/metrics.jsonl") "$W/ref.losses" >/dev/null; then
    fail "train $i ($how, $phase)" "resumed metrics.jsonl losses differ: $(diff <(losses "$r/metrics.jsonl") "$W/ref.losses" | head -5 | tr '\n' ' ')"
    continue
  fi
  passed=$((passed + 1))
  echo "ok train $i: killed $how ($phase)"
  [ "$KEEP" = 1 ] || rm -rf "$r" "$r".*
done

for i in $(seq 1 "$N_MERGE"); do
  m=$W/merged-$i
  merge "$m" >"$m.out" 2>"$m.err" &
  pid=$!
  if [ $(( i % 2 )) = 0 ]; then
    d=$(rand_ms "$T_MERGE"); sleep "$(awk -v d="$d" 'BEGIN{printf "%.3f", d/1000}')"; how="after ${d} ms"
  else
    wait_for "$pid" "$W/.merged-$i.tmp-*"; d=$(rand_ms 2); sleep "0.00$d"; how="output write +${d} ms"
  fi
  exited=0
  kill -0 "$pid" 2>/dev/null || exited=1
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ "$exited" = 1 ]; then phase=after-finish
  elif compgen -G "$W/.merged-$i.tmp-*" >/dev/null || compgen -G "$W/.merged-$i.old-*" >/dev/null; then phase=output-write
  elif [ -e "$m" ]; then phase=after-rename
  else phase=start-up; fi
  phases[merge:$phase]=$(( ${phases[merge:$phase]:-0} + 1 ))
  if [ -e "$m" ]; then
    problems=$(check_model_dir "$m")
    [ -z "$problems" ] || { fail "merge $i ($how, $phase)" "incomplete output under its final name: $problems"; continue; }
  else
    if ! (merge "$m") >"$m.out2" 2>"$m.err2"; then
      fail "merge $i ($how, $phase)" "the merge again failed: $(tail -n 3 "$m.err2")"
      continue
    fi
    left=$(find "$W" -maxdepth 1 -name ".merged-$i.*")  # temporaries and the lock file
    [ -z "$left" ] || { fail "merge $i ($how, $phase)" "left behind: $left"; continue; }
  fi
  if ! cmp -s "$m/model.safetensors" "$W/ref_merged/model.safetensors" || ! cmp -s "$m/config.json" "$W/ref_merged/config.json"; then
    fail "merge $i ($how, $phase)" "merged model differs from the reference merge"
    continue
  fi
  passed=$((passed + 1))
  echo "ok merge $i: killed $how ($phase)"
  [ "$KEEP" = 1 ] || rm -rf "$m" "$m".* "$W/.merged-$i".*
done

summary=""
for k in $(printf '%s\n' "${!phases[@]}" | sort); do summary+="$k=${phases[$k]} "; done
echo "crash consistency: $((N_TRAIN + N_MERGE)) kills ($N_TRAIN train, $N_MERGE merge), $passed passed, $failed failed; phases: ${summary% }"
[ "$failed" -eq 0 ]
