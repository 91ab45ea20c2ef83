"""Several clients at once on a running server: 8 streams on 4 slots, /slots while busy, /metrics
counters, and a client that disconnects mid-stream."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, List

import pytest

pytest.importorskip("prometheus_client")

P = "llamacpp:"


def stream_completion(server, prompt: str, max_tokens: int, results: Dict[int, Any], key: int, **extra) -> None:
    try:
        events = server.stream("/v1/completions", {
            "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}, **extra})
        results[key] = events
    except BaseException as e:  # noqa: BLE001 - reported by the test
        results[key] = e


def parse_stream(events: List[str]) -> Dict[str, Any]:
    """Check an OpenAI completion stream's shape; its text, finish reason and usage."""
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    usage = [c["usage"] for c in chunks if c.get("usage")]
    assert len(finishes) == 1 and len(usage) == 1 and chunks[-1].get("usage"), chunks[-2:]
    text = "".join(ch["text"] for c in chunks for ch in c["choices"])
    return {"text": text, "finish": finishes[0], "usage": usage[0]}


def test_eight_streams_on_four_slots(chat_server):
    before = chat_server.metrics()
    assert before[P + "requests_processing"] == 0
    results: Dict[int, Any] = {}
    threads = [threading.Thread(target=stream_completion,
                                args=(chat_server, f"Client {i} asks about topic {i * 13}", 40, results, i))
               for i in range(8)]
    busy: List[int] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                info = chat_server.slots()
            except OSError:
                continue
            assert len(info) == 4
            busy.append(sum(s["is_processing"] for s in info))
            time.sleep(0.01)

    poller = threading.Thread(target=poll)
    poller.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    poller.join(10)

    assert sorted(results) == list(range(8))
    parsed = []
    for i in range(8):
        assert not isinstance(results[i], BaseException), results[i]
        s = parse_stream(results[i])
        assert s["finish"] == "length" and s["usage"]["completion_tokens"] == 40   # ignore_eos: all 40
        parsed.append(s)
    assert max(busy) >= 2, busy            # seen running together
    assert max(busy) <= 4

    after = chat_server.metrics()
    completion = sum(s["usage"]["completion_tokens"] for s in parsed)
    prompt_evaluated = sum(s["usage"]["prompt_tokens"] - s["usage"]["prompt_tokens_details"]["cached_tokens"]
                           for s in parsed)
    assert after[P + "tokens_predicted_total"] - before[P + "tokens_predicted_total"] == completion
    assert after[P + "prompt_tokens_total"] - before[P + "prompt_tokens_total"] == prompt_evaluated
    n_decode = after[P + "n_decode_total"] - before[P + "n_decode_total"]
    # batched: fewer decode calls than tokens, at least one per token of the longest request
    assert 40 <= n_decode < completion
    assert after[P + "requests_processing"] == 0 and after[P + "requests_deferred"] == 0
    assert after[P + "tokens_predicted_seconds_total"] > before[P + "tokens_predicted_seconds_total"]
    assert after[P + "n_busy_slots_per_decode"] > 1.0
    assert after[P + "predicted_tokens_seconds"] > 0

    # and once more: the counters move by exactly one more request's tokens
    r = chat_server.post("/v1/completions", {"prompt": "One more", "max_tokens": 3, "temperature": 0,
                                             "ignore_eos": True})
    assert r.status == 200, r
    again = chat_server.metrics()
    assert again[P + "tokens_predicted_total"] - after[P + "tokens_predicted_total"] == 3
    assert again[P + "n_decode_total"] > after[P + "n_decode_total"]


def test_disconnect_frees_slot(chat_server):
    other = "A different client with its own question"
    solo = parse_stream(chat_server.stream("/v1/completions", {
        "prompt": other, "max_tokens": 24, "temperature": 0, "stream": True, "ignore_eos": True,
        "stream_options": {"include_usage": True}}))
    chat_server.wait_idle()

    # a long stream: read a few chunks, then hang up
    conn = chat_server.connection(timeout=60)
    conn.request("POST", "/completion", body=json.dumps({
        "prompt": "Tell me a very long story", "n_predict": 480, "ignore_eos": True, "stream": True,
        "temperature": 0}).encode(), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    got = 0
    while got < 3:
        line = resp.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            chunk = json.loads(line[6:])
            assert chunk["stop"] is False
            got += 1
    busy = [s for s in chat_server.slots() if s["is_processing"]]
    assert len(busy) == 1 and busy[0]["n_decoded"] < 480

    # another client runs while the first one goes away
    results: Dict[int, Any] = {}
    t = threading.Thread(target=stream_completion, args=(chat_server, other, 24, results, 0))
    t.start()
    resp.close()
    conn.close()
    t.join(60)
    assert not isinstance(results[0], BaseException), results[0]
    concurrent = parse_stream(results[0])
    assert concurrent["text"] == solo["text"] and concurrent["finish"] == "length"

    info = chat_server.wait_idle(timeout=5)          # the hung-up request's slot is free again
    assert all(s["state"] == "idle" for s in info)
    m = chat_server.metrics()
    assert m[P + "requests_processing"] == 0
    # the aborted request stopped early
    assert max(s["n_cached"] for s in info) < 480


def test_disconnect_non_streaming_frees_slot(chat_server):
    chat_server.wait_idle()
    conn = chat_server.connection(timeout=60)
    conn.request("POST", "/completion", body=json.dumps({
        "prompt": "Hang up on me", "n_predict": 480, "ignore_eos": True}).encode(),
        headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    while not any(s["is_processing"] for s in chat_server.slots()):
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.01)
    conn.close()                                        # without reading the answer
    info = chat_server.wait_idle(timeout=5)
    assert max(s["n_cached"] for s in info if s["n_cached"]) < 480
    assert chat_server.metrics()[P + "requests_processing"] == 0
    # the server goes on serving
    r = chat_server.post("/completion", {"prompt": "Still there?", "n_predict": 2})
    assert r.status == 200 and r.json()["tokens_predicted"] == 2
