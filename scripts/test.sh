#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, then `bazel test //...`.
# Tests that need ../shared/assets skip with a printed reason when it is absent.
# Then scripts/cuda_syntax_check.sh (the CUDA-only code, syntax only; one test)
# and scripts/format.sh --check (sources match .clang-format; one test).
# Ends with one summary line: "tests: N passed, N failed, N skipped" (GoogleTest
# cases; a test target that failed to build or crashed counts as failed).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/install_deps.sh || exit 1

if [ -z "${PEFT_SHARED_DIR:-}" ] && [ -d "$ROOT/../shared/assets" ]; then
  export PEFT_SHARED_DIR="$(cd "$ROOT/../shared" && pwd)"
fi
if [ -n "${PEFT_SHARED_DIR:-}" ]; then
  echo "test: using shared assets in $PEFT_SHARED_DIR"
else
  echo "test: ../shared/assets not found; tests that need it will skip"
fi

# CPU tests; --config=cuda (with PEFT_LIBTORCH pointing at a CUDA LibTorch)
# adds the gpu-tagged ones. --keep_going: one broken target does not hide
# the results of the others.
out=$(mktemp)
bazel test --keep_going //... "$@" 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}

# Per test target from Bazel's summary: PASSED targets contribute their
# GoogleTest counts; anything else (FAILED, NO STATUS, FAILED TO BUILD,
# TIMEOUT) counts its failed cases, at least one.
passed=0; failed=0; skipped=0
while read -r target status; do
  log="bazel-testlogs/$(echo "${target#//}" | tr ':' '/')/test.log"
  p=0; f=0; s=0
  if [ -f "$log" ]; then
    p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}'); p=${p:-0}
    f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}'); f=${f:-0}
    s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}'); s=${s:-0}
  fi
  if [ "$status" = "PASSED" ]; then
    passed=$((passed + p)); skipped=$((skipped + s))
  else
    passed=$((passed + p)); skipped=$((skipped + s))
    [ "$f" -gt 0 ] || f=1
    failed=$((failed + f))
    echo "test: $target $status"
  fi
done < <(grep -E '^//[^ ]+ +(\(cached\) )?(PASSED|FAILED|NO STATUS|FAILED TO BUILD|TIMEOUT|FLAKY)' "$out" \
           | sed -E 's/\(cached\) //' | awk '{t=$1; $1=""; sub(/^ +/, ""); sub(/ in [0-9.]+s$/, ""); print t, $0}')
rm -f "$out"
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi

# The CUDA-only code that no CPU build compiles, syntax-checked with the CUDA
# defines against the installed CUDA toolkit headers (one more test).
bash scripts/cuda_syntax_check.sh
case $? in
  0) passed=$((passed + 1)) ;;
  77) skipped=$((skipped + 1)) ;;
  *) failed=$((failed + 1)); echo "test: scripts/cuda_syntax_check.sh FAILED"; [ "$rc" -ne 0 ] || rc=1 ;;
esac
# Every C++ source matches the checked-in .clang-format (one more test).
bash scripts/format.sh --check
if [ $? -eq 0 ]; then passed=$((passed + 1)); else
  failed=$((failed + 1)); echo "test: scripts/format.sh --check FAILED"; [ "$rc" -ne 0 ] || rc=1
fi
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit $rc
