"""The official ``openai`` Python client against a running server (chat model, and the tiny model
for embeddings): responses parse into the SDK's types, and errors raise the SDK's exceptions."""
from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say something."}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                   "required": ["city"]}}}


def sdk(server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(chat_server):
    with sdk(chat_server) as c:
        yield c


@pytest.fixture(scope="module")
def embd_server(start_server, tiny_model_path):
    # automatic slots (4, unified KV), as llama-server's default
    return start_server(tiny_model_path, "-c", "2048", "--embeddings", "--pooling", "mean")


@pytest.fixture(scope="module")
def embd_client(embd_server):
    with sdk(embd_server) as c:
        yield c


# ---------------------------------------------------------------- models, completions

def test_models_list(client, chat_model_path):
    page = client.models.list()
    assert [m.id for m in page.data] == [str(chat_model_path)]
    m = page.data[0]
    assert m.object == "model" and m.owned_by == "llamacpp" and m.created > 0
    assert m.meta["n_vocab"] == 151936 and m.meta["n_embd"] == 64


def test_completion_text_and_max_tokens(client):
    r = client.completions.create(model="my-model", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl")
    assert r.model == "my-model"                    # the requested name is echoed
    (c,) = r.choices
    assert c.index == 0 and isinstance(c.text, str) and c.logprobs is None
    assert r.usage.prompt_tokens == 4               # qwen2 adds no BOS: "Once", " upon", " a", " time"
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    if c.finish_reason == "length":
        assert r.usage.completion_tokens == 5
    else:
        assert c.finish_reason == "stop" and r.usage.completion_tokens <= 5
    r1 = client.completions.create(model="m", prompt="Once upon a time", max_tokens=1, temperature=0)
    assert r1.usage.completion_tokens == 1 and r1.choices[0].finish_reason == "length"
    assert c.text.startswith(r1.choices[0].text)    # greedy: the same first token


def test_completion_n_logprobs_echo(client):
    prompt = "Hello world"
    r = client.completions.create(model="m", prompt=prompt, max_tokens=4, n=2, logprobs=2, echo=True,
                                  temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.completion_tokens == sum(len(c.logprobs.tokens) for c in r.choices)
    for c in r.choices:
        assert c.text.startswith(prompt)            # echo
        lp = c.logprobs
        n = len(lp.tokens)
        assert 1 <= n <= 4 and len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
        assert lp.text_offset[0] == len(prompt)
        assert lp.text_offset == sorted(lp.text_offset)
        for chosen, lp_val, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
            assert lp_val <= 0 and 1 <= len(top) <= 2
            # greedy: the chosen token is the most likely one
            assert math.isclose(lp_val, max(top.values()), abs_tol=1e-5)
            assert all(v <= 0 for v in top.values())
        joined = "".join(lp.tokens)
        if "\ufffd" not in joined:
            assert c.text == prompt + joined
    assert r.choices[0].text == r.choices[1].text   # temperature 0: both choices agree


def test_completion_several_prompts(client, chat_server):
    prompts = ["Hello there my friend", "Hi"]
    n_prompt = [len(chat_server.post("/tokenize", {"content": p, "add_special": True}).json()["tokens"])
                for p in prompts]
    r = client.completions.create(model="m", prompt=prompts, max_tokens=2, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.usage.prompt_tokens == sum(n_prompt)          # every prompt counts
    assert r.usage.completion_tokens == 4
    alone = [client.completions.create(model="m", prompt=p, max_tokens=2, temperature=0).choices[0].text
             for p in prompts]
    assert [c.text for c in r.choices] == alone
    r = client.completions.create(model="m", prompt=prompts, max_tokens=2, n=2, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [alone[0], alone[0], alone[1], alone[1]]
    assert r.usage.prompt_tokens == sum(n_prompt)          # n choices share their prompt
    assert r.usage.completion_tokens == 8


def test_completion_stop(client):
    full = client.completions.create(model="m", prompt="The list:", max_tokens=12, temperature=0)
    text = full.choices[0].text
    k = len(text) // 2
    stop = next((text[i:i + 2] for i in range(k, len(text) - 1) if text[i:i + 2].strip()), None)
    if stop is None:
        pytest.skip(f"no usable stop string in {text!r}")
    r = client.completions.create(model="m", prompt="The list:", max_tokens=12, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == text[:text.index(stop)]


def test_completion_seed_reproducible(client):
    kw = dict(model="m", prompt="Random words:", max_tokens=8, temperature=1.0, top_p=1.0)
    a = client.completions.create(seed=1234, **kw).choices[0].text
    b = client.completions.create(seed=1234, **kw).choices[0].text
    c = client.completions.create(seed=999, **kw).choices[0].text
    assert a == b
    assert a != c


# ---------------------------------------------------------------- chat

def test_chat_non_stream_equals_stream(client):
    kw = dict(model="m", messages=MESSAGES, max_tokens=10, temperature=0, seed=3)
    full = client.chat.completions.create(**kw)
    assert full.object == "chat.completion" and full.id.startswith("chatcmpl")
    (choice,) = full.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length") and not choice.message.tool_calls
    assert full.usage.completion_tokens <= 10

    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert {c.id for c in chunks} == {chunks[0].id} and all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    usage = [c for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0] is chunks[-1] and chunks[-1].choices == []
    assert usage[0].usage.completion_tokens == full.usage.completion_tokens
    assert usage[0].usage.prompt_tokens == full.usage.prompt_tokens

    plain = list(client.chat.completions.create(stream=True, **kw))
    assert all(c.usage is None for c in plain)      # no usage chunk unless asked
    assert "".join(c.choices[0].delta.content or "" for c in plain if c.choices) == text


def test_chat_logprobs(client):
    r = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
                                       top_logprobs=3)
    c = r.choices[0]
    entries = c.logprobs.content
    assert len(entries) == r.usage.completion_tokens - (1 if c.finish_reason == "stop" else 0)
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert e.top_logprobs[0].token == e.token and math.isclose(e.top_logprobs[0].logprob, e.logprob,
                                                                   abs_tol=1e-6)
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token
    assert "".join(e.token for e in entries) == c.message.content or "\ufffd" in c.message.content
    r2 = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, temperature=0)
    assert r2.choices[0].logprobs is None           # not asked for
    # streamed: the same tokens and log-probabilities, spread over the chunks
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=5, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [(e.token, round(e.logprob, 4)) for e in entries]
    assert all(len(e.top_logprobs) == 3 for e in streamed)


def test_chat_json_schema(client):
    schema = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                               "ok": {"type": "boolean"}},
              "required": ["color", "ok"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Pick a color."}], temperature=0, max_tokens=256,
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}})
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    jsonschema.validate(json.loads(c.message.content), schema)


def test_chat_tools_accepted(client):
    for tool_choice in ("auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}}):
        r = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL],
            tool_choice=tool_choice, max_tokens=12, temperature=0)
        c = r.choices[0]
        assert c.message.role == "assistant"
        assert c.finish_reason in ("stop", "length", "tool_calls")
        if c.message.tool_calls:                  # a random model may or may not call it
            assert c.finish_reason == "tool_calls"
            for call in c.message.tool_calls:
                assert call.type == "function" and call.function.name == "get_weather" and call.id
                assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
        else:
            assert isinstance(c.message.content, str)
    # a conversation with a tool call and its result renders and runs
    r = client.chat.completions.create(model="m", tools=[WEATHER_TOOL], max_tokens=3, temperature=0, messages=[
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


# ---------------------------------------------------------------- embeddings

def test_embeddings(embd_client, embd_server):
    texts = ["hello world", "a second, somewhat longer input"]
    r = embd_client.embeddings.create(model="e", input=texts, encoding_format="float")
    assert r.object == "list" and r.model == "e"
    assert [d.index for d in r.data] == [0, 1]
    vecs = np.array([d.embedding for d in r.data])
    assert vecs.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)     # unit norm by default
    assert not np.allclose(vecs[0], vecs[1])
    n_tokens = sum(len(embd_server.post("/tokenize", {"content": t, "add_special": True}).json()["tokens"])
                   for t in texts)
    assert r.usage.prompt_tokens == r.usage.total_tokens == n_tokens

    # the SDK's default asks for base64 and decodes it: the same vectors
    r64 = embd_client.embeddings.create(model="e", input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in r64.data]), vecs, atol=1e-6)

    # and raw base64 is little-endian float32
    raw = embd_server.post("/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    assert raw.status == 200, raw
    (item,) = raw.json()["data"]
    decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, vecs[0], atol=1e-6)

    # one string: one vector, the same as in the batch
    one = embd_client.embeddings.create(model="e", input=texts[1], encoding_format="float")
    np.testing.assert_allclose(one.data[0].embedding, vecs[1], atol=1e-5)

    # embd_normalize -1: the raw pooled vector, same direction
    raw = embd_server.post("/v1/embeddings", {"input": texts[0], "embd_normalize": -1}).json()
    v = np.array(raw["data"][0]["embedding"])
    assert abs(np.linalg.norm(v) - 1.0) > 1e-3
    np.testing.assert_allclose(v / np.linalg.norm(v), vecs[0], atol=1e-5)


