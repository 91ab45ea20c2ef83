"""The server's HTTP behaviour over a fake engine: ``create_app(config, engine=FakeEngine(...))``.

No model runs here: the app gets a vocabulary-only model (for tokenizing and the chat template)
and an engine double that answers from a script, so error statuses, error events in streams,
aborts on disconnect, /health and the shapes of the answers are tested in milliseconds.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable, List, Optional

import pytest

import pyllama
from pyllama.engine import EngineStoppedError, RequestOutput
from pyllama.errors import ContextLimitError, KVCacheFullError
from pyllama.server import create_app, parse_args, wait_ready

VOCAB = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "ggml-vocab-llama-spm.gguf"
HI = [{"role": "user", "content": "hi"}]


class FakeStream:
    """What AsyncEngine.generate() returns: async iteration over outputs; close() aborts."""

    def __init__(self, engine: "FakeEngine", request, outputs: List[RequestOutput]):
        self.engine, self.request_id, self._outputs = engine, request.id, list(outputs)
        self.closed = False

    def __aiter__(self) -> "FakeStream":
        return self

    async def __anext__(self) -> RequestOutput:
        await asyncio.sleep(self.engine.delay)
        if self.closed or not self._outputs:
            raise StopAsyncIteration
        o = self._outputs.pop(0)
        if o.finished:
            self._outputs.clear()
        return o

    def close(self) -> None:
        if self._outputs and not self.closed:
            self.engine.aborted.append(self.request_id)
        self.closed = True


def text_outputs(request, pieces: List[str], finish: str = "stop", error: Optional[BaseException] = None):
    n = len(pieces)
    usage = {"prompt_tokens": len(request.prompt), "completion_tokens": n, "total_tokens": len(request.prompt) + n,
             "prompt_tokens_details": {"cached_tokens": 0}}
    outs = [RequestOutput(request.id, text=p, token_ids=[100 + i]) for i, p in enumerate(pieces)]
    outs.append(RequestOutput(request.id, finished=True, finish_reason="error" if error else finish, error=error,
                              usage=usage, timings={"prompt_n": len(request.prompt), "predicted_n": n}))
    return outs


class FakeEngine:
    """An engine double: ``script(request)`` gives a request's outputs (or raises, as submission would)."""

    def __init__(self, model: "pyllama.Model", script: Callable[[Any], List[RequestOutput]], delay: float = 0.0):
        self.model, self.script, self.delay = model, script, delay
        self.running = False
        self.fatal_error: Optional[str] = None
        self.n_ctx_slot, self.can_shift = 256, True
        self.submitted: List[Any] = []
        self.aborted: List[str] = []

    def start(self, loop=None) -> None:
        self.running = True

    async def stop(self, drain: bool = False, timeout: Optional[float] = None) -> None:
        self.running = False

    def generate(self, request) -> FakeStream:
        if not self.running:
            raise EngineStoppedError("the engine is not running")
        self.submitted.append(request)
        return FakeStream(self, request, self.script(request))

    async def slots(self) -> List[dict]:
        return [{"id": 0, "is_processing": False}]


@pytest.fixture(scope="module")
def vocab_model():
    m = pyllama.Model(VOCAB, pyllama.ModelParams(vocab_only=True))
    yield m
    m.close()


def run(vocab_model, script, scenario, *flags: str, delay: float = 0.0) -> FakeEngine:
    from aiohttp.test_utils import TestClient, TestServer

    engine = FakeEngine(vocab_model, script, delay)

    async def main() -> None:
        app = create_app(parse_args(["-m", str(VOCAB), *flags], environ={}), engine=engine)
        async with TestClient(TestServer(app)) as client:
            await wait_ready(app, timeout=30)
            await scenario(client, engine)

    asyncio.run(main())
    return engine


def hello(request):
    return text_outputs(request, ["Hel", "lo"])


async def sse_events(r) -> List[Any]:
    raw = (await r.read()).decode()
    return [json.loads(ln[6:]) if ln[6:] != "[DONE]" else "[DONE]" for ln in raw.splitlines()
            if ln.startswith("data: ")]


def test_generation_endpoints_answer_from_the_engine(vocab_model):
    async def scenario(client, engine):
        r = await client.post("/v1/chat/completions", json={"messages": HI, "n": 2, "max_tokens": 5})
        body = await r.json()
        assert r.status == 200, body
        assert [c["message"]["content"] for c in body["choices"]] == ["Hello", "Hello"]
        assert body["usage"]["completion_tokens"] == 4 and body["usage"]["prompt_tokens"] == len(engine.submitted[0].prompt)
        assert engine.submitted[0].max_tokens == 5 and len(engine.submitted) == 2
        r = await client.post("/v1/completions", json={"prompt": "a", "stream": True,
                                                       "stream_options": {"include_usage": True}})
        events = await sse_events(r)
        assert events[-1] == "[DONE]" and "".join(e["choices"][0]["text"] for e in events[:-2]) == "Hello"
        assert events[-2]["usage"]["completion_tokens"] == 2
        r = await client.post("/completion", json={"prompt": "a"})
        d = await r.json()
        assert d["content"] == "Hello" and d["stop"] is True and d["tokens_predicted"] == 2
        r = await client.post("/v1/messages", json={"messages": HI, "max_tokens": 8})
        d = await r.json()
        assert d["content"] == [{"type": "text", "text": "Hello"}] and d["stop_reason"] == "end_turn"

    run(vocab_model, hello, scenario)


