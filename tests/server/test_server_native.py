"""llama-server's own endpoints, in process: /completion (every prompt shape, streaming),
/tokenize, /detokenize, /apply-template, /props, /health, /openapi.json, /infill, /reranking..."""
from __future__ import annotations

import json

import pytest
from aio_helpers import post_json  # noqa: E402


def tiny_argv(path, *more):
    return ["-m", str(path), "-np", "2", "-c", "1024", *more]




async def read_sse(resp):
    """A native stream: the list of raw lines' data payloads (and the raw text, to look for [DONE])."""
    raw = (await resp.read()).decode()
    return [ln[len("data: "):] for ln in raw.splitlines() if ln.startswith("data: ")], raw


def test_completion_prompt_shapes(inproc, tiny_model_path):
    async def scenario(client):
        greedy = {"n_predict": 4, "temperature": 0}
        tok = lambda text, special=True: post_json(client, "/tokenize",  # noqa: E731
                                                   {"content": text, "add_special": special})
        # a string
        d = await post_json(client, "/completion", {"prompt": "Hello world", **greedy})
        expected = (await tok("Hello world"))["tokens"]
        assert expected[0] == 1                                 # llama-spm adds BOS
        assert d["stop"] is True and isinstance(d["content"], str) and d["index"] == 0
        assert d["tokens_predicted"] == 4 and d["stop_type"] == "limit" and d["tokens_evaluated"] == len(expected)
        assert d["generation_settings"]["n_predict"] == 4 and d["generation_settings"]["n_ctx"] == 512
        assert d["timings"]["predicted_n"] == 4 and d["id_slot"] in (0, 1)
        assert d["tokens"] == []                               # only with return_tokens
        # the same prompt as tokens: the same continuation
        d2 = await post_json(client, "/completion", {"prompt": expected, **greedy, "return_tokens": True})
        assert d2["content"] == d["content"] and len(d2["tokens"]) == 4
        assert d2["tokens_evaluated"] == len(expected)
        # mixed tokens and text
        t_world = (await tok(" again", special=False))["tokens"]
        d3 = await post_json(client, "/completion", {"prompt": [*expected, " again"], **greedy})
        assert d3["tokens_evaluated"] == len(expected) + len(t_world)
        d3b = await post_json(client, "/completion", {"prompt": expected + t_world, **greedy})
        assert d3b["content"] == d3["content"]
        # several prompts: an array, in order, each as if alone
        alone = [(await post_json(client, "/completion", {"prompt": p, **greedy}))["content"]
                 for p in ("First one", "Second one")]
        arr = await post_json(client, "/completion", {"prompt": ["First one", "Second one"], **greedy})
        assert isinstance(arr, list) and [x["index"] for x in arr] == [0, 1]
        assert [x["content"] for x in arr] == alone
        # n_probs
        d4 = await post_json(client, "/completion", {"prompt": "Hello world", **greedy, "n_probs": 3})
        probs = d4["completion_probabilities"]
        assert len(probs) == 4
        for p in probs:
            assert len(p["top_logprobs"]) == 3 and p["top_logprobs"][0]["id"] == p["id"]   # greedy
            assert bytes(p["bytes"]).decode("utf-8", "replace") == p["token"]
        # a stop word from the text itself
        text = d["content"]
        stop = text[len(text) // 2:len(text) // 2 + 2]
        if stop.strip():
            d5 = await post_json(client, "/completion", {"prompt": "Hello world", **greedy, "stop": [stop]})
            assert d5["stop_type"] == "word" and d5["stopping_word"] == stop
            assert d5["content"] == text[:text.index(stop)]

    inproc(tiny_argv(tiny_model_path), scenario)


def test_completion_stream(inproc, tiny_model_path):
    async def scenario(client):
        body = {"prompt": "Once upon", "n_predict": 6, "temperature": 0}
        full = await post_json(client, "/completion", body)
        r = await client.post("/completion", json={**body, "stream": True})
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        events, raw = await read_sse(r)
        assert "[DONE]" not in raw                              # llama-server's native streams have none
        chunks = [json.loads(e) for e in events]
        *body_chunks, last = chunks
        assert body_chunks and all(c["stop"] is False and isinstance(c["content"], str) for c in body_chunks)
        assert last["stop"] is True and "timings" in last and last["tokens_predicted"] == 6
        assert last["timings"]["predicted_n"] == 6
        assert "".join(c["content"] for c in chunks) == full["content"]
        assert sum(len(c["tokens"]) for c in chunks) == 6
        # several prompts stream with their index
        r = await client.post("/completion", json={**body, "prompt": ["a b", "c d"], "stream": True})
        finals = [c for c in map(json.loads, (await read_sse(r))[0]) if c["stop"]]
        assert sorted(c["index"] for c in finals) == [0, 1]

    inproc(tiny_argv(tiny_model_path), scenario)


def test_tokenize_detokenize(inproc, tiny_model_path):
    async def scenario(client):
        text = "Hello world, ünïcode 😀 done"
        plain = (await post_json(client, "/tokenize", {"content": text}))["tokens"]
        assert all(isinstance(t, int) for t in plain) and plain[0] != 1     # add_special defaults to false
        special = (await post_json(client, "/tokenize", {"content": text, "add_special": True}))["tokens"]
        assert special == [1] + plain
        pieces = (await post_json(client, "/tokenize", {"content": text, "with_pieces": True}))["tokens"]
        assert [p["id"] for p in pieces] == plain
        raw = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
        assert raw.decode().strip() == text                  # pieces are the text (byte tokens as ints)
        assert any(isinstance(p["piece"], list) for p in pieces)                # the emoji's byte tokens
        back = await post_json(client, "/detokenize", {"tokens": plain})
        assert back["content"] == text
        assert (await post_json(client, "/detokenize", {"tokens": []}))["content"] == ""
        # special tokens are parsed by default, and not when asked
        ids = (await post_json(client, "/tokenize", {"content": "</s>"}))["tokens"]
        assert ids == [2]
        ids = (await post_json(client, "/tokenize", {"content": "</s>", "parse_special": False}))["tokens"]
        assert 2 not in ids and len(ids) > 1

    inproc(tiny_argv(tiny_model_path), scenario)


def test_health_props_models_openapi(inproc, tiny_model_path):
    async def scenario(client):
        r = await client.get("/health")
        assert r.status == 200 and await r.json() == {"status": "ok"}
        props = await (await client.get("/props")).json()
        assert props["total_slots"] == 2 and props["model_path"] == str(tiny_model_path)
        assert props["default_generation_settings"]["n_ctx"] == 512
        assert props["default_generation_settings"]["params"]["temperature"] == 0.8
        assert props["bos_token"] == "<s>" and props["eos_token"] == "</s>"
        assert props["endpoint_slots"] is True and props["endpoint_metrics"] is False
        assert "im_start" in props["chat_template"]            # no template in the model: chatml
        assert props["build_info"].startswith("pyllama")
        models = await (await client.get("/v1/models")).json()
        assert models["data"][0]["id"] == str(tiny_model_path) and models["data"][0]["meta"]["n_vocab"] == 32000
        slots = await (await client.get("/slots")).json()
        assert [s["id"] for s in slots] == [0, 1] and all(s["n_ctx"] == 512 for s in slots)
        r = await client.get("/lora-adapters")
        assert r.status == 200 and await r.json() == []

        doc = await (await client.get("/openapi.json")).json()
        assert doc["openapi"].startswith("3.") and doc["info"]["title"]
        post = doc["paths"]["/v1/chat/completions"]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        name = ref.rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
        assert "messages" in schema["properties"] and "messages" in schema["required"]
        for path in ("/completion", "/v1/completions", "/v1/embeddings", "/tokenize", "/infill", "/health"):
            assert path in doc["paths"]
        # every $ref resolves
        refs = []

        def walk(x):
            if isinstance(x, dict):
                if "$ref" in x:
                    refs.append(x["$ref"])
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)
        walk(doc)
        assert refs and all(r.startswith("#/components/schemas/") and r.split("/")[-1] in doc["components"]["schemas"]
                            for r in refs)
        return doc

    doc = inproc(tiny_argv(tiny_model_path), scenario)
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(doc)


