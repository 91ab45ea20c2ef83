"""SIGTERM: in-flight streams finish, new connections are refused, the process exits 0."""
from __future__ import annotations

import json
import signal
import time


def test_sigterm_drains_inflight_stream(start_server, chat_model_path):
    server = start_server(chat_model_path, "-np", "2", "-c", "2048", slot_save=False)
    conn = server.connection(timeout=60)
    n_predict = 500
    conn.request("POST", "/completion", body=json.dumps({
        "prompt": "A long answer", "n_predict": n_predict, "ignore_eos": True, "stream": True,
        "temperature": 0}).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    chunks = []
    while len(chunks) < 2:
        line = resp.readline()
        assert line
        if line.startswith(b"data: "):
            chunks.append(json.loads(line[6:]))
    assert not chunks[-1]["stop"]

    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    # the stream goes on to its end
    for line in iter(resp.readline, b""):
        if line.startswith(b"data: "):
            chunks.append(json.loads(line[6:]))
    t_end = time.monotonic()
    conn.close()
    assert t_end - t0 > 0.1                           # it was still generating when the signal came
    last = chunks[-1]
    assert last["stop"] is True, last
    assert all(c["stop"] is False for c in chunks[:-1])
    assert last["tokens_predicted"] == n_predict and last["stop_type"] == "limit"
    assert sum(len(c["tokens"]) for c in chunks) == n_predict

    rc = server.proc.wait(timeout=40)
    elapsed = time.monotonic() - t0
    assert rc == 0, server.log()
    assert elapsed < 35                               # within the 30 s grace period (and then some)
    # nobody listens any more
    try:
        server.get("/health", timeout=2)
    except OSError:
        pass
    else:
        raise AssertionError("the server still answers after exiting")


def test_sigterm_idle_exits_0(start_server, tiny_model_path):
    server = start_server(tiny_model_path, "-np", "1", "-c", "256", slot_save=False)
    assert server.get("/health").status == 200
    t0 = time.monotonic()
    assert server.stop(signal.SIGTERM, timeout=30) == 0, server.log()
    assert time.monotonic() - t0 < 10
