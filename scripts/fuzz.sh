#!/usr/bin/env bash
# Builds the libFuzzer harnesses in fuzz/ with clang (-fsanitize=fuzzer,
# address,undefined) straight from the sources they need (no Bazel: the
# sanitizer runtime and the instrumentation need clang), then runs each.
#
#   scripts/fuzz.sh                  every harness for 30 s (the smoke run)
#   scripts/fuzz.sh --smoke          the same, said explicitly (what CI runs)
#   scripts/fuzz.sh --time=S         every harness for S seconds
#   scripts/fuzz.sh --runs=1000000   every harness for 10^6 executions
#   scripts/fuzz.sh --runs=1000000 --time=1800   10^6 executions or 30 min,
#                                    whichever comes first
#   scripts/fuzz.sh --runs=1000000 safetensors recipe   only those harnesses
#   scripts/fuzz.sh --build-only     build every harness, run none
#   scripts/fuzz.sh --list           the harness names, one a line
#
# A harness is fuzz/<name>_fuzz.cc plus a row of the table below. Its sources
# are that file and the closure of our .cc files it reaches through
# #include "x/y.h" (x/y.cc, or .fuzz/gen/x/y.pb.cc for a .proto), so the
# table names only libraries, seeds and the input cap. Objects are cached in
# .fuzz/obj and rebuilt when a source or one of our headers changes; the
# .proto files are compiled with protoc into .fuzz/gen. LibTorch (Debian's,
# not instrumented) is linked where a reader needs it; only our code is.
#
# Seeds: the matching files of ../shared/assets (PEFT_SHARED_DIR) and
# fuzz/seeds/<name>/, copied into a corpus under .fuzz/<name>/ (ignored by
# git). A finding stops the harness with the crashing input under
# .fuzz/<name>/ and exit 1. Prints one line per harness:
# "fuzz: NAME: N executions in T s (R/s), C corpus entries, ok".
# Environment: FUZZ_CXX (clang++-14), FUZZ_JOBS (parallel compiles, 2).
set -uo pipefail
cd "$(dirname "$0")/.."
CXX=${FUZZ_CXX:-clang++-14}
JOBS=${FUZZ_JOBS:-2}
SHARED=${PEFT_SHARED_DIR:-../shared}
runs=""
secs=""
build_only=0
list=0
only=()
for a in "$@"; do
  case "$a" in
    --smoke) secs=30 ;;
    --runs=*) runs=${a#--runs=} ;;
    --time=*) secs=${a#--time=} ;;
    --build-only) build_only=1 ;;
    --list) list=1 ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "fuzz: unknown option $a (see --help)" >&2; exit 2 ;;
    *) only+=("$a") ;;
  esac
done

ABSL="-labsl_statusor -labsl_status -labsl_str_format_internal -labsl_strings -labsl_strings_internal"
ABSL="$ABSL -labsl_cord -labsl_cord_internal -labsl_cordz_info -labsl_cordz_functions -labsl_cordz_handle"
ABSL="$ABSL -labsl_raw_logging_internal -labsl_int128 -labsl_throw_delegate -labsl_base -labsl_spinlock_wait"
TORCH="-ltorch -ltorch_cpu -lc10"
PROTO="-lprotobuf"
A=$SHARED/assets

# name | libraries | seed files | max input bytes
harnesses=(
  "config_json|$ABSL|$A/configs/*.json $A/hf_tiny/*/config.json|4096"
  "records|$ABSL -licuuc -licudata|fuzz/seeds/records/*|4096"
  "tokenizer_json|$ABSL -licuuc -licudata -lpcre2-8|$A/llama3_tokenizer/tokenizer.json $A/mistral_tokenizer/tokenizer.json|4096"
  "llama2c_tokenizer|$ABSL|$A/llama2c_stories260K/tok512.bin fuzz/seeds/llama2c_tokenizer/*|8192"
  "gpt2_bpe|$ABSL -licuuc -licudata -lpcre2-8|fuzz/seeds/gpt2_bpe/*|16384"
  "safetensors|$TORCH $ABSL|fuzz/seeds/safetensors/*|4096"
  "safetensors_index|$TORCH $ABSL|fuzz/seeds/safetensors_index/*|4096"
  "checkpoint_state|$TORCH $ABSL|fuzz/seeds/checkpoint_state/*|4096"
  "adapter_config|$TORCH $PROTO $ABSL|fuzz/seeds/adapter_config/*|4096"
  "recipe|$TORCH $PROTO $ABSL -licuuc -licudata -lpcre2-8|examples/recipes/*.textproto fuzz/seeds/recipe/*|4096"
  "llama2c_checkpoint|$TORCH $PROTO $ABSL|fuzz/seeds/llama2c_checkpoint/*|8192"
  "spm_shim|$ABSL -ldl|fuzz/seeds/spm_shim/*|4096"
)

