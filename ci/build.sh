#!/usr/bin/env bash
# Fetch llama.cpp (pinned, hash-checked, cached) and build + install pyllama (editable) with test deps.
# Extra CMake options pass through CMAKE_ARGS, e.g. CMAKE_ARGS="-DGGML_VULKAN=on" bash ci/build.sh
. "$(dirname "$0")/env.sh"
python scripts/vendor_llama_cpp.py
start=$(date +%s)
python -m pip install -q -e ".[test]"
echo "ci: build+install took $(( $(date +%s) - start ))s"
command -v ccache >/dev/null 2>&1 && ccache -s | grep -iE "hits|misses" | head -3 || true
python -c "import pyllama; print('pyllama', pyllama.__version__, pyllama.list_backends())"
