#!/usr/bin/env bash
# Builds peft-cpp from the same sources without Bazel: g++ (and ninja) against
# any LibTorch, e.g. the CUDA LibTorch inside a pip PyTorch on a GPU machine
# that has no Java (so no Bazel). Bazel stays the build of record; this script
# mirrors it by globbing the source folders, so it needs no upkeep when files
# are added.
#
#   scripts/build_nobazel.sh [OUT_DIR] [ninja targets...]
#
# Environment:
#   PEFT_LIBTORCH  LibTorch root with include/ and lib/ (default: the torch
#                  package of `python3`, else /usr for Debian's libtorch-dev)
#   PEFT_DEPS      prefix holding protobuf, abseil, gtest, nlohmann-json and
#                  pcre2 (include/, lib/ or lib/x86_64-linux-gnu/, bin/protoc);
#                  default /usr. Debian packages unpacked with `dpkg -x` work.
#   PEFT_JOBS      parallel compile jobs (default: nproc)
#   CXX            the C++ compiler (default g++)
#
# Outputs in OUT_DIR (default .devbuild/out): bin/peft, tests/<folder>/<name> (each
# GoogleTest binary and benchmark under tests/), and runfiles/__main__/...
# laid out as Bazel's runfiles so `TEST_SRCDIR=OUT_DIR/runfiles` lets the
# CLI tests find bin/peft. CUDA LibTorch (lib/libtorch_cuda.so present):
# PEFT_WITH_CUDA and USE_C10D_NCCL are defined and the CUDA libraries linked.
#
#   scripts/build_nobazel.sh --fetch-debs
# downloads (on Debian bookworm) the .deb files of those dependencies into
# .devbuild/debs, for a machine that has no package registry: unpack them
# there with `dpkg -x FILE PREFIX` and set PEFT_DEPS=PREFIX/usr
# (scripts/gpu_check.sh does this).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ "${1:-}" = "--fetch-debs" ]; then
  mkdir -p .devbuild/debs
  cd .devbuild/debs
  apt-get download libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32 libabsl-dev libabsl20220623 \
    libgtest-dev libgmock-dev nlohmann-json3-dev libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 \
    libpcre2-posix3 libgloo-dev
  ls -l
  exit 0
fi
OUT=${1:-.devbuild/out}
shift || true
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

die() { echo "build_nobazel: $*" >&2; exit 1; }

TORCH=${PEFT_LIBTORCH:-}
if [ -z "$TORCH" ]; then
  TORCH=$(python3 -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null || true)
  [ -n "$TORCH" ] || TORCH=/usr
fi
DEPS=${PEFT_DEPS:-/usr}
CXX=${CXX:-g++}
JOBS=${PEFT_JOBS:-$(nproc)}
command -v ninja >/dev/null || die "ninja not found (Debian: apt-get install ninja-build)"

# LibTorch include and library folders.
if [ "$TORCH" = /usr ]; then
  TORCH_INC="-isystem /usr/include/torch/csrc/api/include"
  TORCH_LIB=/usr/lib/x86_64-linux-gnu
else
  [ -d "$TORCH/include/torch" ] || die "PEFT_LIBTORCH=$TORCH has no include/torch"
  TORCH_INC="-isystem $TORCH/include -isystem $TORCH/include/torch/csrc/api/include"
  TORCH_LIB=$TORCH/lib
fi
[ -e "$TORCH_LIB/libtorch_cpu.so" ] || die "no libtorch_cpu.so in $TORCH_LIB"

# Dependency folders (an unpacked Debian tree has lib/x86_64-linux-gnu).
DEPS_LIBS=""
for d in "$DEPS/lib/x86_64-linux-gnu" "$DEPS/lib"; do
  [ -d "$d" ] && DEPS_LIBS="$DEPS_LIBS -L$d -Wl,-rpath,$d"
done
DEPS_INC=""
[ "$DEPS" != /usr ] && DEPS_INC="-isystem $DEPS/include"
PROTOC=${PROTOC:-$DEPS/bin/protoc}
[ -x "$PROTOC" ] || PROTOC=$(command -v protoc || true)
[ -n "$PROTOC" ] || die "protoc not found (set PROTOC or PEFT_DEPS)"

# The ABI and the C++ standard LibTorch wants.
ABI=1
if [ "$TORCH" != /usr ]; then
  ABI=$(python3 -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))' 2>/dev/null || echo 1)