# Both given: whichever comes first. Neither: the 30 s smoke run.
[ -z "$runs" ] && [ -z "$secs" ] && secs=30
limit="${runs:+-runs=$runs} ${secs:+-max_total_time=$secs}"

if [ $list -eq 1 ]; then
  for h in "${harnesses[@]}"; do echo "${h%%|*}"; done
  exit 0
fi
known=" $(for h in "${harnesses[@]}"; do printf '%s ' "${h%%|*}"; done)"
for n in "${only[@]}"; do
  [[ $known == *" $n "* ]] || { echo "fuzz: no harness named $n (see --list)" >&2; exit 2; }
done
command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (apt-get install clang)" >&2; exit 77; }

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-std=c++17 -O1 -g $SAN -I. -I.fuzz/gen -isystem /usr/include/torch/csrc/api/include -DPCRE2_CODE_UNIT_WIDTH=8"
# AddressSanitizer refuses dlopen with RTLD_DEEPBIND; no harness that loads
# the sentencepiece shim loads libtorch, so the shim needs no isolation here.
CFLAGS="$CFLAGS -DPEFT_SPM_SHIM_DLOPEN_FLAGS=(RTLD_NOW|RTLD_LOCAL)"
mkdir -p .fuzz/obj .fuzz/gen

# The .proto files, compiled when newer than their generated code.
for p in $(git ls-files '*.proto'); do
  if [ ! -f ".fuzz/gen/${p%.proto}.pb.cc" ] || [ "$p" -nt ".fuzz/gen/${p%.proto}.pb.cc" ]; then
    protoc -I. --cpp_out=.fuzz/gen "$p" || { echo "fuzz: protoc failed on $p" >&2; exit 1; }
  fi
done

