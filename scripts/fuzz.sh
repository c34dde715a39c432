#!/usr/bin/env bash
# Builds the libFuzzer harnesses in fuzz/ with clang (-fsanitize=fuzzer,
# address,undefined) straight from the sources they need (no Bazel: the
# sanitizer runtime and the instrumentation need clang), then runs each.
#
#   scripts/fuzz.sh                  every harness for 30 s (the smoke run)
#   scripts/fuzz.sh --runs=1000000   every harness for 10^6 executions
#   scripts/fuzz.sh --time=1800 tokenizer_json
#
# Seeds: the matching files of ../shared/assets (PEFT_SHARED_DIR), copied
# into a corpus under .fuzz/ (ignored by git). A finding stops the harness
# with the crashing input under .fuzz/<name>/ and exit 1. Prints one line per
# harness: "fuzz: NAME: N executions, C corpus entries, ok".
set -uo pipefail
cd "$(dirname "$0")/.."
CXX=${FUZZ_CXX:-clang++-14}
SHARED=${PEFT_SHARED_DIR:-../shared}
limit="-max_total_time=30"
only=()
for a in "$@"; do
  case "$a" in
    --runs=*) limit="-runs=${a#--runs=}" ;;
    --time=*) limit="-max_total_time=${a#--time=}" ;;
    *) only+=("$a") ;;
  esac
done
command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (apt-get install clang)" >&2; exit 77; }
ABSL="-labsl_statusor -labsl_status -labsl_str_format_internal -labsl_strings -labsl_strings_internal"
ABSL="$ABSL -labsl_cord -labsl_cord_internal -labsl_cordz_info -labsl_cordz_functions -labsl_cordz_handle"
ABSL="$ABSL -labsl_raw_logging_internal -labsl_int128 -labsl_throw_delegate -labsl_base -labsl_spinlock_wait"
FLAGS="-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. -DPCRE2_CODE_UNIT_WIDTH=8"
mkdir -p .fuzz

# name | sources | libraries | seed files
harnesses=(
  "config_json|models/config.cc peft/io/read_file.cc|$ABSL|$SHARED/assets/configs/*.json $SHARED/assets/hf_tiny/*/config.json"
  "records|data/records.cc data/chat_template.cc data/hf/unicode.cc|$ABSL -licuuc -licudata|fuzz/seeds/records/*"
  "tokenizer_json|$(ls data/hf/*.cc | tr '\n' ' ')|$ABSL -licuuc -licudata -lpcre2-8|$SHARED/assets/llama3_tokenizer/tokenizer.json $SHARED/assets/mistral_tokenizer/tokenizer.json"
)
rc=0
for h in "${harnesses[@]}"; do
  IFS='|' read -r name srcs libs seeds <<<"$h"
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " $name " ]]; then continue; fi
  dir=.fuzz/$name
  mkdir -p "$dir/corpus"
  # shellcheck disable=SC2086
  if ! $CXX $FLAGS fuzz/${name}_fuzz.cc $srcs -o "$dir/fuzzer" $libs 2>"$dir/build.log"; then
    echo "fuzz: $name: build failed (see $dir/build.log)"; rc=1; continue
  fi
  # shellcheck disable=SC2086
  for s in $seeds; do [ -f "$s" ] && cp -f "$s" "$dir/corpus/seed-$(basename "$(dirname "$s")")-$(basename "$s")"; done
  # Big seeds (a 9 MB tokenizer.json) are kept whole; mutations stay small.
  (cd "$dir" && ./fuzzer corpus $limit -max_len=4096 -rss_limit_mb=4096 -timeout=60 -print_final_stats=1 \
      >run.log 2>&1)
  status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/run.log" | grep -o '[0-9]*$')
  entries=$(ls "$dir/corpus" | wc -l)
  if [ $status -eq 0 ]; then
    echo "fuzz: $name: ${execs:-?} executions, $entries corpus entries, ok"
  else
    echo "fuzz: $name: FINDING after ${execs:-?} executions (see $dir/run.log and $dir/crash-*)"; rc=1
  fi
done
exit $rc
