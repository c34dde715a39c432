#!/usr/bin/env bash
# Compiles, syntax only, every source with CUDA-only code (`#if defined(PEFT_WITH_CUDA)`
# or USE_C10D_NCCL) the way a CUDA build sees it: PEFT_WITH_CUDA, USE_C10D_NCCL
# and USE_C10D_GLOO defined, against this machine's LibTorch headers and the
# CUDA toolkit's cuda_runtime.h and nccl.h. A CPU-only machine builds none of
# that code, so without this check it could break unnoticed until a GPU is lent.
#
# It is not the GPU build (LibTorch 2.x headers differ: scripts/gpu_check.sh
# is that); it catches the code that no CPU build compiles.
#
#   scripts/cuda_syntax_check.sh      exit 0 passed, 1 failed, 77 skipped (no CUDA headers)
#
# Environment: PEFT_CUDA_INCLUDE (default /usr/local/cuda/include), CXX (g++).
# Run by scripts/test.sh after `bazel test` (it needs the generated *.pb.h in bazel-bin).
set -uo pipefail
cd "$(dirname "$0")/.."
CUDA_INC=${PEFT_CUDA_INCLUDE:-/usr/local/cuda/include}
CXX=${CXX:-g++}
if [ ! -f "$CUDA_INC/cuda_runtime.h" ] || [ ! -f "$CUDA_INC/nccl.h" ]; then
  echo "cuda-syntax: skipped: no cuda_runtime.h and nccl.h in $CUDA_INC (set PEFT_CUDA_INCLUDE)"
  exit 77
fi
if [ ! -f bazel-bin/trainers/proto/recipe.pb.h ] || [ ! -f bazel-bin/peft/proto/adapter_config.pb.h ]; then
  bazel build //trainers/proto:recipe_cc_proto //peft/proto:adapter_config_cc_proto >/dev/null 2>&1 || {
    echo "cuda-syntax: FAILED: cannot generate the protobuf headers"; exit 1; }
fi
# Debian's LibTorch ships c10/cuda headers without the CMake-generated macro file.
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
mkdir -p "$stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$stub/c10/cuda/impl/cuda_cmake_macros.h"
mapfile -t files < <(grep -rlE 'PEFT_WITH_CUDA|USE_C10D_NCCL' --include='*.cc' peft trainers models data kernels examples tests | sort)
if [ "${#files[@]}" -eq 0 ]; then echo "cuda-syntax: FAILED: no CUDA-only sources found"; exit 1; fi
flags=(-std=c++17 -fsyntax-only -DPEFT_WITH_CUDA -DUSE_C10D_NCCL -DUSE_C10D_GLOO -I. -Ibazel-bin -I"$stub"
       -I/usr/include/torch/csrc/api/include -I"$CUDA_INC")
logs="$stub/logs"; mkdir -p "$logs"
printf '%s\n' "${files[@]}" | xargs -P "$(nproc)" -I{} sh -c \
  '"$0" "$@" {} > "'"$logs"'/$(echo {} | tr / _).log" 2>&1 || echo {} >> "'"$logs"'/failed"' "$CXX" "${flags[@]}"
if [ -f "$logs/failed" ]; then
  while read -r f; do
    echo "cuda-syntax: $f does not compile with the CUDA defines:"
    grep -E 'error' "$logs/$(echo "$f" | tr / _).log" | head -5
  done < "$logs/failed"
  echo "cuda-syntax: FAILED"
  exit 1
fi
echo "cuda-syntax: passed (${#files[@]} files: ${files[*]})"
