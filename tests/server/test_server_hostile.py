"""Hostile input: nothing a client sends crashes the server, stalls it or hurts another request.

Every case is one request that, before this suite existed, killed the process (SIGSEGV in
llama.cpp's recursive grammar and schema code), failed every request in flight, answered 500, was
accepted though meaningless, or made the server allocate gigabytes. Each now gets a 4xx naming
the field or the limit, and after each the server still answers ``/health`` and serves a normal
request. The inputs that used to crash are also sent just inside the limits, where they must
work. The limits alone keep them within an 8 MiB stack; the threads that run llama.cpp's
recursive code (the front end's workers, the engine thread) have 256 MiB stacks besides, and a
grammar that kills a default thread runs on one of those.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pytest

from conftest import ServerProcess

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
BASE = {"prompt": "hi", "n_predict": 2}
DEEP = "[" * 100_000 + "]" * 100_000


def chat(**kw: Any) -> Dict[str, Any]:
    return {**CHAT, **kw}


def base(**kw: Any) -> Dict[str, Any]:
    return {**BASE, **kw}


def long_name_schema(n: int) -> Dict[str, Any]:
    return {"type": "object", "properties": {"a" * n: {"type": "string"}}}


def chain_grammar(n: int) -> str:
    return "root ::= r0\n" + "".join(f"r{i} ::= r{i + 1}\n" for i in range(n)) + f'r{n} ::= "a"\n'


def compact_chain_grammar(n: int) -> str:
    """A chain of ``n`` rules with short names: 300,000 of them fit in 4 MiB."""
    name = lambda i: "r" + np.base_repr(i, 36).lower()     # noqa: E731
    return "root::=r0\n" + "".join(f"{name(i)}::={name(i + 1)}\n" for i in range(n)) + f'{name(n)}::="a"\n'


def nested_grammar(n: int) -> str:
    return "root ::= " + "(" * n + '"a"' + ")" * n


# (id, path, JSON body or raw bytes, status, a piece of the error message)
CASES: Tuple[Tuple[str, str, Any, int, str], ...] = (
    # used to kill the process (SIGSEGV), as they kill llama-server
    ("schema-200k-name", "/v1/chat/completions",
     chat(response_format={"type": "json_schema", "json_schema": {"schema": long_name_schema(200_000)}}),
     400, "characters in one name or string"),
    ("json-schema-200k-name", "/completion", base(json_schema=long_name_schema(200_000)), 400, "4096"),
    ("tool-200k-name", "/v1/chat/completions",
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": long_name_schema(200_000)}}]),
     400, "tools"),
    ("grammar-250k-parens", "/completion", base(grammar=nested_grammar(250_000)), 400, "nested parentheses"),
    ("grammar-300k-rules", "/completion", base(grammar=compact_chain_grammar(300_000)), 400, "grammar (rules)"),
    ("grammar-40k-rules", "/completion", base(grammar=chain_grammar(40_000)), 400, "grammar (rules)"),
    ("schema-too-deep", "/completion",
     base(json_schema=json.loads('{"type":"object","properties":{"k":' * 100 + '{"type":"string"}' + "}}" * 100)),
     400, "nesting depth"),
    # used to fail every request in flight (OverflowError on the engine thread)
    ("embd-normalize-1e400", "/v1/embeddings", b'{"input": "hi", "embd_normalize": 1' + b"0" * 400 + b"}", 400,
     "embd_normalize"),
    # used to answer 500
    ("top-k-1e12", "/completion", base(top_k=10**12), 400, "top_k"),
    ("min-keep-2^70", "/completion", base(min_keep=2**70), 400, "min_keep"),
    ("repeat-last-n-2^40", "/completion", base(repeat_last_n=2**40, repeat_penalty=1.1), 400, "repeat_last_n"),
    ("dry-allowed-length-2^40", "/completion", base(dry_allowed_length=2**40, dry_multiplier=0.8), 400,
     "dry_allowed_length"),
    ("logit-bias-object", "/completion", base(logit_bias={"5": {"x": 1}}), 400, "logit_bias"),
    ("logit-bias-list-object", "/completion", base(logit_bias=[[5, {"x": 1}]]), 400, "logit_bias"),
    ("deep-arrays", "/completion", ('{"prompt": ' + DEEP + "}").encode(), 400, "nested too deeply"),
    ("deep-tools", "/v1/chat/completions",
     ('{"messages": [{"role": "user", "content": "x"}], "tools": ' + DEEP + "}").encode(), 400, "nested too deeply"),
    ("n-predict-2^70", "/completion", base(n_predict=2**70), 400, "n_predict"),
    ("n-keep-2^70", "/completion", base(n_keep=2**70), 400, "n_keep"),
    ("id-slot-2^70", "/completion", base(id_slot=2**70), 400, "id_slot"),
    ("max-tokens-2^70", "/v1/chat/completions", chat(max_tokens=2**70), 400, "max_tokens"),
    ("token-2^40", "/completion", {"prompt": [2**40], "n_predict": 1}, 400, "prompt"),
    ("detokenize-2^40", "/detokenize", {"tokens": [2**40]}, 400, "tokens"),
    ("temperature-1e308", "/completion", base(temperature=1e308), 400, "temperature"),
    ("mirostat-tau-1e308", "/completion", base(mirostat=2, mirostat_tau=1e308), 400, "mirostat_tau"),
    # used to be accepted though meaningless
    ("logit-bias-nan", "/completion", b'{"prompt": "hi", "n_predict": 2, "logit_bias": {"5": NaN}}', 400,
     "logit_bias"),
    ("logit-bias-infinity", "/completion", b'{"prompt": "hi", "n_predict": 2, "logit_bias": [[5, Infinity]]}',
     400, "logit_bias"),
    ("grammar-and-schema", "/completion", base(grammar='root ::= "a"', json_schema={"type": "string"}), 400,
     "not both"),
    ("slot-filename-newline", "/slots/0?action=save", {"filename": "a.bin\n"}, 400, "Invalid filename"),
    ("slot-filename-traversal", "/slots/0?action=save", {"filename": "../a.bin"}, 400, "Invalid filename"),
    # used to allocate without bound
    ("samplers-x1000", "/completion", base(samplers=["penalties"] * 1000, repeat_penalty=1.1), 400, "samplers"),
    ("n-over-slots", "/v1/completions", {"prompt": ["hi"] * 64, "n": 16, "max_tokens": 1}, 400, "slots"),
    ("n-cmpl-1e6", "/completion", base(n_cmpl=10**6), 400, "n_cmpl"),
    ("prompts-3000", "/completion", {"prompt": ["hi"] * 3000, "n_predict": 1}, 400, "prompt"),
    ("stops-1e5", "/completion", base(stop=["x"] * 100_000), 400, "stop"),
    ("stop-4MiB", "/completion", base(stop=["x" * 4 * 2**20]), 400, "stop"),
    ("dry-breaker-4MiB", "/completion", base(dry_multiplier=0.8, dry_sequence_breakers=["y" * 4 * 2**20]), 400,
     "dry_sequence_breakers"),
    ("budget-message-1MiB", "/completion", base(reasoning_budget_message="m" * 2**20), 400,
     "reasoning_budget_message"),
    # and more of the same kind
    ("messages-not-objects", "/v1/chat/completions", {"messages": [1, 2]}, 400, "messages"),
    ("tool-calls-garbage", "/v1/chat/completions",
     {"messages": [{"role": "assistant", "tool_calls": [{"function": 5}]}, {"role": "user", "content": "x"}]}, 400,
     ""),
    ("invalid-utf8", "/completion", b'{"prompt": "\xff\xfe"}', 400, "invalid JSON"),
    ("lone-surrogate", "/completion", b'{"prompt": "\\ud800", "n_predict": 2}', 400, ""),
    ("body-not-object", "/completion", [1, 2], 400, "JSON object"),
    ("slot-id-2^70", "/slots/" + str(2**70) + "?action=erase", {}, 400, "id_slot"),
)


@pytest.fixture(scope="module")
def server(start_server, chat_model_path) -> ServerProcess:
    return start_server(chat_model_path, "-np", "2", "-c", "1024", "--embeddings", "--metrics")


def assert_alive(server: ServerProcess) -> None:
    assert server.proc.poll() is None, f"the server died:\n{server.log()}"
    assert server.get("/health", timeout=10).status == 200
    r = server.post("/completion", {"prompt": "hello", "n_predict": 2, "temperature": 0})
    assert r.status == 200, r
    assert r.json()["tokens_predicted"] == 2


def send(server: ServerProcess, path: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return server.request("POST", path, raw=body, headers={"Content-Type": "application/json"}, timeout=60)
    return server.post(path, body, timeout=60)


@pytest.mark.parametrize("path,body,status,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_request_is_refused_and_the_server_lives_on(server, path, body, status, message):
    r = send(server, path, body)
    assert r.status == status, r
    err = r.json()["error"]
    assert err["code"] == status and err["type"] == "invalid_request_error", err
    assert message in err["message"], err
    assert_alive(server)


@pytest.mark.parametrize("grammar", [nested_grammar(900), chain_grammar(25_000)], ids=["900-parens", "25k-rules"])
def test_deep_grammars_within_the_limits_work(server, grammar):
    """Inside the limits, the grammars that used to overflow an 8 MiB stack compile and constrain
    the output (parsed on a worker, advanced on the engine thread: both have deep stacks)."""
    r = server.post("/completion", base(grammar=grammar, n_predict=4, temperature=0), timeout=120)
    assert r.status == 200, r
    assert r.json()["content"] == "a"
    assert_alive(server)


def test_penalty_windows_are_cut_to_the_context(server):
    """A 2**31-token window used to allocate 8 GiB per sampler (tens of seconds); it sees no more
    tokens than the slot's context, so that is what it gets."""
    before = rss_mib(server)
    for field in ({"repeat_last_n": 2**31 - 1, "repeat_penalty": 1.1},
                  {"dry_penalty_last_n": 2**31 - 1, "dry_multiplier": 0.8}):
        r = server.post("/completion", base(**field), timeout=60)
        assert r.status == 200, r
    assert rss_mib(server) - before < 512


