#!/usr/bin/env bash
# Backends that cannot be built on this Linux machine (Metal: Apple only; HIP: needs ROCm) are
# still checked for one thing: that the option reaches ggml's own CMake, by every route a user
# has. Each run configures the project in a throwaway dir under /tmp (nothing is compiled, the
# checkout's build/ and venvs are not touched) and passes when
#   - CMake stopped INSIDE ggml's backend directory (ggml-metal/ or ggml-hip/ in the error's
#     call stack), which ggml only enters when the option is ON, and
#   - the throwaway CMakeCache.txt holds GGML_<X>=ON.
# Routes: plain `cmake -DGGML_<X>=ON`; `CMAKE_ARGS="-DGGML_<X>=on" pip wheel .`; and
# `pip wheel . -Ccmake.define.GGML_<X>=ON` (scikit-build-core; these stop at configure, ~20 s each).
# Each run must also print CMakeLists.txt's own report, "pyllama: GGML_<X>=ON" (it comes before
# ggml's subdirectory). A positive control (Vulkan, when its packages are installed) shows a
# configure that gets through.
#   bash ci/check_backend_flags.sh          # PYLLAMA_FLAGS_PIP=0 skips the pip routes
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
T="$(mktemp -d "${TMPDIR:-/tmp}/pyllama-backend-flags.XXXXXX")"
echo "ci: throwaway dir $T"
fail=0

# expect NAME LOG BUILD_DIR BACKEND : configure stopped inside ggml-<backend>/, cache has it ON
expect() {
  local name=$1 log=$2 dir=$3 b=$4 lower where cached
  lower=$(echo "$b" | tr '[:upper:]' '[:lower:]')
  where=$(grep -A6 "CMake Error" "$log" | grep -oE "ggml/src/ggml-$lower/CMakeLists.txt:[0-9]+ \([a-z_]+\)" | head -1)
  cached=$(grep -E "^GGML_$b:BOOL=" "$dir/CMakeCache.txt" 2>/dev/null | cut -d= -f2)
  reported=$(grep -oiE "pyllama: GGML_$b=(ON|1|TRUE)" "$log" | head -1)
  if [ -n "$where" ] && [[ "$cached" =~ ^(ON|on|On|1|TRUE|true)$ ]] && [ -n "$reported" ]; then
    echo "ci: ok   $name: '$reported', cache GGML_$b=$cached; stopped in $where:"
  else
    echo "ci: FAIL $name: report '${reported}', cache GGML_$b='${cached}', error in ggml-$lower/: '${where}' (log: $log)"
    fail=1
  fi
  grep -A8 "CMake Error" "$log" | grep -vE "^\s*$|Call Stack" | sed 's/^ */ci:        /' | head -4
}

for b in METAL HIP; do
  lower=$(echo "$b" | tr '[:upper:]' '[:lower:]')
  cmake -S . -B "$T/cmake-$lower" -G Ninja "-DGGML_$b=ON" > "$T/cmake-$lower.log" 2>&1
  expect "cmake -DGGML_$b=ON" "$T/cmake-$lower.log" "$T/cmake-$lower" "$b"
done

if [ "${PYLLAMA_FLAGS_PIP:-1}" != 0 ]; then
  # pip runs the real build backend (scikit-build-core, in an isolated build env) on the checkout.
  for b in METAL HIP; do
    lower=$(echo "$b" | tr '[:upper:]' '[:lower:]')
    CMAKE_ARGS="-DGGML_$b=on" "$PY" -m pip wheel . --no-deps -v -w "$T/dist" \
      "-Cbuild-dir=$T/pip-env-$lower" > "$T/pip-env-$lower.log" 2>&1
    expect "CMAKE_ARGS=-DGGML_$b=on pip wheel ." "$T/pip-env-$lower.log" "$T/pip-env-$lower" "$b"
    env -u CMAKE_ARGS "$PY" -m pip wheel . --no-deps -v -w "$T/dist" \
      "-Ccmake.define.GGML_$b=ON" "-Cbuild-dir=$T/pip-def-$lower" > "$T/pip-def-$lower.log" 2>&1
    expect "pip wheel . -Ccmake.define.GGML_$b=ON" "$T/pip-def-$lower.log" "$T/pip-def-$lower" "$b"
  done
fi

# Positive control: a backend that configures here, and our own report of the choice.
if dpkg -s libvulkan-dev glslc spirv-headers >/dev/null 2>&1; then
  if cmake -S . -B "$T/cmake-vulkan" -G Ninja -DGGML_VULKAN=ON > "$T/cmake-vulkan.log" 2>&1 \
     && grep -q "Including Vulkan backend" "$T/cmake-vulkan.log" \
     && grep -q "pyllama: GGML_VULKAN=ON" "$T/cmake-vulkan.log"; then
    echo "ci: ok   control cmake -DGGML_VULKAN=ON configures; ggml and CMakeLists.txt report:"
  else
    echo "ci: FAIL control cmake -DGGML_VULKAN=ON (log: $T/cmake-vulkan.log)"; fail=1
  fi
  grep -E "Including .* backend|pyllama: GGML_(VULKAN|METAL|HIP)=" "$T/cmake-vulkan.log" | sed 's/^/ci:        /'
else
  echo "ci: skip control (no Vulkan packages; bash ci/build_vulkan.sh installs them)"
fi

if [ "$fail" = 0 ]; then
  rm -rf "$T"
  echo "ci: backend flags reach ggml's CMake (Metal and HIP are not built here)"
else
  echo "ci: backend flag check FAILED; logs in $T" >&2
  exit 1
fi
