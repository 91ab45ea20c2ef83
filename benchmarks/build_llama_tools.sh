#!/usr/bin/env bash
# Build llama.cpp's own tools from the vendored tree, for the benchmarks:
#   llama-batched-bench   (engine_bench.py compares pyllama's engine against it)
#   llama-server          (the server benchmark compares pyllama's server against it)
#
# Output: benchmarks/.build/ (git-ignored).  Idempotent: a second run only
# re-checks the build.  Prints the binary paths on the last lines.
#
#   benchmarks/build_llama_tools.sh            # configure if needed, then build
#   JOBS=1 benchmarks/build_llama_tools.sh     # fewer parallel compile jobs (default 2)
#
# Notes on the options:
# * Same codegen as pyllama's own llama.cpp build (see /CMakeLists.txt):
#   Release, GGML_NATIVE=ON, static libraries, position-independent code.
# * AMX: pyllama's native build adds -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
#   unless a probe shows AMX tiles actually run here (cmake/amx.cmake).  We do
#   not repeat the probe: we always pass the flags.  On CPUs without AMX (like
#   the AMD EPYC the results in README.md come from) they change nothing; on a
#   CPU where pyllama's probe does enable AMX this tool build is AMX-free and
#   the comparison is not like for like (say so when reporting such numbers).
# * scripts/vendor_llama_cpp.py drops some top-level folders of llama.cpp
#   (examples/, pocs/, app/, ...).  tools/ (batched-bench, server, ui) is kept,
#   so we only have to switch off what would need the dropped folders:
#   LLAMA_BUILD_EXAMPLES=OFF (examples/, pocs/) and LLAMA_BUILD_APP=OFF (app/).
# * The server's web UI: LLAMA_BUILD_UI=OFF (no npm) and LLAMA_USE_PREBUILT_UI=OFF
#   (no download from Hugging Face at build time); llama-server is built with
#   an empty asset table, which the API does not need.
# * No network at all: LLAMA_OPENSSL=OFF, no curl.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SRC="$ROOT/vendor/llama.cpp"
BUILD="$HERE/.build/llama.cpp"
JOBS="${JOBS:-2}"

if [[ ! -f "$SRC/CMakeLists.txt" ]]; then
    echo "build_llama_tools: $SRC is missing; run: python scripts/vendor_llama_cpp.py" >&2
    exit 1
fi

launcher=()
if command -v ccache >/dev/null 2>&1; then
    export CCACHE_BASEDIR="$ROOT"
    launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    echo "build_llama_tools: compiling through ccache (CCACHE_BASEDIR=$ROOT)"
fi

generator=()
if command -v ninja >/dev/null 2>&1; then
    generator=(-G Ninja)
fi

NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

if [[ ! -f "$BUILD/CMakeCache.txt" ]]; then
    cmake -S "$SRC" -B "$BUILD" "${generator[@]}" "${launcher[@]}" \
        -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON \
        -DGGML_CCACHE=OFF \
        -DCMAKE_C_FLAGS="$NO_AMX" \
        -DCMAKE_CXX_FLAGS="$NO_AMX" \
        -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_BUILD_TOOLS=ON \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF
fi

cmake --build "$BUILD" --target llama-batched-bench llama-server -j"$JOBS"

BIN="$BUILD/bin"
for exe in llama-batched-bench llama-server; do
    if [[ ! -x "$BIN/$exe" ]]; then
        echo "build_llama_tools: $BIN/$exe was not produced" >&2
        exit 1
    fi
done
echo "llama-batched-bench: $BIN/llama-batched-bench"
echo "llama-server: $BIN/llama-server"
