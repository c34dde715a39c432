#!/usr/bin/env bash
# Peak memory of one long JSONL record through the sentencepiece tokenizer:
# builds (or takes) the `peft` CLI, writes {"text": ...} lines of the given
# sizes (tinyshakespeare repeated, newlines turned into spaces) and runs
# `peft tokenize` on each under /usr/bin/time, capped at LIMIT_GB of address
# space (default 8) so a run that would take more fails instead of swapping.
#
#   scripts/bench_long_record.sh [--peft=PATH] [SIZE_MB ...]   (default: 5 50)
#
# Prints one line per size: "N MB line: peak RSS M MB, T s" (or the failure).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${PEFT_SHARED_DIR:-$ROOT/../shared}
PEFT=""
sizes=()
for a in "$@"; do
  case $a in
    --peft=*) PEFT=${a#--peft=} ;;
    *) sizes+=("$a") ;;
  esac
done
[ ${#sizes[@]} -gt 0 ] || sizes=(5 50)
if [ -z "$PEFT" ]; then
  bazel build //examples:peft >/dev/null 2>&1 || { echo "bench: cannot build //examples:peft"; exit 1; }
  PEFT=$ROOT/bazel-bin/examples/peft
fi
MODEL=$SHARED/assets/llama2_tokenizer/tokenizer.model
CORPUS=$SHARED/assets/corpus/tinyshakespeare.txt
[ -f "$MODEL" ] && [ -f "$CORPUS" ] || { echo "bench: assets not found under $SHARED/assets"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
limit_kb=$(( ${LIMIT_GB:-8} * 1024 * 1024 ))
for mb in "${sizes[@]}"; do
  python3 - "$CORPUS" "$mb" "$TMP/line.jsonl" <<'PY'
import json, sys
corpus = open(sys.argv[1], encoding="utf-8").read().replace("\n", " ")
n = int(sys.argv[2]) << 20
text = (corpus * (n // len(corpus) + 1))[:n]
open(sys.argv[3], "w", encoding="utf-8").write(json.dumps({"text": text}) + "\n")
PY
  ( ulimit -v "$limit_kb"
    /usr/bin/time -f "%M %e" -o "$TMP/time" "$PEFT" tokenize --tokenizer="$MODEL" <"$TMP/line.jsonl" >"$TMP/out" 2>"$TMP/err" )
  rc=$?
  read -r rss_kb secs < <(tail -n 1 "$TMP/time" 2>/dev/null) || true
  [[ ${rss_kb:-} =~ ^[0-9]+$ ]] || rss_kb=0
  if [ $rc -eq 0 ]; then
    echo "$mb MB line: peak RSS $(( ${rss_kb:-0} / 1024 )) MB, ${secs:-?} s"
  else
    echo "$mb MB line: failed (exit $rc) under a ${LIMIT_GB:-8} GiB address-space cap after ${secs:-?} s, peak RSS $(( ${rss_kb:-0} / 1024 )) MB: $(tail -c 200 "$TMP/err" | tr '\n' ' ')"
  fi
done
