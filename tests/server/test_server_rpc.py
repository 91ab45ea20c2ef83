"""``python -m pyllama.server --rpc``: all layers on two loopback RPC workers; a worker killed mid-stream."""
from __future__ import annotations

import json
import time

import pytest

import pyllama
from pyllama import Llama

pytestmark = pytest.mark.skipif(not pyllama._core.supports_rpc(), reason="built with -DGGML_RPC=OFF")

FLAGS = ("-np", "2", "-c", "1024", "-ngl", "99")
BODY = {"prompt": "The quick brown fox", "n_predict": 24, "temperature": 0.0, "cache_prompt": False}


def test_server_offloads_to_workers_and_matches_cpu(start_server, tiny_model_path, rpc_workers):
    w1, w2 = rpc_workers(2)
    srv = start_server(tiny_model_path, *FLAGS, "--verbose", "--rpc", f"{w1.endpoint},{w2.endpoint}")
    r = srv.post("/completion", BODY)
    assert r.status == 200, r
    with Llama(tiny_model_path, n_ctx=512, seed=1) as local:
        want = local.create_completion(BODY["prompt"], max_tokens=24, temperature=0.0)["choices"][0]["text"]
    assert r.json()["content"] == want
    log = srv.log(tail=10**8)
    assert f"RPC0 ({w1.endpoint})" in log and f"RPC1 ({w2.endpoint})" in log
    assert "offloaded 3/3 layers to GPU" in log
    assert "Accepted client connection" in w1.log() and "Accepted client connection" in w2.log()
    assert srv.get("/health").status == 200


def test_worker_killed_mid_stream_fails_the_request_and_health_says_so(start_server, tiny_model_path,
                                                                       rpc_workers):
    w1, w2 = rpc_workers(2)
    srv = start_server(tiny_model_path, *FLAGS, "--rpc", f"{w1.endpoint},{w2.endpoint}")
    conn = srv.connection(timeout=60)
    conn.request("POST", "/completion", body=json.dumps({**BODY, "n_predict": 500, "stream": True}),
                 headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    events = []
    for raw in iter(resp.readline, b""):
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        events.append(json.loads(line[6:]))
        if len(events) == 3:
            w2.kill()
    conn.close()
    assert len(events) < 100, "the stream went on after its worker died"
    last = events[-1]
    assert "error" in last, last
    assert last["error"]["code"] == 500 and "connection lost" in last["error"]["message"]
    # /health reports the failure (503) instead of hanging
    h = srv.get("/health", timeout=10)
    assert h.status == 503 and "connection lost" in h.json()["error"]["message"], h
    # a new request fails promptly with the same reason; the process keeps serving HTTP
    t0 = time.monotonic()
    r = srv.post("/v1/completions", {"prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status == 500 and "connection lost" in r.json()["error"]["message"], r
    assert time.monotonic() - t0 < 30
    assert srv.get("/props").status == 200
    assert srv.stop() == 0  # and it shuts down cleanly


def test_bad_rpc_flags(tiny_model_path):
    import socket
    import subprocess
    import sys

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    for value, msg in (("nohostport", "expected host:port"),
                       (f"127.0.0.1:{free_port()}", "cannot reach RPC server")):
        r = subprocess.run([sys.executable, "-m", "pyllama.server", "-m", str(tiny_model_path), "--rpc", value,
                            "--port", str(free_port())], capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and msg in r.stderr, (value, r.stderr[-2000:])
