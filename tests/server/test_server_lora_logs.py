"""--lora with GET/POST /lora-adapters, and --log-format json request lines."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

from pyllama.testing import write_random_lora as write_lora


def test_lora_adapters_endpoint(inproc, tiny_model_path, tmp_path):
    lora = write_lora(tmp_path / "lora.gguf", seed=4)

    async def scenario(client):
        greedy = {"prompt": "The adapter", "n_predict": 6, "temperature": 0, "cache_prompt": False}
        r = await client.get("/lora-adapters")
        assert await r.json() == [{"id": 0, "path": str(lora), "scale": 1.0}]
        with_lora = await (await client.post("/completion", json=greedy)).json()
        r = await client.post("/lora-adapters", json=[{"id": 0, "scale": 0.0}])
        assert (await r.json())[0]["scale"] == 0.0
        without = await (await client.post("/completion", json=greedy)).json()
        assert with_lora["content"] != without["content"]
        r = await client.post("/lora-adapters", json=[])            # not listed: scale 0
        assert (await r.json())[0]["scale"] == 0.0
        r = await client.post("/lora-adapters", json=[{"id": 5, "scale": 1.0}])
        assert r.status == 400
        r = await client.post("/completion", json={**greedy, "lora": [{"id": 0, "scale": 1.0}]})
        assert (await r.json())["content"] == with_lora["content"]     # per request: see test_server_lora_request

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256", "--lora", str(lora)], scenario)


def test_json_log_lines(tiny_model_path, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "pyllama.server", "-m", str(tiny_model_path), "--port", str(port),
                             "-c", "256", "-np", "1", "-t", "1", "-tb", "1", "--log-format", "json", "--log-file",
                             str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except Exception:  # noqa: BLE001 - not up yet
                assert time.time() < deadline and proc.poll() is None, log.read_text() if log.exists() else ""
                time.sleep(0.3)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/completion",
                                     data=json.dumps({"prompt": "Hi", "n_predict": 3}).encode())
        urllib.request.urlopen(req, timeout=60).read()
    finally:
        proc.terminate()
        proc.wait(30)
    lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    done = [ln for ln in lines if "req" in ln]
    assert done and done[-1]["req"]["generated"] == 3 and done[-1]["req"]["slot"] == 0
    assert done[-1]["req"]["prompt"] >= 1 and "prompt_ms" in done[-1]["req"]
    assert any("http" in ln and ln["http"]["path"] == "/completion" and ln["http"]["status"] == 200 for ln in lines)
    assert any("summary" in ln for ln in lines)       # the model-loaded line