def rss_mib(server: ServerProcess) -> float:
    with open(f"/proc/{server.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_completion_echo_is_bounded(server):
    """generation_settings echoes the request's fields once per result; a huge one is cut."""
    grammar = 'root ::= "a"\n' + "".join(f'x{i} ::= "b"\n' for i in range(10_000))     # ~120 KiB
    r = server.post("/completion", {"prompt": ["a", "b"], "n_cmpl": 2, "n_predict": 1, "grammar": grammar})
    assert r.status == 200, r
    results = r.json()
    assert len(results) == 4
    for res in results:
        echoed = res["generation_settings"]["grammar"]
        assert echoed.startswith('root ::= "a"') and len(echoed) < 70_000 and "characters)" in echoed


def test_failed_restore_empties_the_slot(server):
    """A restore that fails drops the slot's KV: its tokens must go too, or the next request on that
    slot would reuse a prefix that is no longer there (wrong output, silently)."""
    req = {"prompt": "the same prompt twice", "n_predict": 4, "temperature": 0, "id_slot": 0, "cache_prompt": True}
    first = server.post("/completion", req).json()
    again = server.post("/completion", req).json()
    assert again["tokens_cached"] > 0 and again["content"] == first["content"]
    r = server.post("/slots/0?action=restore", {"filename": "missing.bin"})
    assert r.status == 400, r
    after = server.post("/completion", req).json()
    assert after["tokens_cached"] == 0
    assert after["content"] == first["content"]


def test_queue_full_is_503_with_retry_after(start_server, tiny_model_path):
    """Past --max-queued waiting requests: 503 with Retry-After, counted in /metrics."""
    import threading
    s = start_server(tiny_model_path, "-np", "1", "-c", "512", "--max-queued", "1", "--metrics")
    results = []

    def one() -> None:
        r = s.post("/completion", {"prompt": "x", "n_predict": 64, "ignore_eos": True}, timeout=120)
        results.append(r)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    busy = [r for r in results if r.status == 503]
    ok = [r for r in results if r.status == 200]
    assert busy and ok and len(busy) + len(ok) == 6, results
    for r in busy:
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "unavailable_error"
    m = s.metrics()
    assert m["llamacpp:requests_rejected_total"] == len(busy)
    assert m["llamacpp:http_connections_open"] >= 1 and m["llamacpp:http_connections_rejected_total"] == 0


@pytest.fixture(scope="module")
def keyed(start_server, tiny_model_path) -> ServerProcess:
    return start_server(tiny_model_path, "-np", "1", "-c", "256", "--api-key", "sekrit")


class TestAuth:
    """With --api-key, only /health, /v1/health and the web UI's own files answer without the key."""

    @pytest.mark.parametrize("path", ["/health", "/v1/health", "/", "/app.js", "/style.css"])
    def test_public(self, keyed, path):
        assert keyed.get(path).status == 200

    @pytest.mark.parametrize("path", ["/models", "/v1/models", "/props", "/slots", "/x.js", "/v1/x.png",
                                      "/models.css"])
    def test_needs_the_key(self, keyed, path):
        r = keyed.get(path)
        assert r.status == 401, r
        assert keyed.get(path, headers={"Authorization": "Bearer sekrit"}).status != 401

    def test_post_needs_the_key(self, keyed):
        assert keyed.post("/tokenize", {"content": "a"}).status == 401
        assert keyed.post("/tokenize", {"content": "a"}, headers={"Authorization": "Bearer sekrit"}).status == 200


def test_slot_actions_need_slot_save_path(start_server, tiny_model_path):
    """llama-server refuses every slot action, erase included, without --slot-save-path."""
    s = start_server(tiny_model_path, "-np", "1", "-c", "256", slot_save=False)
    for action in ("erase", "save", "restore"):
        r = s.post(f"/slots/0?action={action}", {"filename": "a.bin"})
        assert r.status == 501, r
        assert "--slot-save-path" in r.json()["error"]["message"]


def test_engine_exception_fails_only_its_request(tiny_model_path):
    """An exception on the engine thread while serving one request (an OverflowError normalizing an
    embedding, as /v1/embeddings with embd_normalize = 10**400 once raised) fails that request only."""
    import asyncio

    from pyllama import _core
    from pyllama.engine import AsyncEngine, Request, RequestKind, fold
    from pyllama.params import ContextParams, ModelParams, SamplingParams

    model = _core.Model(str(tiny_model_path), ModelParams())

    async def main() -> Tuple[Any, Any, Optional[Any]]:
        engine = AsyncEngine(model, ContextParams(n_ctx=512, embeddings=True, n_threads=1), n_parallel=2)
        engine.start(asyncio.get_running_loop())
        try:
            good = engine.generate(Request(prompt=(1, 2, 3), max_tokens=8, sampling=SamplingParams(temperature=0),
                                           ignore_eos=True))
            bad = engine.generate(Request(prompt=(1, 2), kind=RequestKind.EMBED, embd_normalize=10**400,
                                          cache_prompt=False))
            g, b = await asyncio.gather(fold(good), fold(bad), return_exceptions=True)
            after = await fold(engine.generate(Request(prompt=(4, 5), max_tokens=2,
                                                       sampling=SamplingParams(temperature=0), ignore_eos=True)))
            return g, b, after
        finally:
            await engine.stop()

    try:
        g, b, after = asyncio.run(main())
    finally:
        model.close()
    assert isinstance(b, OverflowError)
    assert g.error is None and len(g.token_ids) == 8
    assert after.error is None and len(after.token_ids) == 2


DEEP_STACK_PROBE = """
import sys, threading
from pyllama import _core
from pyllama.params import ModelParams, SamplingParams
from pyllama.threads import start_thread
model = _core.Model(sys.argv[1], ModelParams(vocab_only=True))
n = 150_000
grammar = "root ::= r0\\n" + "".join(f"r{i} ::= r{i + 1}\\n" for i in range(n)) + f'r{n} ::= "a"\\n'
work = lambda: _core.Sampler(model, SamplingParams(grammar=grammar)).close()
if sys.argv[2] == "deep":
    start_thread(work, "deep", daemon=False).join()
else:
    t = threading.Thread(target=work); t.start(); t.join()
print("survived", flush=True)
"""


def test_deep_stack_threads_survive_what_kills_a_default_thread(tiny_model_path):
    """A 150,000-rule chain overflows a default 8 MiB thread stack in llama.cpp's grammar code
    (SIGSEGV); on a pyllama.threads thread it compiles."""
    import subprocess
    import sys
    deep = subprocess.run([sys.executable, "-c", DEEP_STACK_PROBE, str(tiny_model_path), "deep"],
                          capture_output=True, text=True, timeout=300)
    assert deep.returncode == 0 and "survived" in deep.stdout, deep.stderr[-2000:]
    default = subprocess.run([sys.executable, "-c", DEEP_STACK_PROBE, str(tiny_model_path), "default"],
                             capture_output=True, text=True, timeout=300)
    assert default.returncode != 0, "a default thread survived: the probe no longer shows the need"
