"""examples/replicas/nginx.conf for real: two pyllama replicas behind nginx (skipped, saying why,
when nginx is not installed: `apt-get install nginx-light`; ci/env.sh installs it)."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "replicas" / "nginx.conf"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, procs, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        assert time.time() < deadline and all(p.poll() is None for p in procs), f"{url} did not come up"
        time.sleep(0.3)


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_replicas_behind_nginx(tmp_path, tiny_model_path):
    ports = [_port(), _port()]
    front = _port()
    conf = EXAMPLE.read_text()
    conf = conf.replace("127.0.0.1:8081", f"127.0.0.1:{ports[0]}").replace("127.0.0.1:8082", f"127.0.0.1:{ports[1]}")
    conf = conf.replace("listen 127.0.0.1:8080", f"listen 127.0.0.1:{front}").replace("/tmp/pyllama-nginx", str(tmp_path / "ngx"))
    (tmp_path / "nginx.conf").write_text(conf)
    procs = [subprocess.Popen([sys.executable, "-m", "pyllama.server", "-m", str(tiny_model_path), "--port", str(p),
                               "-np", "2", "-c", "512", "-t", "1", "-tb", "1", "--metrics"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for p in ports]
    ngx = None
    try:
        for p in ports:
            _wait(f"http://127.0.0.1:{p}/health", procs)
        ngx = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                               stdout=subprocess.DEVNULL, stderr=open(tmp_path / "nginx.log", "w"))
        _wait(f"http://127.0.0.1:{front}/health", procs + [ngx])
        base = f"http://127.0.0.1:{front}"
        # streams pass through unbuffered: several SSE events, the last [DONE]
        for i in range(6):
            body = json.dumps({"prompt": f"request {i}", "max_tokens": 8, "stream": True, "ignore_eos": True}).encode()
            req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                events = [ln for ln in r.read().decode().splitlines() if ln.startswith("data: ")]
            assert events[-1] == "data: [DONE]" and len(events) >= 3
        served = [_metric(f"http://127.0.0.1:{p}", "llamacpp:tokens_predicted_total") for p in ports]
        assert sum(served) == 6 * 8 and all(s > 0 for s in served), served      # both replicas worked
        # a replica going away: nginx sends the next requests to the other one
        procs[0].terminate()
        procs[0].wait(30)
        for i in range(3):
            req = urllib.request.Request(base + "/completion", data=json.dumps({"prompt": "hi", "n_predict": 2}).encode())
            with urllib.request.urlopen(req, timeout=60) as r:
                assert json.loads(r.read())["tokens_predicted"] == 2
    finally:
        if ngx is not None:
            ngx.terminate()
            ngx.wait(10)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(30)