def test_disabled_endpoints(inproc, tiny_model_path):
    async def scenario(client):
        for path, body in (("/reranking", {"query": "q", "documents": ["a"]}),
                           ("/rerank", {"query": "q", "documents": ["a"]}),
                           ("/v1/rerank", {"query": "q", "documents": ["a"]}),
                           ("/embedding", {"content": "x"}), ("/v1/embeddings", {"input": "x"}),
                           ("/infill", {"input_prefix": "a", "input_suffix": "b"}),     # llama-spm: no FIM
                           ("/props", {"n_ctx": 1})):
            d = await post_json(client, path, body, 501)
            assert d["error"]["type"] == "not_supported_error" and d["error"]["code"] == 501
        r = await client.get("/metrics")
        assert r.status == 501 and "--metrics" in (await r.json())["error"]["message"]
        r = await client.post("/slots/0?action=save", json={"filename": "a.bin"})
        assert r.status == 501                                   # no --slot-save-path
        r = await client.post("/slots/0?action=erase")           # erase too, as llama-server
        assert r.status == 501 and "--slot-save-path" in (await r.json())["error"]["message"]

    inproc(tiny_argv(tiny_model_path), scenario)


def test_no_slots_endpoint(inproc, tiny_model_path):
    async def scenario(client):
        r = await client.get("/slots")
        assert r.status == 501

    inproc(tiny_argv(tiny_model_path, "--no-slots"), scenario)


