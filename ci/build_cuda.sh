#!/usr/bin/env bash
# Build pyllama with the CUDA backend into its own virtual environment, .venv-cuda, so the default
# CPU build (.venv / build/{wheel_tag}) is left alone, and check that the extension really holds
# the CUDA backend. It builds on a machine with no GPU and no NVIDIA driver; running it needs one.
#   - nvcc from $CUDA_HOME (default /usr/local/cuda), ONE architecture: $PYLLAMA_CUDA_ARCH (90);
#   - cuBLAS: the toolkit's if it has it, otherwise the PyPI wheel ($PYLLAMA_CUBLAS_SPEC) installed
#     into the venv, together with the matching CUDA runtime wheel, and the extension's install
#     RPATH points at them ($ORIGIN/../nvidia/cu13/lib);
#   - libcuda.so (the driver, which ggml-cuda links for its virtual memory pool): the toolkit's
#     lib64/stubs/libcuda.so if it has one, otherwise a link-time stub made here from cuda.h, like
#     NVIDIA's (every driver function returns CUDA_ERROR_STUB_LIBRARY; soname libcuda.so.1, so the
#     real driver is the one loaded at run time);
#   - installs pyllama NON-editable with CMAKE_ARGS="-DGGML_CUDA=on" and its own scikit-build
#     build dir, build/cuda-{wheel_tag}, with C, C++ and nvcc through ccache.
# Then checks the built module: CUDA backend symbols and device code (sm_$ARCH) inside, libcudart /
# libcublas / libcuda needed; imports it when a driver is there. Prints the build time.
#   nice -n 19 bash ci/build_cuda.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYLLAMA_VENV="${PYLLAMA_CUDA_VENV:-$ROOT/.venv-cuda}"
# shellcheck disable=SC1091
. "$(dirname "$0")/env.sh"      # apt_ensure, ccache, the venv (activated)
[ -e "$VENV/.gitignore" ] || echo '*' > "$VENV/.gitignore"   # keep the venv out of git status

CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
ARCH="${PYLLAMA_CUDA_ARCH:-90}"
CUBLAS_SPEC="${PYLLAMA_CUBLAS_SPEC:-nvidia-cublas==13.1.1.3}"
CUDART_SPEC="${PYLLAMA_CUDART_SPEC:-nvidia-cuda-runtime==13.0.96}"
[ -x "$NVCC" ] || { echo "ci: no nvcc at $NVCC (set CUDA_HOME)" >&2; exit 1; }
"$NVCC" --version | grep -E "release"
cuda_major=$("$NVCC" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')

"$VENV/bin/python" scripts/vendor_llama_cpp.py

defines=(
  "-Ccmake.define.CMAKE_CUDA_COMPILER=$NVCC"
  "-Ccmake.define.CUDAToolkit_ROOT=$CUDA_HOME"
  "-Ccmake.define.CMAKE_CUDA_ARCHITECTURES=$ARCH"
)
# Our CMakeLists.txt sets the C/C++ launchers and turns GGML_CCACHE off, so nvcc needs its own.
command -v ccache >/dev/null 2>&1 && defines+=("-Ccmake.define.CMAKE_CUDA_COMPILER_LAUNCHER=$(command -v ccache)")

# cuBLAS (ggml-cuda links CUDA::cublas and CUDA::cublasLt)
if [ -e "$CUDA_HOME/include/cublas_v2.h" ] && ls "$CUDA_HOME"/lib64/libcublas.so* >/dev/null 2>&1; then
  echo "ci: cuBLAS from the toolkit"
else
  echo "ci: the toolkit has no cuBLAS; installing $CUBLAS_SPEC $CUDART_SPEC into $VENV"
  "$VENV/bin/python" -m pip install -q "$CUBLAS_SPEC" "$CUDART_SPEC"
  NVLIB="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu$cuda_major"
  [ -e "$NVLIB/include/cublas_v2.h" ] && [ -e "$NVLIB/lib/libcublas.so.$cuda_major" ] \
    || { echo "ci: no cuBLAS in $NVLIB after installing $CUBLAS_SPEC" >&2; exit 1; }
  defines+=(
    "-Ccmake.define.CUDA_cublas_LIBRARY=$NVLIB/lib/libcublas.so.$cuda_major"
    "-Ccmake.define.CUDA_cublasLt_LIBRARY=$NVLIB/lib/libcublasLt.so.$cuda_major"
    "-Ccmake.define.CMAKE_CUDA_STANDARD_INCLUDE_DIRECTORIES=$NVLIB/include"
    "-Ccmake.define.CMAKE_INSTALL_RPATH=\$ORIGIN/../nvidia/cu$cuda_major/lib"
  )
fi

# libcuda.so for the linker
if ls "$CUDA_HOME"/lib64/stubs/libcuda.so >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libcuda.so >/dev/null 2>&1; then
  echo "ci: libcuda.so from the toolkit's stubs or the driver"
else
  STUB="$ROOT/build/cuda-libcuda-stub/stubs"    # "/stubs/": CMake links it but adds no RPATH for it
  mkdir -p "$STUB"
  for d in "" -DCUDA_API_PER_THREAD_DEFAULT_STREAM -D__CUDA_API_VERSION_INTERNAL; do
    echo '#include <cuda.h>' | cc -E -P $d -I"$CUDA_HOME/include" -x c - | tr '\n' ' ' \
      | grep -oE "CUresult +(CUDAAPI +)?cu[A-Za-z0-9_]+ *\(" | grep -oE "cu[A-Za-z0-9_]+"
  done | sort -u | awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }' > "$STUB/libcuda_stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/libcuda_stub.c"
  echo "ci: no libcuda.so here; linking against a stub with $(grep -c . "$STUB/libcuda_stub.c") driver functions from cuda.h ($STUB/libcuda.so)"
  defines+=("-Ccmake.define.CUDA_cuda_driver_LIBRARY=$STUB/libcuda.so")
