"""POST /v1/responses and /v1/responses/input_tokens (OpenAI's Responses API), through the openai SDK.

The request is converted onto the chat completions path, as llama-server does, so the same greedy
request gives the same text on /v1/chat/completions, /v1/responses and its stream."""
from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

from tool_support import FORCED_MAX_TOKENS, LLAMA31, PIN_DATE, SCHEMAS, TOOLS  # noqa: E402

INSTR = "You are terse."
USER = "Write a limerick about python exceptions"


@pytest.fixture(scope="module")
def client(chat_server):
    with openai.OpenAI(base_url=chat_server.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        assert hasattr(c, "responses"), openai.__version__
        yield c


def chat_text(server, max_tokens: int, **extra: Any) -> Dict[str, Any]:
    r = server.post("/v1/chat/completions", {"messages": [{"role": "system", "content": INSTR},
                                                          {"role": "user", "content": USER}],
                                             "max_tokens": max_tokens, "temperature": 0, **extra})
    assert r.status == 200, r.text
    return r.json()


def test_create_matches_chat(chat_server, client):
    res = client.responses.create(model="m", instructions=INSTR, input=USER, max_output_tokens=12, temperature=0)
    assert res.object == "response" and res.status == "completed" and res.id.startswith("resp_")
    assert res.model == "m"
    chat = chat_text(chat_server, 12)
    want = chat["choices"][0]["message"]["content"]
    assert res.output_text == want and want
    (item,) = res.output
    assert item.type == "message" and item.role == "assistant" and item.status == "completed"
    assert item.content[0].type == "output_text" and item.content[0].text == want
    # usage: the tokens generated (max_output_tokens honoured: random weights do not stop early here)
    assert res.usage.output_tokens == chat["usage"]["completion_tokens"] == 12
    assert res.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert res.usage.total_tokens == res.usage.input_tokens + res.usage.output_tokens


def test_stream_reassembles(client):
    kw = dict(model="m", instructions=INSTR, input=USER, max_output_tokens=10, temperature=0)
    full = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for t in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
              "response.output_text.done", "response.content_part.done", "response.output_item.done"):
        assert t in types, types
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == full.output_text
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas
    final = events[-1].response
    assert final.status == "completed" and final.output_text == full.output_text
    assert final.usage.output_tokens == full.usage.output_tokens == 10
    assert final.usage.input_tokens == full.usage.input_tokens
    # the SDK's stream helper folds the events into the same response
    with client.responses.stream(**kw) as s:
        for _ in s:
            pass
        folded = s.get_final_response()
    assert folded.output_text == full.output_text


def test_message_list_input(chat_server, client):
    """An input item list: messages in both shapes, an earlier assistant turn; same as the chat request."""
    items = [{"role": "system", "content": INSTR},
             {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hello"}]},
             {"role": "user", "content": USER}]
    res = client.responses.create(model="m", input=items, max_output_tokens=6, temperature=0)
    chat = chat_server.post("/v1/chat/completions", {"messages": [
        {"role": "system", "content": INSTR}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"}, {"role": "user", "content": USER}],
        "max_tokens": 6, "temperature": 0}).json()
    assert res.output_text == chat["choices"][0]["message"]["content"]
    assert res.usage.input_tokens == chat["usage"]["prompt_tokens"]


def test_input_tokens(chat_server):
    body = {"model": "m", "instructions": INSTR, "input": USER}
    r = chat_server.post("/v1/responses/input_tokens", body)
    assert r.status == 200, r.text
    assert r.json()["object"] == "response.input_tokens"
    prompt = chat_server.post("/apply-template", {"messages": [{"role": "system", "content": INSTR},
                                                               {"role": "user", "content": USER}]}).json()["prompt"]
    toks = chat_server.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    assert r.json()["input_tokens"] == len(toks)
    # the same count on the chat body (llama-server's /v1/chat/completions/input_tokens)
    r2 = chat_server.post("/v1/chat/completions/input_tokens", {"messages": [
        {"role": "system", "content": INSTR}, {"role": "user", "content": USER}]})
    assert r2.json() == r.json()
    # and it is what a generation reports as input tokens
    res = chat_server.post("/v1/responses", {**body, "max_output_tokens": 1}).json()
    assert res["usage"]["input_tokens"] == len(toks)


def test_tools_accepted(client):
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"]["parameters"]} for t in TOOLS]
    res = client.responses.create(model="m", input=USER, tools=tools, max_output_tokens=4, temperature=0)
    assert res.status == "completed" and res.usage.output_tokens <= 4
    # a tool call and its output sent back render and run
    res = client.responses.create(model="m", tools=tools, max_output_tokens=3, temperature=0, input=[
        {"role": "user", "content": USER},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Berlin"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    assert res.status == "completed"


@pytest.mark.parametrize("body, msg", [
    ({}, "'input' is required"),
    ({"input": 3}, "input"),
    ({"input": [{"type": "nonsense"}]}, "Cannot determine type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "x"}]}]}, "input_file"),
    ({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
])
def test_bad_input(chat_server, body, msg):
    for path in ("/v1/responses", "/v1/responses/input_tokens"):
        r = chat_server.post(path, body)
        assert r.status == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == 400 and msg in err["message"]


def test_bad_input_sdk(client):
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input=[{"type": "nonsense"}])  # type: ignore[list-item]


# ---------------------------------------------------------------- a real tool call (Llama 3.1's grammar)

@pytest.fixture(scope="module")
def llama_server(start_server, template_model):  # noqa: F811
    return start_server(template_model(*LLAMA31), "-np", "1", "-c", "2048")


def test_forced_tool_call(llama_server):
    """As test_server_tools.test_forced_tool_call_sdk: Llama 3.1's "required" grammar with the ``{"``
    token biased up makes a random model call a tool; it comes back as a function_call item."""
    toks = llama_server.post("/tokenize", {"content": '{"'}).json()["tokens"]
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"]["parameters"]} for t in TOOLS]
    with openai.OpenAI(base_url=llama_server.url + "/v1", api_key="x", max_retries=0, timeout=300) as c:
        kw: Dict[str, Any] = dict(model="m", input="What is the weather in Berlin?", tools=tools,
                                  tool_choice="required", max_output_tokens=FORCED_MAX_TOKENS, temperature=0,
                                  extra_body={"logit_bias": {str(toks[0]): 100}, **PIN_DATE})
        res = c.responses.create(**kw)
        calls = [o for o in res.output if o.type == "function_call"]
        assert len(calls) == 1, res.output
        call = calls[0]
        assert call.name in SCHEMAS and call.call_id and call.id == "fc_" + call.call_id
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
        assert res.usage.output_tokens < FORCED_MAX_TOKENS

        events: List[Any] = list(c.responses.create(stream=True, **kw))
        added = [e.item for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
        assert len(added) == 1 and added[0].name == call.name
        args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert args == call.arguments
        final = events[-1].response
        (fc,) = [o for o in final.output if o.type == "function_call"]
        assert fc.arguments == call.arguments and fc.call_id == added[0].call_id


def test_text_format_json_schema(client):
    """Responses' ``text.format`` (flattened json_schema) is chat's response_format: the grammar holds."""
    from test_server_tools import MAX_TOKENS, SCHEMA
    fmt = {"type": "json_schema", "name": "a", "schema": SCHEMA, "strict": True}
    res = client.responses.create(model="m", input="Answer in JSON.", text={"format": fmt},
                                  max_output_tokens=MAX_TOKENS, temperature=0)
    assert res.usage.output_tokens < MAX_TOKENS, res.output_text
    jsonschema.validate(json.loads(res.output_text), SCHEMA)
