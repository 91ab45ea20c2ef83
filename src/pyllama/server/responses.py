"""OpenAI Responses API: POST /v1/responses and /v1/responses/input_tokens.

As llama-server does (server-chat.cpp ``server_chat_convert_responses_to_chatcmpl``), a Responses
request is converted into a chat completions request and runs on the chat path (``prepare_chat``);
the chat output (content, reasoning, tool calls) is converted back into a Response object, or, when
streaming, into the Responses API's typed events (``event: response.output_text.delta`` ...).
"""
from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

from aiohttp import web

from ..frontend import ChatDeltaParser
from ..engine import RequestOutput
from ..frontend import formatting as fmt
from ..frontend.formatting import now
from .common import decode_json, read_body, validate
from .errors import APIError, error_of
from .generation import collect, merged
from .pipeline import count_chat_tokens, model_name, start_chat
from .schemas import ChatCompletionRequest, ResponsesRequest
from .sse import SSEWriter
from .state import STATE, ServerState


def _rid(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def _input_parts(content: List[Any]) -> List[Dict[str, Any]]:
    """An input message's content parts (input_text, input_image) as chat content parts."""
    parts = []
    for p in content:
        if not isinstance(p, dict):
            raise APIError(400, "a content part must be an object")
        t = p.get("type")
        if t == "input_text":
            if not isinstance(p.get("text"), str):
                raise APIError(400, "'Input text' requires 'text'")
            parts.append({"type": "text", "text": p["text"]})
        elif t == "input_image":
            if "image_url" not in p:
                raise APIError(400, "'image_url' is required")
            parts.append({"type": "image_url", "image_url": {"url": p["image_url"]}})
        elif t == "input_file":
            raise APIError(400, "'input_file' is not supported by llamacpp at this moment")
        else:
            raise APIError(400, "'type' must be one of 'input_text', 'input_image', or 'input_file'")
    return parts


def _output_parts(item: Dict[str, Any]) -> List[Dict[str, Any]]:
    content = item.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts = []
    for p in content or []:
        t = p.get("type") if isinstance(p, dict) else None
        if t in ("output_text", "input_text"):
            if not isinstance(p.get("text"), str):
                raise APIError(400, "'Output text' requires 'text'")
            parts.append({"type": "text", "text": p["text"]})
        elif t == "refusal":
            if not isinstance(p.get("refusal"), str):
                raise APIError(400, "'Refusal' requires 'refusal'")
            parts.append({"type": "refusal", "refusal": p["refusal"]})
        else:
            raise APIError(400, "'type' must be one of 'output_text' or 'refusal'")
    return parts


def _text_of(parts: List[Dict[str, Any]]) -> str:
    return "".join(p.get("text") or p.get("refusal") or "" for p in parts)


def responses_to_chat(body: Dict[str, Any]) -> Dict[str, Any]:
    """A Responses request body as a chat completions body (llama-server's conversion)."""
    if "input" not in body:
        raise APIError(400, "'input' is required")
    if body.get("previous_response_id"):
        raise APIError(400, "llama.cpp does not support 'previous_response_id'.")
    chat = {k: v for k, v in body.items()
            if k not in ("input", "instructions", "tools", "max_output_tokens", "reasoning", "tool_choice", "text",
                         "n", "messages")}
    msgs: List[Dict[str, Any]] = []
    if "instructions" in body and body["instructions"] is not None:
        if not isinstance(body["instructions"], str):
            raise APIError(400, "'instructions' must be a string")
        msgs.append({"role": "system", "content": body["instructions"]})
    inp = body["input"]
    if isinstance(inp, str):
        msgs.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for item in inp:
            if not isinstance(item, dict):
                raise APIError(400, "Cannot determine type of 'item'")
            merge_prev = bool(msgs) and msgs[-1].get("role") == "assistant"
            role, typ = item.get("role"), item.get("type")
            if role in ("user", "system", "developer") and isinstance(item.get("content"), (str, list)):
                content = item["content"]
                if isinstance(content, str):
                    msgs.append({"role": role, "content": content})
                else:
                    msgs.append({"role": role, "content": _input_parts(content)})
            elif role == "assistant" and (typ == "message" or isinstance(item.get("content"), str)):
                text = _text_of(_output_parts(item))
                if merge_prev:
                    msgs[-1]["content"] = (msgs[-1].get("content") or "") + text
                else:
                    msgs.append({"role": "assistant", "content": text})
            elif typ == "function_call":
                if not all(isinstance(item.get(k), str) for k in ("arguments", "call_id", "name")):
                    raise APIError(400, "a function_call item needs string 'arguments', 'call_id' and 'name'")
                call = {"id": item["call_id"], "type": "function",
                        "function": {"name": item["name"], "arguments": item["arguments"]}}
                if merge_prev:
                    msgs[-1].setdefault("tool_calls", []).append(call)
                else:
                    msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif typ == "function_call_output":
                out = item.get("output")
                if not isinstance(item.get("call_id"), str) or not isinstance(out, (str, list)):
                    raise APIError(400, "a function_call_output item needs 'call_id' and 'output'")
                content = out if isinstance(out, str) else _text_of(_input_parts(out))
                msgs.append({"role": "tool", "tool_call_id": item["call_id"], "content": content})
            elif typ == "reasoning":
                content = item.get("content")
                if not isinstance(content, list) or not content or not isinstance(content[0], dict) \
                        or not isinstance(content[0].get("text"), str):
                    raise APIError(400, "a reasoning item needs 'content' with a text")
                if merge_prev:
                    msgs[-1]["reasoning_content"] = content[0]["text"]
                else:
                    msgs.append({"role": "assistant", "content": "", "reasoning_content": content[0]["text"]})
            else:
                raise APIError(400, "Cannot determine type of 'item'")
    else:
        raise APIError(400, "'input' must be a string or array of objects")
    chat["messages"] = msgs

    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise APIError(400, "'tools' must be an array of objects")
        out_tools = []
        for t in tools:
            if not isinstance(t, dict) or t.get("type") != "function":
                continue            # non-function Responses tools have no chat equivalent (skipped, as upstream)
            fn = {k: v for k, v in t.items() if k != "type"}
            fn.setdefault("strict", True)
            out_tools.append({"type": "function", "function": fn})
        if out_tools:
            chat["tools"] = out_tools
    tc = body.get("tool_choice")
    if tc is not None:
        # Responses' {"type": "function", "name": ...} is chat's {"type": "function", "function": {"name": ...}}
        if isinstance(tc, dict) and tc.get("type") == "function" and "name" in tc and "function" not in tc:
            tc = {"type": "function", "function": {"name": tc["name"]}}
        chat["tool_choice"] = tc
    if "max_output_tokens" in body:
        chat["max_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    text = body.get("text")
    if isinstance(text, dict) and isinstance(text.get("format"), dict):
        fmt = text["format"]    # Responses' text.format is chat's response_format, flattened
        if fmt.get("type") == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                k: v for k, v in fmt.items() if k != "type"}}
        else:
            chat["response_format"] = fmt
    return chat