# Our .cc files reachable from the given files through #include "x/y.h"
# (x/y.cc, and x/y_ref.cc: kernels/ defines a header's reference versions
# there). The sentencepiece shim is never linked: it is a dlopen'ed library.
closure() {
  local -A seen=()
  local queue=("$@") f h c
  while [ ${#queue[@]} -gt 0 ]; do
    f=${queue[0]}
    queue=("${queue[@]:1}")
    [ -n "${seen[$f]:-}" ] && continue
    seen[$f]=1
    for h in $(sed -n 's/^#include "\([^"]*\)\.h".*/\1/p' "$f"); do
      for c in "$h.cc" "${h}_ref.cc" ".fuzz/gen/$h.cc" "$h.h" ".fuzz/gen/$h.h"; do
        [ -f "$c" ] && [ -z "${seen[$c]:-}" ] && queue+=("$c")
      done
    done
  done
  printf '%s\n' "${!seen[@]}" | grep '\.cc$' | grep -v '^third_party/sentencepiece_shim/spm_shim\.cc$' | sort
}

# .fuzz/obj/<source>.o, stale when missing or older than a dependency.
object_of() { echo ".fuzz/obj/${1#.fuzz/}.o"; }
stale() {
  local o d dep
  o=$(object_of "$1")
  d=${o%.o}.d
  [ -f "$o" ] && [ -f "$d" ] || return 0
  for dep in $(sed -e 's/\\$//' -e 's/^[^:]*://' "$d"); do
    [ "$dep" -nt "$o" ] && return 0
  done
  return 1
}
# kernels/ reads no input, and clang 14 cannot compile its target_clones
# templates: g++ builds it, uninstrumented (as LibTorch is).
compile_one() {
  local o cc=$CXX flags="$CFLAGS -fsanitize=fuzzer-no-link"
  o=$(object_of "$1")
  mkdir -p "$(dirname "$o")"
  [[ $1 == kernels/* ]] && cc=g++ flags="-std=c++17 -O2 -g -I. -isystem /usr/include/torch/csrc/api/include"
  # shellcheck disable=SC2086
  $cc $flags -MMD -MF "${o%.o}.d" -c "$1" -o "$o" 2>"${o%.o}.log" ||
    { echo "fuzz: cannot compile $1 (see ${o%.o}.log)" >&2; return 1; }
}
export -f object_of compile_one
export CXX CFLAGS

# The sentencepiece shim as the harness loads it: a shared library over
# Debian's libsentencepiece, instrumented like the rest of our code.
build_spm_shim() {
  local so=.fuzz/spm_shim/libpeft_spm_shim.so src=third_party/sentencepiece_shim/spm_shim.cc
  mkdir -p .fuzz/spm_shim
  if [ ! -f "$so" ] || [ "$src" -nt "$so" ] || [ third_party/sentencepiece_shim/spm_shim.h -nt "$so" ]; then
    # shellcheck disable=SC2086
    $CXX $CFLAGS -fsanitize=fuzzer-no-link -fPIC -shared "$src" -o "$so" -lsentencepiece \
      2>.fuzz/spm_shim/build.log || return 1
  fi
  PEFT_SPM_SHIM=$(pwd)/$so
  export PEFT_SPM_SHIM
}

rc=0
for h in "${harnesses[@]}"; do
  IFS='|' read -r name libs seeds max_len <<<"$h"
  if [ ${#only[@]} -gt 0 ] && [[ ! " ${only[*]} " =~ " $name " ]]; then continue; fi
  dir=.fuzz/$name
  mkdir -p "$dir/corpus"
  mapfile -t srcs < <(closure "fuzz/${name}_fuzz.cc")
  todo=()
  for s in "${srcs[@]}"; do stale "$s" && todo+=("$s"); done
  if [ ${#todo[@]} -gt 0 ] && ! printf '%s\n' "${todo[@]}" | xargs -P "$JOBS" -I{} bash -c 'compile_one "$1"' _ {}; then
    echo "fuzz: $name: build failed"
    rc=1
    continue
  fi
  objs=()
  for s in "${srcs[@]}"; do objs+=("$(object_of "$s")"); done
  # shellcheck disable=SC2086
  if ! $CXX $CFLAGS -fsanitize=fuzzer "${objs[@]}" -o "$dir/fuzzer" $libs 2>"$dir/build.log"; then
    echo "fuzz: $name: link failed (see $dir/build.log)"
    rc=1
    continue
  fi
  if [ "$name" = spm_shim ] && ! build_spm_shim; then
    echo "fuzz: $name: the shim library failed to build (see .fuzz/spm_shim/build.log)"
    rc=1
    continue
  fi
  [ $build_only -eq 1 ] && { echo "fuzz: $name: built ($dir/fuzzer)"; continue; }
  # shellcheck disable=SC2086
  for s in $seeds; do [ -f "$s" ] && cp -f "$s" "$dir/corpus/seed-$(basename "$(dirname "$s")")-$(basename "$s")"; done
  start=$(date +%s)
  # Seeds longer than max_len are read truncated; mutations stay below it.
  (cd "$dir" && PEFT_SHARED_DIR=$(cd "$SHARED" 2>/dev/null && pwd) ./fuzzer corpus $limit -max_len="$max_len" \
    -rss_limit_mb=4096 -timeout=60 -print_final_stats=1 >run.log 2>&1)
  status=$?
  took=$(($(date +%s) - start))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$dir/run.log" | grep -o '[0-9]*$')
  entries=$(ls "$dir/corpus" | wc -l)
  rate=$(((${execs:-0}) / (took > 0 ? took : 1)))
  if [ $status -eq 0 ]; then
    echo "fuzz: $name: ${execs:-?} executions in $took s ($rate/s), $entries corpus entries, ok"
  else
    echo "fuzz: $name: FINDING after ${execs:-?} executions in $took s (see $dir/run.log and $dir/crash-*)"
    rc=1
  fi
done
exit $rc
