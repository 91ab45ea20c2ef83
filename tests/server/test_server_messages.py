"""POST /v1/messages and /v1/messages/count_tokens (Anthropic's Messages API), over raw HTTP (the
anthropic SDK is not a dependency).

The request is converted onto the chat completions path, as llama-server does, so the same greedy
request gives the same text on /v1/chat/completions, /v1/messages and its stream."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

import pytest

from tool_support import FORCED_MAX_TOKENS, LLAMA31, PIN_DATE, SCHEMAS, TOOLS  # noqa: E402

jsonschema = pytest.importorskip("jsonschema")

SYSTEM = "You are terse."
USER = "Write a limerick about python exceptions"
BASE = {"model": "m", "system": SYSTEM, "messages": [{"role": "user", "content": USER}], "temperature": 0}
ATOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
           "input_schema": t["function"]["parameters"]} for t in TOOLS]


def events(server, body: Dict[str, Any], headers: Dict[str, str] = None) -> List[Tuple[str, Dict[str, Any]]]:
    """POST with stream=true: the (event, data) pairs of the stream."""
    r = server.post("/v1/messages", {**body, "stream": True}, headers=headers, timeout=300)
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    out, name = [], None
    for line in r.text.splitlines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert name == data["type"], (name, data)
            out.append((name, data))
            name = None
    return out


def fold(evs: List[Tuple[str, Dict[str, Any]]]) -> Dict[str, Any]:
    """Anthropic's stream folded into a Message (checking the block protocol on the way)."""
    assert evs[0][0] == "message_start" and evs[-1][0] == "message_stop"
    msg = dict(evs[0][1]["message"])
    blocks: List[Dict[str, Any]] = []
    open_ = None
    partial: Dict[int, str] = {}
    for name, d in evs[1:-1]:
        if name == "content_block_start":
            assert open_ is None and d["index"] == len(blocks)
            blocks.append(dict(d["content_block"]))
            open_ = d["index"]
        elif name == "content_block_delta":
            assert d["index"] == open_
            delta, b = d["delta"], blocks[open_]
            if delta["type"] == "text_delta":
                b["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                b["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                partial[open_] = partial.get(open_, "") + delta["partial_json"]
        elif name == "content_block_stop":
            assert d["index"] == open_
            if open_ in partial:
                blocks[open_]["input"] = json.loads(partial[open_])
            open_ = None
        elif name == "message_delta":
            assert open_ is None
            msg.update(d["delta"])
            msg["usage"] = {**msg["usage"], **d["usage"]}
        else:
            raise AssertionError(name)
    msg["content"] = blocks
    return msg


def test_message_matches_chat(chat_server):
    r = chat_server.post("/v1/messages", {**BASE, "max_tokens": 12})
    assert r.status == 200, r.text
    m = r.json()
    assert m["type"] == "message" and m["role"] == "assistant" and m["id"].startswith("msg_")
    assert m["model"] == "m"
    chat = chat_server.post("/v1/chat/completions", {"messages": [{"role": "system", "content": SYSTEM},
                                                                  {"role": "user", "content": USER}],
                                                     "max_tokens": 12, "temperature": 0}).json()
    want = chat["choices"][0]["message"]["content"]
    assert m["content"] == [{"type": "text", "text": want}] and want
    # max_tokens honoured; usage counts the tokens generated; cached prompt tokens apart
    assert m["stop_reason"] == "max_tokens" and m["stop_sequence"] is None
    u = m["usage"]
    assert u["output_tokens"] == chat["usage"]["completion_tokens"] == 12
    assert u["input_tokens"] + u["cache_read_input_tokens"] == chat["usage"]["prompt_tokens"]


def test_stream_reassembles(chat_server):
    body = {**BASE, "max_tokens": 10}
    full = chat_server.post("/v1/messages", body).json()
    evs = events(chat_server, body)
    names = [n for n, _ in evs]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "content_block_stop" in names
    start = evs[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    folded = fold(evs)
    assert folded["content"] == full["content"]
    assert folded["stop_reason"] == full["stop_reason"] == "max_tokens"
    assert folded["usage"]["output_tokens"] == full["usage"]["output_tokens"] == 10
    assert (folded["usage"]["input_tokens"] + folded["usage"]["cache_read_input_tokens"]
            == full["usage"]["input_tokens"] + full["usage"]["cache_read_input_tokens"])


def test_stop_sequences(chat_server):
    """A stop sequence taken from the greedy output itself: the text ends before it, and it is reported."""
    text = chat_server.post("/v1/messages", {**BASE, "max_tokens": 16}).json()["content"][0]["text"]
    stop = text[6:9]
    assert stop.strip() and len(stop) == 3
    m = chat_server.post("/v1/messages", {**BASE, "max_tokens": 16, "stop_sequences": [stop]}).json()
    assert m["stop_reason"] == "stop_sequence" and m["stop_sequence"] == stop
    got = m["content"][0]["text"] if m["content"] else ""
    assert stop not in got and text.startswith(got)
    folded = fold(events(chat_server, {**BASE, "max_tokens": 16, "stop_sequences": [stop]}))
    assert folded["stop_reason"] == "stop_sequence" and folded["content"] == m["content"]


def test_content_blocks_and_history(chat_server):
    """System as blocks, content as blocks, an earlier tool_use / tool_result exchange: renders and runs,
    and equals the chat request it converts to."""
    body = {"model": "m", "max_tokens": 5, "temperature": 0, "tools": ATOOLS,
            "system": [{"type": "text", "text": SYSTEM}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": USER}]},
                         {"role": "assistant", "content": [
                             {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Rome"}}]},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                                 {"type": "text", "text": "sunny"}]}]}]}
    m = chat_server.post("/v1/messages", body)
    assert m.status == 200, m.text
    chat = chat_server.post("/v1/chat/completions", {"max_tokens": 5, "temperature": 0, "tools": TOOLS, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": USER},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}]}).json()
    assert m.json()["usage"]["output_tokens"] == chat["usage"]["completion_tokens"]
    texts = [b["text"] for b in m.json()["content"] if b["type"] == "text"]
    assert "".join(texts) == (chat["choices"][0]["message"]["content"] or "")


def test_count_tokens(chat_server):
    body = {"model": "m", "system": SYSTEM, "messages": [{"role": "user", "content": USER}]}
    r = chat_server.post("/v1/messages/count_tokens", body)
    assert r.status == 200, r.text
    prompt = chat_server.post("/apply-template", {"messages": [{"role": "system", "content": SYSTEM},
                                                               {"role": "user", "content": USER}]}).json()["prompt"]
    toks = chat_server.post("/tokenize", {"content": prompt, "add_special": True}).json()["tokens"]
    assert r.json() == {"input_tokens": len(toks)}
    m = chat_server.post("/v1/messages", {**body, "max_tokens": 1}).json()
    assert m["usage"]["input_tokens"] + m["usage"]["cache_read_input_tokens"] == len(toks)
    # tools count too
    with_tools = chat_server.post("/v1/messages/count_tokens", {**body, "tools": ATOOLS}).json()["input_tokens"]
    assert with_tools > len(toks)


@pytest.mark.parametrize("body, msg", [
    ({"model": "m", "max_tokens": 4}, "messages"),
    ({"model": "m", "max_tokens": 4, "messages": "hi"}, "messages"),
    ({"model": "m", "max_tokens": 4, "messages": [{"content": "hi"}]}, "role"),
    ({"model": "m", "max_tokens": 4, "messages": [{"role": "robot", "content": "hi"}]}, "role"),
    ({"model": "m", "max_tokens": "lots", "messages": [{"role": "user", "content": "hi"}]}, "max_tokens"),
    ({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "text"),
])
def test_bad_input(chat_server, body, msg):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        r = chat_server.post(path, body)
        assert r.status == 400, (path, r.text)
        j = r.json()
        assert j["type"] == "error", j
        err = j["error"]
        assert err["type"] == "invalid_request_error" and err["code"] == 400 and msg in err["message"], err
    r = chat_server.post("/v1/messages", raw=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status == 400 and r.json()["type"] == "error"


def test_max_tokens_default(chat_server):
    """llama-server's: without max_tokens the limit is 4096, not an error (here the slot's context of
    512 tokens ends the generation first)."""
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    r = chat_server.post("/v1/messages", body, timeout=300)
    assert r.status == 200, r.text
    m = r.json()
    assert m["stop_reason"] == "max_tokens", m["stop_reason"]
    u = m["usage"]
    assert 100 < u["output_tokens"] < 512 and u["input_tokens"] + u["cache_read_input_tokens"] > 0
    assert chat_server.post("/v1/messages/count_tokens", body).status == 200


def test_x_api_key(start_server, chat_model_path):
    s = start_server(chat_model_path, "-np", "1", "-c", "512", "--api-key", "sekrit")
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    r = s.post("/v1/messages", body)
    assert r.status == 401 and r.json()["error"]["type"] == "authentication_error"
    assert s.post("/v1/messages", body, headers={"x-api-key": "wrong"}).status == 401
    r = s.post("/v1/messages", body, headers={"x-api-key": "sekrit", "anthropic-version": "2023-06-01"})
    assert r.status == 200 and r.json()["usage"]["output_tokens"] <= 2
    assert s.post("/v1/messages/count_tokens", body, headers={"x-api-key": "sekrit"}).status == 200


# ---------------------------------------------------------------- a real tool call (Llama 3.1's grammar)

@pytest.fixture(scope="module")
def llama_server(start_server, template_model):  # noqa: F811
    return start_server(template_model(*LLAMA31), "-np", "1", "-c", "2048")


def test_forced_tool_use(llama_server):
    """As test_server_tools.test_forced_tool_call_sdk: tool_choice "any" is chat's "required"; Llama 3.1's
    grammar with the ``{"`` token biased up (logit_bias passes through, a pyllama extension) makes a
    random model call a tool, which comes back as a tool_use block."""
    toks = llama_server.post("/tokenize", {"content": '{"'}).json()["tokens"]
    body = {"model": "m", "max_tokens": FORCED_MAX_TOKENS, "temperature": 0, "tools": ATOOLS,
            "tool_choice": {"type": "any"}, "logit_bias": {str(toks[0]): 100}, **PIN_DATE,
            "messages": [{"role": "user", "content": "What is the weather in Berlin?"}]}
    r = llama_server.post("/v1/messages", body, timeout=300)
    assert r.status == 200, r.text
    m = r.json()
    assert m["stop_reason"] == "tool_use", m
    uses = [b for b in m["content"] if b["type"] == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use["id"] and use["name"] in SCHEMAS
    jsonschema.validate(use["input"], SCHEMAS[use["name"]])
    assert m["usage"]["output_tokens"] < FORCED_MAX_TOKENS

    folded = fold(events(llama_server, body))
    assert folded["stop_reason"] == "tool_use"
    (fu,) = [b for b in folded["content"] if b["type"] == "tool_use"]
    assert fu["name"] == use["name"] and fu["input"] == use["input"] and fu["id"]

    # a named tool: {"type": "tool", "name": ...}
    m = llama_server.post("/v1/messages", {**body, "tool_choice": {"type": "tool", "name": "get_time"}},
                          timeout=300).json()
    uses = [b for b in m["content"] if b["type"] == "tool_use"]
    assert [u["name"] for u in uses] == ["get_time"], m
    jsonschema.validate(uses[0]["input"], SCHEMAS["get_time"])