def test_embeddings_batched_equal_single_per_slot_kv(inproc, tiny_model_path):
    texts = ["hello world", "a second, somewhat longer input", "x y z w v u t s r q p o n m l k j i h"]

    async def scenario(client):
        async def embed(inp):
            r = await client.post("/v1/embeddings", json={"input": inp, "encoding_format": "float"})
            assert r.status == 200, await r.text()
            return [d["embedding"] for d in (await r.json())["data"]]
        alone = [(await embed(t))[0] for t in texts]
        return alone, await embed(texts)

    alone, batch = inproc(["-m", str(tiny_model_path), "-np", "4", "-c", "2048", "--embeddings", "--pooling", "mean"],
                          scenario)
    np.testing.assert_allclose(batch, alone, atol=1e-5)


def test_embeddings_off_on_chat_server(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.embeddings.create(model="m", input="x")
    assert e.value.status_code == 501 and e.value.body["type"] == "not_supported_error"


# ---------------------------------------------------------------- errors as SDK exceptions

def test_errors_are_sdk_exceptions(client):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as e:                 # wrong type
        client.chat.completions.create(model="m", messages=msgs, max_tokens="lots")
    assert "max_tokens" in e.value.message and e.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as e:                 # out of range
        client.chat.completions.create(model="m", messages=msgs, top_p=2)
    assert "top_p" in e.value.message
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="m", prompt="x", n=0)
    with pytest.raises(openai.BadRequestError) as e:                 # over the context
        client.completions.create(model="m", prompt="hello " * 700, max_tokens=2)
    body = e.value.body
    assert body["type"] == "exceed_context_size_error" and body["n_ctx"] == 512
    assert body["n_prompt_tokens"] >= 700
    with pytest.raises(openai.BadRequestError):                      # the same when streaming
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello " * 700}],
                                            stream=True))
    with pytest.raises(openai.BadRequestError) as e:                 # a bad JSON schema
        client.chat.completions.create(model="m", messages=msgs, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 123}}})
    assert "schema" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:                 # an unknown tool_choice function
        client.chat.completions.create(model="m", messages=msgs, tools=[WEATHER_TOOL],
                                       tool_choice={"type": "function", "function": {"name": "nope"}})
    assert "nope" in e.value.message
    with pytest.raises(openai.NotFoundError):                        # an unknown route
        client.models.retrieve("some-model")
    with pytest.raises(openai.NotFoundError) as e:
        client.get("/no/such/route", cast_to=object)
    assert e.value.body["type"] == "not_found_error"
    # and the server still answers
    assert client.completions.create(model="m", prompt="ok", max_tokens=1).usage.completion_tokens == 1