def _to_chat(raw: bytes) -> ChatCompletionRequest:
    body = decode_json(raw)
    if isinstance(body, dict) and "input" not in body:
        raise APIError(400, "'input' is required")
    validate(ResponsesRequest, body)
    return validate(ChatCompletionRequest, responses_to_chat(body))


async def _parse(request: web.Request) -> ChatCompletionRequest:
    """The body converted to a chat request, on the worker pool."""
    return await request.app[STATE].workers.run(_to_chat, await read_body(request))


def _usage(o: RequestOutput) -> Dict[str, Any]:
    u = o.usage or {}
    p, c = u.get("prompt_tokens", 0), u.get("completion_tokens", 0)
    return {"input_tokens": p, "output_tokens": c, "total_tokens": p + c,
            "input_tokens_details": {"cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)},
            "output_tokens_details": {"reasoning_tokens": 0}}


class _Ids:
    def __init__(self) -> None:
        self.resp, self.msg, self.rs = _rid("resp"), _rid("msg"), _rid("rs")


def _output_items(ids: _Ids, msg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The Response output of a chat message: reasoning, message, function calls (upstream's order)."""
    out: List[Dict[str, Any]] = []
    if msg.get("reasoning_content"):
        out.append({"id": ids.rs, "type": "reasoning", "summary": [], "encrypted_content": "", "status": "completed",
                    "content": [{"type": "reasoning_text", "text": msg["reasoning_content"]}]})
    if msg.get("content"):
        out.append({"id": ids.msg, "type": "message", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": msg["content"]}]})
    for call in msg.get("tool_calls") or []:
        out.append({"id": "fc_" + call["id"], "type": "function_call", "status": "completed",
                    "arguments": call["function"]["arguments"], "call_id": call["id"],
                    "name": call["function"]["name"]})
    return out


def _response(ids: _Ids, model: str, created: int, status: str, output: List[Dict[str, Any]],
              o: Optional[RequestOutput]) -> Dict[str, Any]:
    r: Dict[str, Any] = {"id": ids.resp, "object": "response", "created_at": created, "status": status,
                         "model": model, "output": output}
    if o is not None:
        r["completed_at"] = now()
        r["usage"] = _usage(o)
    return r


async def responses(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses."""
    st = request.app[STATE].require()
    req = await _parse(request)
    prepared, streams = await start_chat(st, req)
    ids, created, model = _Ids(), now(), model_name(st, req.model)
    parser = ChatDeltaParser(prepared.rendered.syntax)
    if not req.stream:
        (o,) = await collect(streams)
        out = _output_items(ids, fmt.assemble_message(parser, o.text))
        res = _response(ids, model, created, "completed", out, o)
        res["timings"] = o.timings
        return web.json_response(res)
    return await _stream(request, st, streams, parser, ids, created, model)


async def _stream(request: web.Request, st: ServerState, streams: List[Any], parser: ChatDeltaParser, ids: _Ids,
                  created: int, model: str) -> web.StreamResponse:
    seq = 0
    # output items in the order they appear: reasoning / message / function calls
    index: Dict[str, int] = {}

    async def send(sse: SSEWriter, typ: str, data: Dict[str, Any]) -> None:
        nonlocal seq
        await sse.send_event(typ, {"type": typ, "sequence_number": seq, **data})
        seq += 1

    def slot(key: str) -> int:
        if key not in index:
            index[key] = len(index)
        return index[key]

    text = ""
    async with SSEWriter(request, st.config.http.sse_ping_interval) as sse:
        head = _response(ids, model, created, "in_progress", [], None)
        await send(sse, "response.created", {"response": head})
        await send(sse, "response.in_progress", {"response": head})
        calls: List[str] = []
        async for _, o in merged(streams):
            if o.finished and o.error is not None:
                await sse.send(error_of(o.error))
                return sse.response
            text += o.text
            for d in parser.feed(text, partial=not o.finished):
                if "reasoning_content" in d:
                    if "rs" not in index:
                        await send(sse, "response.output_item.added", {"output_index": slot("rs"), "item": {
                            "id": ids.rs, "type": "reasoning", "summary": [], "content": [], "encrypted_content": "",
                            "status": "in_progress"}})
                    await send(sse, "response.reasoning_text.delta", {"item_id": ids.rs, "output_index": index["rs"],
                                                                      "content_index": 0,
                                                                      "delta": d["reasoning_content"]})
                if "content" in d:
                    if "msg" not in index:
                        await send(sse, "response.output_item.added", {"output_index": slot("msg"), "item": {
                            "id": ids.msg, "type": "message", "role": "assistant", "status": "in_progress",
                            "content": []}})
                        await send(sse, "response.content_part.added", {
                            "item_id": ids.msg, "output_index": index["msg"], "content_index": 0,
                            "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
                    await send(sse, "response.output_text.delta", {"item_id": ids.msg, "output_index": index["msg"],
                                                                   "content_index": 0, "delta": d["content"],
                                                                   "logprobs": []})
                for tc in d.get("tool_calls", []):
                    i = tc["index"]
                    if i >= len(calls):
                        calls.append(tc["id"])
                        await send(sse, "response.output_item.added", {"output_index": slot(f"fc{i}"), "item": {
                            "id": "fc_" + tc["id"], "type": "function_call", "status": "in_progress",
                            "arguments": "", "call_id": tc["id"], "name": tc["function"]["name"]}})
                    args = tc["function"].get("arguments", "")
                    if args:
                        await send(sse, "response.function_call_arguments.delta", {
                            "item_id": "fc_" + calls[i], "output_index": index[f"fc{i}"], "delta": args})
            if o.finished:
                msg = fmt.assemble_message(ChatDeltaParser(parser.syntax), text)
                # the ids the stream used for the calls
                for call, cid in zip(msg.get("tool_calls") or [], calls):
                    call["id"] = cid
                items = _output_items(ids, msg)
                order = {"reasoning": "rs", "message": "msg"}
                keyed, n_fc = [], 0
                for it in items:
                    key = order.get(it["type"])
                    if key is None:
                        key, n_fc = f"fc{n_fc}", n_fc + 1
                    keyed.append((slot(key), it))
                keyed.sort(key=lambda x: x[0])
                for oi, it in keyed:
                    if it["type"] == "message":
                        part = it["content"][0]
                        await send(sse, "response.output_text.done", {"item_id": ids.msg, "output_index": oi,
                                                                      "content_index": 0, "text": part["text"],
                                                                      "logprobs": []})
                        await send(sse, "response.content_part.done", {"item_id": ids.msg, "output_index": oi,
                                                                       "content_index": 0, "part": part})
                    elif it["type"] == "function_call":
                        await send(sse, "response.function_call_arguments.done", {
                            "item_id": it["id"], "output_index": oi, "arguments": it["arguments"]})
                    await send(sse, "response.output_item.done", {"output_index": oi, "item": it})
                final = _response(ids, model, created, "completed", [it for _, it in keyed], o)
                await send(sse, "response.completed", {"response": final, "timings": o.timings})
    return sse.response


async def input_tokens(request: web.Request) -> web.Response:
    """POST /v1/responses/input_tokens: the token count of the converted request's rendered prompt."""
    st = request.app[STATE].require()
    req = await _parse(request)
    return web.json_response({"object": "response.input_tokens", "input_tokens": await count_chat_tokens(st, req)})