fi

# The backend itself through CMAKE_ARGS, as README.md tells users; the machine's paths through
# -Ccmake.define (both reach CMake; see build/cuda-*/CMakeCache.txt).
export CMAKE_ARGS="-DGGML_CUDA=on ${CMAKE_ARGS:-}"
echo "ci: CMAKE_ARGS=$CMAKE_ARGS"
printf 'ci:   %s\n' "${defines[@]}"
BUILD_DIR_PATTERN='build/cuda-{wheel_tag}'   # relative to the checkout; PYLLAMA_CUDA_BUILD_DIR overrides
[ -z "${PYLLAMA_CUDA_BUILD_DIR:-}" ] || BUILD_DIR_PATTERN="$PYLLAMA_CUDA_BUILD_DIR"
LOG="${PYLLAMA_CUDA_LOG:-${TMPDIR:-/tmp}/pyllama-cuda-build.log}"
start=$(date +%s)
set +e
"$VENV/bin/python" -m pip install -v . "-Cbuild-dir=$BUILD_DIR_PATTERN" "${defines[@]}" 2>&1 \
  | tee "$LOG" \
  | grep -E --line-buffered "pyllama:|CUDA|cuBLAS|\[[0-9]+/[0-9]+\]|Successfully installed|error|Error"
rc=${PIPESTATUS[0]}
set -e
secs=$(( $(date +%s) - start ))
if [ "$rc" != 0 ]; then
  echo "ci: CUDA build FAILED after ${secs}s (pip exit $rc); full log: $LOG" >&2
  exit "$rc"
fi
echo "ci: CUDA build+install (sm_$ARCH) took ${secs}s ($(( secs / 60 ))m$(( secs % 60 ))s); full log: $LOG"
command -v ccache >/dev/null 2>&1 && ccache -s | grep -iE "hits|misses" | head -3 || true

# --- what is in the module -------------------------------------------------------------------
BUILT=$(ls ${BUILD_DIR_PATTERN//\{wheel_tag\}/cp*}/_core.*.so | head -1)   # unstripped: the symbol table is there
INSTALLED=$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("pyllama").submodule_search_locations[0])')
INSTALLED=$(ls "$INSTALLED"/_core.*.so | head -1)
echo "ci: built module $BUILT ($(du -h "$BUILT" | cut -f1)); installed $INSTALLED ($(du -h "$INSTALLED" | cut -f1))"
fail=0
# (no pipefail inside: grep -q closing the pipe early would make nm/strings "fail" with SIGPIPE)
check() { if (set +o pipefail; eval "$2") >/dev/null 2>&1; then echo "ci: ok   $1"; else echo "ci: FAIL $1"; fail=1; fi; }
check "CUDA backend compiled in (ggml_backend_cuda_init, ggml_backend_cuda_reg in the symbol table)" \
  "nm -C '$BUILT' | grep -q ' ggml_backend_cuda_init' && nm -C '$BUILT' | grep -q ' ggml_backend_cuda_reg'"
check "device code for sm_$ARCH embedded (.nv_fatbin section; '-arch sm_$ARCH' in it)" \
  "readelf -S '$INSTALLED' | grep -q nv_fatbin && strings -a '$INSTALLED' | grep -q -- '-arch sm_$ARCH '"
check "links the CUDA runtime, cuBLAS and the driver (NEEDED libcudart, libcublas, libcuda.so.1)" \
  "readelf -d '$INSTALLED' | grep NEEDED | grep -q libcudart && readelf -d '$INSTALLED' | grep NEEDED | grep -q libcublas && readelf -d '$INSTALLED' | grep NEEDED | grep -q 'libcuda.so.1'"
echo "ci: NEEDED:" $(readelf -d "$INSTALLED" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p')
echo "ci: RUNPATH:" $(readelf -d "$INSTALLED" | sed -n 's/.*R\(UN\)\{0,1\}PATH.*\[\(.*\)\]/\2/p')
echo "ci: ldd:"; ldd "$INSTALLED" | grep -E "cuda|cublas" | sed 's/^/ci:   /'
echo "ci: driver functions the module takes from libcuda.so.1:" \
  $(nm -D --undefined-only "$INSTALLED" | awk '{print $2}' | grep -E '^cu[A-Z]' | tr '\n' ' ')
[ "$fail" = 0 ] || { echo "ci: the CUDA module check FAILED" >&2; exit 1; }

cd /tmp   # not the source tree: import the installed package
if ldconfig -p | grep -q 'libcuda.so.1 '; then
  "$VENV/bin/python" -c "import pyllama; print('pyllama', pyllama.__version__, pyllama.list_backends())"
else
  echo "ci: no NVIDIA driver (libcuda.so.1) here, so the module cannot be imported or run; import says:"
  "$VENV/bin/python" -c "import pyllama._core" 2>&1 | tail -1 | sed 's/^/ci:   /' || true
fi
echo "ci: CUDA build ok"
