#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, then `bazel test //...`.
# Tests that need ../shared/assets skip with a printed reason when it is absent.
# Ends with one summary line: "tests: N passed, N failed, N skipped".
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

# CPU tests; --config=cuda (with PEFT_LIBTORCH pointing at a CUDA LibTorch) adds the gpu-tagged ones.
bazel test //... "$@"
rc=$?

# Sum the GoogleTest cases of the test targets that ran (their logs).
passed=0; failed=0; skipped=0
targets=$(bazel query 'tests(//...) except attr(tags, "manual", //...)' 2>/dev/null)
for t in $targets; do
  log="bazel-testlogs/$(echo "${t#//}" | tr ':' '/')/test.log"
  [ -f "$log" ] || continue
  p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}')
  f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}')
  s=$(grep -E '^\[  SKIPPED \] [0-9]+ test' "$log" | tail -1 | awk '{print $4}')
  if [ -z "$p$f" ] && ! grep -q '^\[==========\]' "$log"; then f=1; fi  # crashed before gtest's summary
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
done
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
if [ $rc -ne 0 ] && [ $failed -eq 0 ]; then failed=1; fi
exit $rc
