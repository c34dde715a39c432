"""Repository rule that wraps a LibTorch installation.

PEFT_LIBTORCH selects the root (default /usr, Debian's libtorch-dev). A root
other than /usr must hold include/ and lib/ as in the LibTorch zip or a pip
wheel's torch/ folder; when lib/ has libtorch_cuda.so the CUDA libraries are
linked too and `@libtorch//:cuda` reports it.
"""

def _libtorch_impl(ctx):
    root = ctx.os.environ.get("PEFT_LIBTORCH", "/usr").rstrip("/") or "/usr"
    if root == "/usr":
        # Never put /usr/include on -isystem: it breaks libstdc++'s #include_next.
        api = "/usr/include/torch/csrc/api/include"
        if not ctx.path(api).exists:
            fail("LibTorch headers not found at %s: install libtorch-dev or set PEFT_LIBTORCH" % api)
        ctx.symlink(api, "api_include")
        includes = ["api_include"]
        libdir = "/usr/lib/x86_64-linux-gnu"
    else:
        if not ctx.path(root + "/include/torch").exists:
            fail("PEFT_LIBTORCH=%s has no include/torch" % root)
        ctx.symlink(root + "/include", "include")
        includes = ["include", "include/torch/csrc/api/include"]
        libdir = root + "/lib"
    has_cuda = ctx.path(libdir + "/libtorch_cuda.so").exists
    libs = ["-ltorch", "-ltorch_cpu", "-lc10"]
    extra_link = []
    if has_cuda:
        libs = ["-Wl,--no-as-needed", "-ltorch_cuda", "-lc10_cuda", "-Wl,--as-needed"] + libs

        # c10/cuda and ProcessGroupNCCL.hpp include the CUDA runtime, cuBLAS,
        # cuSOLVER and NCCL headers: a pip wheel keeps them in the nvidia
        # packages beside torch/, a LibTorch zip expects the CUDA toolkit.
        found = ctx.execute(["sh", "-c", "ls -d '%s'/../nvidia/*/include '%s'/../nvidia/*/*/include " % (root, root) +
                                          "'%s'/../nvidia/*/lib '%s'/../nvidia/*/*/lib 2>/dev/null; true" % (root, root)])
        n = 0
        for d in found.stdout.splitlines():
            if d.endswith("/include"):
                ctx.symlink(d, "cuda_include_%d" % n)
                includes.append("cuda_include_%d" % n)
                n += 1
            elif d:
                extra_link.append("-Wl,-rpath-link," + d)
        if ctx.path("/usr/local/cuda/include").exists:
            ctx.symlink("/usr/local/cuda/include", "cuda_include_toolkit")
            includes.append("cuda_include_toolkit")
    linkopts = ["-L" + libdir, "-Wl,-rpath," + libdir] + extra_link + libs + ["-lpthread"]
    ctx.file("BUILD", """
package(default_visibility = ["//visibility:public"])

cc_library(
    name = "torch",
    includes = {includes},
    linkopts = {linkopts},
    defines = {defines},
)

# True when the selected LibTorch was built with CUDA.
config_setting(
    name = "cuda",
    define_values = {{"peft_cuda": "1"}},
)
""".format(
        includes = repr(includes),
        linkopts = repr(linkopts),
        defines = repr(["PEFT_WITH_CUDA=1"] if has_cuda else []),
    ))
    ctx.file("info.bzl", "LIBTORCH_ROOT = %r\nHAS_CUDA = %r\n" % (root, has_cuda))

libtorch_repository = repository_rule(
    implementation = _libtorch_impl,
    environ = ["PEFT_LIBTORCH"],
    local = True,
)
