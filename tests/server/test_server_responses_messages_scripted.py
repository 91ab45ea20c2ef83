"""/v1/responses and /v1/messages with a scripted model output (test_server_tools.scripted_output):
reasoning, text and two tool calls in Qwen 3's format, so every output item / content block kind
comes back, streaming and not, and the stream folds into the non-streaming answer."""
from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from tool_support import TOOLS, argv_for, scripted_output  # noqa: E402

from pyllama.server.state import STATE

QWEN3 = ("qwen2", "Qwen-Qwen3-0.6B.jinja")
OUTPUT = ('<think>\nThe user wants weather and time.\n</think>\n\nLet me check.\n'
          '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>\n'
          '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET", "24h": true}}\n</tool_call>')
THOUGHT, ANSWER = "The user wants weather and time.", "Let me check."
CALLS = [("get_weather", {"city": "Berlin"}), ("get_time", {"tz": "CET", "24h": True})]
USER = "What is the weather in Berlin, and the time in CET?"


async def post(client, path: str, body: Dict[str, Any]) -> Any:
    r = await client.post(path, json=body)
    text = await r.text()
    assert r.status == 200, (path, r.status, text)
    return json.loads(text)


async def typed_events(client, path: str, body: Dict[str, Any]) -> List[Dict[str, Any]]:
    r = await client.post(path, json={**body, "stream": True})
    raw = (await r.read()).decode()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream"), raw
    out, name = [], None
    for line in raw.splitlines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            d = json.loads(line[6:])
            assert d["type"] == name, (name, d)
            out.append(d)
    return out


@pytest.fixture(scope="module")
def qwen3_path(template_model):  # noqa: F811
    return template_model(*QWEN3)


def test_responses_scripted(inproc, qwen3_path):
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    body = {"model": "m", "input": USER, "tools": tools, "max_output_tokens": 200}

    async def scenario(client):
        scripted_output(client.server.app[STATE], OUTPUT)
        res = await post(client, "/v1/responses", body)
        kinds = [o["type"] for o in res["output"]]
        assert kinds == ["reasoning", "message", "function_call", "function_call"], res["output"]
        assert res["output"][0]["content"][0]["text"].strip() == THOUGHT
        assert res["output"][1]["content"][0]["text"].strip() == ANSWER
        got = [(o["name"], json.loads(o["arguments"])) for o in res["output"][2:]]
        assert got == CALLS
        for o in res["output"][2:]:
            assert o["id"] == "fc_" + o["call_id"] and o["status"] == "completed"

        evs = await typed_events(client, "/v1/responses", body)
        assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
        final = evs[-1]["response"]
        assert evs[-1]["type"] == "response.completed"
        # streamed deltas equal the final items, which equal the non-streaming ones (ids aside)
        reasoning = "".join(e["delta"] for e in evs if e["type"] == "response.reasoning_text.delta")
        text = "".join(e["delta"] for e in evs if e["type"] == "response.output_text.delta")
        assert reasoning == final["output"][0]["content"][0]["text"]
        assert text == final["output"][1]["content"][0]["text"]
        added = [e for e in evs if e["type"] == "response.output_item.added"]
        assert [e["output_index"] for e in added] == [0, 1, 2, 3]
        assert [e["item"]["type"] for e in added] == kinds
        for i, fc in enumerate(final["output"][2:], start=2):
            args = "".join(e["delta"] for e in evs if e["type"] == "response.function_call_arguments.delta"
                           and e["output_index"] == i)
            assert args == fc["arguments"] and fc["call_id"] == added[i]["item"]["call_id"]
        strip = [{k: v for k, v in o.items() if k not in ("id", "call_id")} for o in final["output"]]
        want = [{k: v for k, v in o.items() if k not in ("id", "call_id")} for o in res["output"]]
        assert strip == want
        done = [e["output_index"] for e in evs if e["type"] == "response.output_item.done"]
        assert done == [0, 1, 2, 3]

    inproc(argv_for(qwen3_path), scenario)


def test_messages_scripted(inproc, qwen3_path):
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    body = {"model": "m", "max_tokens": 200, "tools": tools, "messages": [{"role": "user", "content": USER}]}

    async def scenario(client):
        scripted_output(client.server.app[STATE], OUTPUT)
        m = await post(client, "/v1/messages", body)
        assert [b["type"] for b in m["content"]] == ["thinking", "text", "tool_use", "tool_use"], m
        assert m["content"][0]["thinking"].strip() == THOUGHT and m["content"][0]["signature"] == ""
        assert m["content"][1]["text"].strip() == ANSWER
        assert [(b["name"], b["input"]) for b in m["content"][2:]] == CALLS
        assert m["stop_reason"] == "tool_use"

        evs = await typed_events(client, "/v1/messages", body)
        assert evs[0]["type"] == "message_start" and evs[-1]["type"] == "message_stop"
        blocks: List[Dict[str, Any]] = []
        partial: Dict[int, str] = {}
        open_ = None
        for e in evs[1:-2]:
            if e["type"] == "content_block_start":
                assert open_ is None and e["index"] == len(blocks)
                blocks.append(dict(e["content_block"]))
                open_ = e["index"]
            elif e["type"] == "content_block_delta":
                assert e["index"] == open_
                d = e["delta"]
                if d["type"] == "thinking_delta":
                    blocks[open_]["thinking"] += d["thinking"]
                elif d["type"] == "text_delta":
                    blocks[open_]["text"] += d["text"]
                elif d["type"] == "input_json_delta":
                    partial[open_] = partial.get(open_, "") + d["partial_json"]
                elif d["type"] == "signature_delta":
                    blocks[open_]["signature"] = d["signature"]
            else:
                assert e["type"] == "content_block_stop" and e["index"] == open_
                if open_ in partial:
                    blocks[open_]["input"] = json.loads(partial[open_])
                open_ = None
        assert evs[-2]["type"] == "message_delta" and evs[-2]["delta"]["stop_reason"] == "tool_use"
        assert evs[-2]["usage"]["output_tokens"] == m["usage"]["output_tokens"]
        assert [{k: v for k, v in b.items() if k != "id"} for b in blocks] == \
            [{k: v for k, v in b.items() if k != "id"} for b in m["content"]]
        assert all(b["id"] for b in blocks if b["type"] == "tool_use")

    inproc(argv_for(qwen3_path), scenario)
