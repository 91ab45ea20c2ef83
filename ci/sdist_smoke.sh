#!/usr/bin/env bash
# Build an sdist, install it into a new virtual environment (the sdist carries vendor/llama.cpp,
# so nothing but the build requirements is fetched), and smoke-test the installed package from
# outside the source tree. Extra CMake options pass through CMAKE_ARGS as usual.
#   bash ci/sdist_smoke.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/pyllama-sdist.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$ROOT"
python3 scripts/vendor_llama_cpp.py
python3 -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/pip" install -q build
"$WORK/build-venv/bin/python" -m build --sdist -o "$WORK/dist" .
SDIST="$(ls "$WORK"/dist/pyllama-*.tar.gz)"
echo "sdist: $SDIST ($(du -h "$SDIST" | cut -f1)); vendored files: $(tar tzf "$SDIST" | grep -c '/vendor/llama.cpp/')"
python3 -m venv "$WORK/venv"
start=$(date +%s)
"$WORK/venv/bin/pip" install -q "$SDIST[server]" gguf
echo "install from sdist took $(( $(date +%s) - start ))s"
cd "$WORK"   # not the source tree: the installed package must stand alone
PYLLAMA_VOCAB_DIR="$ROOT/vendor/llama.cpp/models" "$WORK/venv/bin/python" - <<'PY'
import os
import pyllama
print("pyllama", pyllama.__version__, "from", os.path.dirname(pyllama.__file__), pyllama.list_backends())
assert "site-packages" in pyllama.__file__, pyllama.__file__
from pyllama.testing import write_random_model
path = write_random_model("model.gguf", vocab="llama-spm", n_embd=64, n_layer=2, n_head=4, seed=0)
with pyllama.Llama(path, n_ctx=256) as llm:
    r = llm("Hello", max_tokens=8, temperature=0, ignore_eos=True)
    assert r["usage"]["completion_tokens"] == 8, r
    print("generated:", repr(r["choices"][0]["text"]))
import pyllama.server.app  # noqa: F401  (the server's modules import; aiohttp and pydantic come with [server])
# the RPC backend is built by default: a worker from the installed package takes the layers
import socket, subprocess, sys, time
assert "RPC" in pyllama.list_backends(), pyllama.list_backends()
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
worker = subprocess.Popen([sys.executable, "-m", "pyllama.rpc_server", "-p", str(port), "-t", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            time.sleep(0.05)
    with pyllama.Llama(path, n_ctx=256, n_gpu_layers=-1, rpc_servers=f"127.0.0.1:{port}") as llm:
        r2 = llm("Hello", max_tokens=8, temperature=0, ignore_eos=True)
    assert r2["choices"][0]["text"] == r["choices"][0]["text"], (r2, r)
    print("through an RPC worker: same text")
finally:
    worker.kill()
PY
echo "sdist smoke: ok"