def test_apply_template_and_props_on_chat_model(inproc, chat_model_path):
    async def scenario(client):
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
        d = await post_json(client, "/apply-template", {"messages": msgs})
        p = d["prompt"]
        assert p.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
        assert p.endswith("<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
        d = await post_json(client, "/apply-template", {"messages": msgs, "add_generation_prompt": False})
        assert d["prompt"] == p[:-len("<|im_start|>assistant\n")]
        # a final assistant message is continued (no generation prompt after it)
        d = await post_json(client, "/apply-template", {"messages": [*msgs, {"role": "assistant", "content": "Sure"}]})
        assert d["prompt"].endswith("<|im_start|>assistant\nSure")
        tools = [{"type": "function", "function": {"name": "lookup", "description": "d",
                                                   "parameters": {"type": "object", "properties": {}}}}]
        d = await post_json(client, "/apply-template", {"messages": msgs, "tools": tools})
        assert "lookup" in d["prompt"] and "<tools>" in d["prompt"]
        props = await (await client.get("/props")).json()
        assert "<tool_call>" in props["chat_template"] and props["chat_template_caps"]["supports_tools"] is True
        # a chat completion renders the same prompt
        r = await post_json(client, "/v1/chat/completions", {"messages": msgs, "max_tokens": 1})
        n = len((await post_json(client, "/tokenize", {"content": p, "add_special": True}))["tokens"])
        assert r["usage"]["prompt_tokens"] == n

    inproc(["-m", str(chat_model_path), "-np", "1", "-c", "1024"], scenario)


def test_infill(inproc, fim_model_path):
    async def scenario(client):
        body = {"input_prefix": "def add(a, b):\n    ", "input_suffix": "\n    return c\n", "n_predict": 4,
                "temperature": 0}
        d = await post_json(client, "/infill", body)
        assert d["stop"] is True and d["tokens_predicted"] == 4 and isinstance(d["content"], str)

        async def toks(text):
            return (await post_json(client, "/tokenize", {"content": text}))["tokens"]
        pre, suf = await toks(body["input_prefix"]), await toks(body["input_suffix"])
        # BOS, FIM_PRE, prefix, FIM_SUF, suffix, FIM_MID
        assert d["tokens_evaluated"] == 1 + 1 + len(pre) + 1 + len(suf) + 1
        assert body["input_prefix"].strip() in d["prompt"] and body["input_suffix"].strip() in d["prompt"]
        # streaming works the same way
        r = await client.post("/infill", json={**body, "stream": True})
        chunks = [json.loads(e) for e in (await read_sse(r))[0]]
        assert chunks[-1]["stop"] is True and "".join(c["content"] for c in chunks) == d["content"]
        await post_json(client, "/infill", {"input_prefix": "x", "input_extra": ["not an object"]}, 400)

    inproc(["-m", str(fim_model_path), "-np", "1", "-c", "512"], scenario)


def test_load_failure_is_reported(tmp_path):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from pyllama.server import create_app, parse_args, wait_ready

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"this is not a GGUF file")

    async def main():
        app = create_app(parse_args(["-m", str(bad)], environ={}))
        async with TestClient(TestServer(app)) as client:
            with pytest.raises(RuntimeError):
                await wait_ready(app, timeout=60)
            r = await client.get("/health")
            assert r.status == 503
            err = (await r.json())["error"]
            assert err["type"] == "unavailable_error" and "failed to load" in err["message"]
            r = await client.post("/completion", json={"prompt": "x"})
            assert r.status == 503
            r = await client.get("/v1/models")              # still answers, without metadata
            assert r.status == 200 and (await r.json())["data"][0]["meta"] is None

    asyncio.run(main())


def test_n_cmpl_with_a_seed_gives_distinct_reproducible_choices(inproc, tiny_model_path):
    async def scenario(client):
        body = {"prompt": "Once upon", "n_predict": 8, "temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0,
                "seed": 7, "n_cmpl": 2, "ignore_eos": True}
        a = await post_json(client, "/completion", body)
        b = await post_json(client, "/completion", body)
        assert [x["content"] for x in a] == [x["content"] for x in b]     # reproducible
        assert a[0]["content"] != a[1]["content"]                         # but the choices differ

    inproc(tiny_argv(tiny_model_path), scenario)


def test_health_reports_a_failed_engine(inproc, tiny_model_path):
    async def scenario(client):
        from pyllama.server.state import STATE
        st = client.server.app[STATE]
        assert (await client.get("/health")).status == 200
        st.engine.core.fatal_error = "llama_decode: llama.cpp aborted: lost the RPC worker"
        r = await client.get("/health")
        body = await r.json()
        assert r.status == 503 and "lost the RPC worker" in body["error"]["message"]
        # the next good decode clears it
        await post_json(client, "/completion", {"prompt": "Hi", "n_predict": 2})
        assert (await client.get("/health")).status == 200

    inproc(tiny_argv(tiny_model_path), scenario)