fi
DEFS="-D_GLIBCXX_USE_CXX11_ABI=$ABI -DPCRE2_CODE_UNIT_WIDTH=8 -DUSE_C10D_GLOO"
LIBS="-ltorch -ltorch_cpu -lc10"
CUDA=0
if [ -e "$TORCH_LIB/libtorch_cuda.so" ]; then
  CUDA=1
  DEFS="$DEFS -DPEFT_WITH_CUDA=1 -DUSE_C10D_NCCL"
  LIBS="-Wl,--no-as-needed -ltorch_cuda -lc10_cuda -Wl,--as-needed $LIBS"
  # c10/cuda and ProcessGroupNCCL.hpp include the CUDA runtime, cuBLAS,
  # cuSOLVER and NCCL headers: a pip wheel keeps them in the nvidia packages
  # beside torch, a LibTorch zip expects the toolkit. Their lib folders let
  # the linker resolve libtorch_cuda's own dependencies.
  NV=$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)
  for d in "$NV"/*/include "$NV"/*/*/include /usr/local/cuda/include; do
    [ -d "$d" ] && TORCH_INC="$TORCH_INC -isystem $d"
  done
  for d in "$NV"/*/lib "$NV"/*/*/lib /usr/local/cuda/lib64; do
    [ -d "$d" ] && TORCH_LINK_EXTRA="${TORCH_LINK_EXTRA:-} -Wl,-rpath-link,$d"
  done
fi
STD=c++17
probe=$(mktemp -d)
{
  echo '#include <torch/torch.h>'
  [ $CUDA -eq 1 ] && echo '#include <c10/cuda/CUDAStream.h>'
  echo 'int main() { return at::ones({1}).numel() == 1 ? 0 : 1; }'
} > "$probe/p.cc"
if ! $CXX -std=c++17 $DEFS $TORCH_INC -fsyntax-only "$probe/p.cc" 2>"$probe/err"; then
  if $CXX -std=c++20 $DEFS $TORCH_INC -fsyntax-only "$probe/p.cc" 2>/dev/null; then
    STD=c++20
  else
    cat "$probe/err" >&2; die "cannot compile against LibTorch at $TORCH"
  fi
fi
rm -rf "$probe"
echo "build_nobazel: LibTorch $TORCH (cuda=$CUDA, abi=$ABI, -std=$STD), deps $DEPS, protoc $PROTOC, $JOBS jobs"

# Generated sources: protobuf and the quickstart's compiled-in recipes.
GEN=$OUT/gen
mkdir -p "$GEN/examples"
for p in peft/proto/adapter_config.proto trainers/proto/recipe.proto; do
  LD_LIBRARY_PATH="$DEPS/lib/x86_64-linux-gnu:$DEPS/lib:${LD_LIBRARY_PATH:-}" "$PROTOC" --proto_path=. --cpp_out="$GEN" "$p"
done
{
  echo 'constexpr char kBaseRecipe[] = R"recipe('; cat examples/recipes/quickstart_base.textproto
  echo ')recipe";'; echo 'constexpr char kLoraRecipe[] = R"recipe('; cat examples/recipes/quickstart_lora.textproto
  echo ')recipe";'
} > "$GEN/examples/quickstart_recipes.inc.new"
cmp -s "$GEN/examples/quickstart_recipes.inc.new" "$GEN/examples/quickstart_recipes.inc" 2>/dev/null \
  && rm "$GEN/examples/quickstart_recipes.inc.new" \
  || mv "$GEN/examples/quickstart_recipes.inc.new" "$GEN/examples/quickstart_recipes.inc"

# Sources. The library: every .cc under these folders except programs
# (files defining main), tests (*_test.cc; the helpers under tests/ are in)
# and the sentencepiece shim (a dlopen'ed .so that
# links Debian's sentencepiece; without it sentencepiece models are refused
# with a message, everything else works).
has_main() { grep -qE '^int main\(' "$1"; }
LIB_SRCS=()
while IFS= read -r f; do
  has_main "$f" && continue
  LIB_SRCS+=("$f")
done < <(find data models peft kernels trainers examples tests third_party/sentencepiece_shim \
           -name '*.cc' ! -name 'spm_shim.cc' ! -name '*_test.cc' | sort)
