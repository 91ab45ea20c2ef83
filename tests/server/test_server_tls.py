"""TLS: --ssl-key-file/--ssl-cert-file serve HTTPS (a self-signed certificate made with openssl)."""
from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_https(tmp_path, tiny_model_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pyllama.server", "-m", str(tiny_model_path), "--port", str(port),
                             "-c", "256", "-np", "1", "-t", "1", "-tb", "1", "--ssl-key-file", str(key),
                             "--ssl-cert-file", str(cert)], stdout=log, stderr=subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = False
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError((tmp_path / "server.log").read_text())
                time.sleep(0.3)
        req = urllib.request.Request(base + "/completion", data=json.dumps({"prompt": "Hi", "n_predict": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
            assert json.loads(r.read())["tokens_predicted"] == 3
        with pytest.raises(Exception):      # plain HTTP is not served on the TLS port
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).read()
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
