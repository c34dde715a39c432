#!/usr/bin/env bash
# One prepared pass on a GPU machine that has pip PyTorch (CUDA) but no Bazel
# and no package registry (the device machine lent to some sessions):
#   1. unpack the Debian dependencies carried in .devbuild/debs
#      (`scripts/build_nobazel.sh --fetch-debs` fetches them on Debian);
#   2. build everything with scripts/build_nobazel.sh against the torch
#      package's LibTorch (CUDA);
#   3. run the gpu-tagged test (trainers/cuda_train_test), the quickstart
#      with its fine-tuning on CUDA through NCCL (one rank), and
#      `peft bench --suite=perf --device=cuda` beside eager PyTorch on the GPU;
#   4. run every CPU test binary against this LibTorch (a 2.x API check).
# Output goes to $OUT (default /tmp/gpu_check): summary.txt (read this),
# build.log, tests.log, perf_bench.md, perf_bench.json: at most 8 files.
#
#   OUT=/tmp/x bash scripts/gpu_check.sh [--no-cpu-tests] [--no-perf] [--no-quickstart]
# Expected time on the 16-core H200 machine (not yet measured): build 3-4 min,
# quickstart about 1.5 min (its base pretrains on the CPU), perf 1-2 min, CPU
# tests 1-2 min. Skip parts with the flags when the device time left is short;
# each step's start time is stamped in summary.txt.
# From this machine, with the device tool (carry the debs):
#   run(command="bash scripts/gpu_check.sh", carry=[".devbuild/debs"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
CPU_TESTS=1; PERF=1; QUICKSTART=1
for a in "$@"; do
  case "$a" in
    --no-cpu-tests) CPU_TESTS=0 ;;
    --no-perf) PERF=0 ;;
    --no-quickstart) QUICKSTART=0 ;;
    *) echo "gpu_check: unknown flag $a" >&2; exit 2 ;;
  esac
done
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
S=$OUT/summary.txt

{
  stamp "environment"
  nvidia-smi -L 2>&1
  grep PRETTY /etc/os-release
  g++ --version | head -1
  python3 -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11 abi", torch._C._GLIBCXX_USE_CXX11_ABI, os.path.dirname(torch.__file__))'
  TORCH=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))')
  echo "gloo headers in the wheel: $(ls -d "$TORCH/include/gloo" 2>/dev/null || echo none)"
  echo "cores: $(nproc)"
} >"$S" 2>&1
cat "$S"

DEPS=/tmp/peft_deps
mkdir -p "$DEPS"
ls .devbuild/debs/*.deb >/dev/null 2>&1 || { echo "gpu_check: no .devbuild/debs (carry them)" | tee -a "$S"; exit 1; }
for f in .devbuild/debs/*.deb; do dpkg -x "$f" "$DEPS"; done
B=/tmp/peft_nb
stamp "build" | tee -a "$S"
PEFT_DEPS=$DEPS/usr bash scripts/build_nobazel.sh "$B" >"$OUT/build.log" 2>&1
brc=$?
{ stamp "build rc=$brc"; grep -E 'error:|FAILED:' "$OUT/build.log" | head -40; } | tee -a "$S"

export TEST_SRCDIR=$B/runfiles PEFT_THREADS=2
T=/tmp/peft_tests
mkdir -p "$T"
# run_one NAME TIMEOUT: one line of verdict; the log goes to $T/NAME.log.
run_one() {
  local name=$1 limit=$2 bin=$B/tests/$1 log=$T/${1//\//_}.log s rc
  [ -x "$bin" ] || { echo "$name: NOT BUILT"; return 0; }
  s=$(date +%s)
  TEST_TMPDIR=$(mktemp -d) timeout "$limit" "$bin" >"$log" 2>&1
  rc=$?
  echo "$name: rc=$rc $(( $(date +%s) - s )) s $(grep -E '^\[  (PASSED|FAILED|SKIPPED) \]' "$log" | tr -s ' ' | tr '\n' ' ')"
  return 0
}
export -f run_one
export B T

{
  stamp "gpu tests"
  run_one trainers/cuda_train_test 300
  grep -E 'Failure|FAILED|Skipped|Expected|Which is' "$T/trainers_cuda_train_test.log" | head -20
} 2>&1 | tee -a "$S"

if [ $QUICKSTART -eq 1 ] && [ -x "$B/bin/quickstart" ]; then
  {
    stamp "quickstart, fine-tuning on CUDA through NCCL (one rank)"
    RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 \
      timeout 300 "$B/bin/quickstart" --work_dir=/tmp/peft_qs --set=training.device=CUDA \
      --set=distributed.backend=NCCL >"$T/quickstart.log" 2>&1
    echo "quickstart rc=$?"
    grep -A14 '^quickstart summary' "$T/quickstart.log" || tail -20 "$T/quickstart.log"
  } 2>&1 | tee -a "$S"
fi

if [ $PERF -eq 1 ] && [ -x "$B/bin/peft" ]; then
  {
    stamp "peft bench --suite=perf --device=cuda (issue 4's target model; eager PyTorch beside it)"
    timeout 400 "$B/bin/peft" bench --suite=perf --device=cuda --threads=4 --out_dir=/tmp/peft_perf 2>&1 | tail -14
    cp /tmp/peft_perf/bench.md "$OUT/perf_bench.md" 2>/dev/null
    cp /tmp/peft_perf/bench.json "$OUT/perf_bench.json" 2>/dev/null
  } 2>&1 | tee -a "$S"
fi

if [ $CPU_TESTS -eq 1 ]; then
  {
    stamp "CPU test binaries against this LibTorch (4 at a time)"
    (cd "$B/tests" && ls */*_test) | grep -v '^trainers/cuda_train_test$' \
      | xargs -P 4 -I{} bash -c 'run_one {} 300' | sort
    stamp "done"
  } 2>&1 | tee -a "$S"
fi
# Every test's log (the gpu test's too), whichever parts ran.
for f in "$T"/*.log; do echo "=== $f"; cat "$f"; done >"$OUT/tests.log"