LIB_SRCS+=("$GEN/peft/proto/adapter_config.pb.cc" "$GEN/trainers/proto/recipe.pb.cc")
PROGRAMS=()  # name:source
for f in examples/*.cc; do has_main "$f" && PROGRAMS+=("$(basename "$f" .cc):$f"); done
TESTS=()
while IFS= read -r f; do TESTS+=("$f"); done < <(find tests -name '*_test.cc' -o -name '*_bench.cc' | sort)

ABSL="-labsl_statusor -labsl_status -labsl_str_format_internal -labsl_strings -labsl_strings_internal -labsl_cord \
-labsl_cord_internal -labsl_cordz_info -labsl_cordz_functions -labsl_cordz_handle -labsl_raw_logging_internal \
-labsl_int128 -labsl_throw_delegate -labsl_base -labsl_spinlock_wait"
KERNEL_COPTS="-O3 -fno-math-errno -fassociative-math -fno-signed-zeros -fno-trapping-math"

# Debian's sentencepiece (libsentencepiece-dev) for the dlopen'ed shim;
# without it, sentencepiece tokenizers are refused with a message.
SPM_LIB=""
for d in "$DEPS/lib/x86_64-linux-gnu" "$DEPS/lib" /usr/lib/x86_64-linux-gnu; do
  if [ -e "$d/libsentencepiece.so" ]; then SPM_LIB=$d; break; fi
done

# build.ninja
N=$OUT/build.ninja
{
  echo "cxx = $CXX"
  echo "cflags = -std=$STD -O2 -fPIC -Wno-unused-parameter -Wno-sign-compare -Wno-deprecated-declarations $DEFS -I$ROOT -I$GEN $TORCH_INC $DEPS_INC"
  echo "ldflags = -L$TORCH_LIB -Wl,-rpath,$TORCH_LIB ${TORCH_LINK_EXTRA:-} $DEPS_LIBS"
  echo "libs = $LIBS -lprotobuf $ABSL -lpcre2-8 -ldl -lpthread"
  echo 'rule cc'
  echo '  command = $cxx $cflags $extra -MMD -MF $out.d -c $in -o $out'
  echo '  depfile = $out.d'
  echo '  deps = gcc'
  echo '  description = CC $in'
  echo 'rule ar'
  echo '  command = rm -f $out && ar crs $out $in'
  echo 'rule link'
  echo '  command = $cxx -o $out $in $ldflags -Wl,--start-group $out_libs -Wl,--end-group $libs'
  echo '  description = LINK $out'
  objs=()
  for s in "${LIB_SRCS[@]}"; do
    o="obj/${s#$OUT/}.o"
    extra=""
    # kernels/BUILD's ROW_LOOP_COPTS: the libraries with row_math.h loops
    # (a *_ref.cc shares its kernel's library).
    case "$s" in kernels/*.cc) grep -q 'kernels/row_math.h' "${s%_ref.cc}" "${s%_ref.cc}.cc" 2>/dev/null \
      && extra="$KERNEL_COPTS" ;; esac
    src=$s; [ "${s:0:1}" = / ] || src=$ROOT/$s
    echo "build $o: cc $src"
    [ -n "$extra" ] && echo "  extra = $extra"
    objs+=("$o")
  done
  echo "build lib/libpeft.a: ar ${objs[*]}"
  # The CLI: examples/cli/main.cc (kept out of the library, as every file
  # that defines main) over the library.
  echo "build obj/peft_main.o: cc $ROOT/examples/cli/main.cc"
  echo "build bin/peft_cli: link obj/peft_main.o lib/libpeft.a"
  echo "  out_libs = lib/libpeft.a"
  all=(bin/peft_cli)
  for p in "${PROGRAMS[@]}"; do
    name=${p%%:*}; src=${p#*:}
    echo "build obj/prog/$name.o: cc $ROOT/$src"
    echo "build bin/$name: link obj/prog/$name.o lib/libpeft.a"
    echo "  out_libs = lib/libpeft.a"
    all+=("bin/$name")
  done
  for t in "${TESTS[@]}"; do
    name=${t#tests/}; name=${name%.cc}
    main_lib="-lgtest_main"
    has_main "$t" && main_lib=""
    echo "build obj/$t.o: cc $ROOT/$t"
    echo "build tests/$name: link obj/$t.o lib/libpeft.a"
    echo "  out_libs = lib/libpeft.a -lgmock -lgtest $main_lib"
    all+=("tests/$name")
  done
  # The sentencepiece shim, when libsentencepiece is there to link.
  if [ -n "$SPM_LIB" ]; then
    echo "build lib/libpeft_spm_shim.so: link obj/spm_shim.o"
    echo "  out_libs = -shared -L$SPM_LIB -Wl,-rpath,$SPM_LIB -lsentencepiece"
    echo "build obj/spm_shim.o: cc $ROOT/third_party/sentencepiece_shim/spm_shim.cc"
    all+=(lib/libpeft_spm_shim.so)
  fi
  echo "build all: phony ${all[*]}"
  echo "default all"
} > "$N"

rc=0
(cd "$OUT" && ninja -k 0 -j "$JOBS" "$@") || rc=$?
# A Bazel-like runfiles tree: the source folders (test data), the programs
# under examples/ and the sentencepiece shim where the loader looks.
R=$OUT/runfiles/__main__
rm -rf "$OUT/runfiles"
mkdir -p "$R/examples" "$R/third_party/sentencepiece_shim"
for d in "$ROOT"/*/; do
  d=$(basename "$d")
  case "$d" in examples|third_party|bazel-*|runs) ;; *) ln -s "$ROOT/$d" "$R/$d" ;; esac
done
for f in "$ROOT"/examples/*; do ln -s "$f" "$R/examples/$(basename "$f")"; done
[ -e "$OUT/bin/peft_cli" ] && ln -sf peft_cli "$OUT/bin/peft"
for b in "$OUT"/bin/*; do ln -sf "$b" "$R/examples/$(basename "$b")"; done
if [ -e "$OUT/lib/libpeft_spm_shim.so" ]; then
  ln -sf "$OUT/lib/libpeft_spm_shim.so" "$R/third_party/sentencepiece_shim/libpeft_spm_shim.so"
  ln -sf "$OUT/lib/libpeft_spm_shim.so" "$OUT/bin/libpeft_spm_shim.so"
fi
exit $rc