@pytest.mark.parametrize("exc,status,type_", [
    (ContextLimitError("the prompt has 300 tokens, the context 256", n_tokens=300, n_ctx=256), 400,
     "exceed_context_size_error"),
    (KVCacheFullError("no KV cache slot", 1), 503, "unavailable_error"),
    (EngineStoppedError("stopped"), 503, "unavailable_error"),
    (RuntimeError("boom"), 500, "server_error"),
])
def test_one_table_maps_errors_for_every_api(vocab_model, exc, status, type_):
    def script(request):
        raise exc

    async def scenario(client, engine):
        for path, body in (("/v1/chat/completions", {"messages": HI}), ("/completion", {"prompt": "a"}),
                           ("/v1/completions", {"prompt": "a"}), ("/v1/messages", {"messages": HI, "max_tokens": 4}),
                           ("/v1/responses", {"input": "hi"})):
            r = await client.post(path, json=body)
            d = await r.json()
            assert r.status == status, (path, d)
            assert d["error"]["code"] == status and d["error"]["type"] == type_, (path, d)
            if path == "/v1/messages":
                assert d["type"] == "error"          # Anthropic's shape, rendered from the same table
            if isinstance(exc, ContextLimitError):
                assert d["error"]["n_prompt_tokens"] == 300 and d["error"]["n_ctx"] == 256

    run(vocab_model, script, scenario)


def test_an_error_mid_stream_is_an_error_event(vocab_model):
    def script(request):
        return text_outputs(request, ["Hel"], error=KVCacheFullError("no KV cache slot", 1))

    async def scenario(client, engine):
        r = await client.post("/v1/chat/completions", json={"messages": HI, "stream": True})
        assert r.status == 200
        events = await sse_events(r)
        assert events[-1] == {"error": {"code": 503, "message": "no KV cache slot", "type": "unavailable_error"}}
        r = await client.post("/v1/chat/completions", json={"messages": HI})
        assert r.status == 503

    run(vocab_model, script, scenario)


def test_a_client_that_leaves_mid_stream_aborts_its_request(vocab_model):
    def script(request):
        return text_outputs(request, ["x"] * 1000)

    async def scenario(client, engine):
        r = await client.post("/completion", json={"prompt": "a", "stream": True})
        assert r.status == 200
        await r.content.readline()
        r.close()
        for _ in range(200):
            if engine.aborted:
                break
            await asyncio.sleep(0.01)
        assert engine.aborted == [engine.submitted[0].id]

    run(vocab_model, script, scenario, delay=0.005)


def test_bad_input_is_a_400_before_the_engine(vocab_model):
    async def scenario(client, engine):
        for path, body, msg in (
                ("/completion", {"prompt": [10 ** 9]}, "out of range"),
                ("/completion", {"prompt": "a", "logit_bias": [[10 ** 9, 1]]}, "out of range"),
                ("/completion", {"prompt": "a", "lora": [{"id": 0, "scale": 1}]}, "no LoRA adapter"),
                ("/v1/chat/completions", {"messages": HI, "response_format": {"type": "yaml"}}, "response_format"),
                ("/completion", {"prompt": "a", "json_schema": {"type": "object"}, "grammar": "root ::= x"},
                 "not both")):
            r = await client.post(path, json=body)
            d = await r.json()
            assert r.status == 400 and msg in d["error"]["message"], (path, d)
        r = await client.post("/completion", data=b"{not json")
        assert r.status == 400 and "invalid JSON" in (await r.json())["error"]["message"]
        assert not engine.submitted

    run(vocab_model, hello, scenario)


def test_health_reports_a_fatal_engine_error(vocab_model):
    async def scenario(client, engine):
        assert (await client.get("/health")).status == 200
        engine.fatal_error = "llama_decode: lost the RPC worker"
        r = await client.get("/health")
        assert r.status == 503 and "lost the RPC worker" in (await r.json())["error"]["message"]
        engine.fatal_error = None
        engine.running = False
        assert (await client.post("/completion", json={"prompt": "a"})).status == 503

    run(vocab_model, hello, scenario)


def test_tokenize_and_templates_run_on_the_front_end(vocab_model):
    async def scenario(client, engine):
        toks = (await (await client.post("/tokenize", json={"content": "hello world"})).json())["tokens"]
        assert toks == vocab_model.vocab.tokenize("hello world", add_special=False, parse_special=True)
        back = await (await client.post("/detokenize", json={"tokens": toks})).json()
        assert back["content"].strip() == "hello world"
        prompt = (await (await client.post("/apply-template", json={"messages": HI})).json())["prompt"]
        assert "<|im_start|>user\nhi<|im_end|>" in prompt        # no template in the vocab: chatml
        n = (await (await client.post("/v1/chat/completions/input_tokens", json={"messages": HI})).json())
        assert n["input_tokens"] == len(vocab_model.vocab.tokenize(prompt, add_special=True, parse_special=True))

    run(vocab_model, hello, scenario)
