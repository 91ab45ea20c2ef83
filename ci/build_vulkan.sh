#!/usr/bin/env bash
# Build pyllama with the Vulkan backend into its own virtual environment, .venv-vulkan, so the
# default CPU build (.venv / build/{wheel_tag}) is left alone:
#   - installs the Vulkan headers and loader, SPIR-V headers, the shader compiler and Mesa's drivers (incl. the
#     software "lavapipe" device, llvmpipe) from Debian when they are missing (root + apt only);
#   - installs pyllama NON-editable with CMAKE_ARGS="-DGGML_VULKAN=on" and its own scikit-build
#     build dir, build/vulkan-{wheel_tag}, through ccache.
# Then run the check:  .venv-vulkan/bin/python ci/test_vulkan.py
#   bash ci/build_vulkan.sh
set -euo pipefail
export PYLLAMA_VENV="${PYLLAMA_VULKAN_VENV:-$(cd "$(dirname "$0")/.." && pwd)/.venv-vulkan}"
# shellcheck disable=SC1091
. "$(dirname "$0")/env.sh"      # apt_ensure, ccache, the venv (activated)

# Vulkan headers and loader, SPIR-V headers (ggml-vulkan: find_package(SPIRV-Headers)), the
# shader compiler, and Mesa's drivers (incl. the software "lavapipe" device, llvmpipe)
apt_ensure libvulkan-dev glslc spirv-headers mesa-vulkan-drivers vulkan-tools
command -v vulkaninfo >/dev/null 2>&1 && vulkaninfo --summary 2>/dev/null | grep -E "deviceName|deviceType|driverName" || true

"$VENV/bin/python" scripts/vendor_llama_cpp.py

# ggml's Vulkan CMake options plus whatever the caller passes in CMAKE_ARGS.
export CMAKE_ARGS="-DGGML_VULKAN=on ${CMAKE_ARGS:-}"
echo "ci: CMAKE_ARGS=$CMAKE_ARGS"
start=$(date +%s)
# Non-editable, with a build dir of its own: build/{wheel_tag} stays the CPU build of the
# editable install. -v so the long shader compilation shows progress in the log.
# The full log goes to $LOG; the console gets CMake's choices, ninja's progress and errors.
LOG="${PYLLAMA_VULKAN_LOG:-${TMPDIR:-/tmp}/pyllama-vulkan-build.log}"
set +e
"$VENV/bin/python" -m pip install -v ".[test]" "-Cbuild-dir=build/vulkan-{wheel_tag}" 2>&1 \
  | tee "$LOG" \
  | grep -E --line-buffered "pyllama:|Vulkan|\[[0-9]+/[0-9]+\]|Successfully installed|error:|Error" 
rc=${PIPESTATUS[0]}
set -e
secs=$(( $(date +%s) - start ))
if [ "$rc" != 0 ]; then
  echo "ci: Vulkan build FAILED after ${secs}s (pip exit $rc); full log: $LOG" >&2
  exit "$rc"
fi
echo "ci: Vulkan build+install took ${secs}s ($(( secs / 60 ))m$(( secs % 60 ))s)"
command -v ccache >/dev/null 2>&1 && ccache -s | grep -iE "hits|misses" | head -3 || true

cd /tmp   # not the source tree: import the installed package
"$VENV/bin/python" -c "import pyllama; print('pyllama', pyllama.__version__, 'from', pyllama.__file__, pyllama.list_backends())"
"$VENV/bin/python" - <<'PY'
import pyllama
assert "site-packages" in pyllama.__file__, "expected a non-editable install: " + pyllama.__file__
assert any("vulkan" in str(b).lower() for b in pyllama.list_backends()), pyllama.list_backends()
PY
echo "ci: Vulkan build ok; check it with: $VENV/bin/python ci/test_vulkan.py"
