#!/usr/bin/env bash
# Installs the Debian packages peft-cpp builds and runs with. Idempotent: only
# missing packages are installed, and apt is not touched when none is missing.
# Needs root (or sudo) when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential
  libtorch-dev            # LibTorch 1.13.1 (CPU)
  libopenblas0-openmp     # fast BLAS for libtorch (reference BLAS is 30-60x slower)
  bazel-bootstrap bazel-platforms bazel-skylib bazel-rules-java bazel-rules-proto
  libprotobuf-dev protobuf-compiler
  libabsl-dev
  libgtest-dev
  libsentencepiece-dev    # loaded through a dlopen shim (see third_party/sentencepiece_shim)
  nlohmann-json3-dev
  libpcre2-dev            # GPT-2 pre-tokenizer regex
  libicu-dev              # Unicode tables for tokenizer.json normalizers and pre-tokenizers
  libgloo-dev             # c10d Gloo backend headers
  clang-format            # scripts/format.sh (checked by scripts/test.sh)
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_deps: missing packages (${missing[*]}) and not root; install them with apt-get" >&2
    exit 1
  fi
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# libtorch links libblas.so.3 through Debian's alternatives: make sure the
# OpenMP OpenBLAS is the one selected.
if [ -e /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 ]; then
  $SUDO update-alternatives --set libblas.so.3-x86_64-linux-gnu \
    /usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3 >/dev/null 2>&1 || true
fi
