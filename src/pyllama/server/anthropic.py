"""Anthropic Messages API: POST /v1/messages and /v1/messages/count_tokens.

As llama-server does (server-chat.cpp ``server_chat_convert_anthropic_to_oai``), a Messages request
is converted into a chat completions request and runs on the chat path (``prepare_chat``); the chat
output is converted back into a Message, or, when streaming, into Anthropic's events
(message_start, content_block_start/delta/stop, message_delta, message_stop).

Errors are llama-server's OpenAI-shaped ``{"error": {"code", "message", "type"}}`` with Anthropic's
top-level ``"type": "error"`` added, so the body is also Anthropic's error shape.
"""
from __future__ import annotations

import functools
import json
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional

from aiohttp import web

from ..frontend import ChatDeltaParser
from ..engine import RequestOutput
from ..frontend import formatting as fmt
from .common import decode_json, read_body, validate
from .errors import APIError, error_of, handled
from .generation import collect, merged
from .pipeline import count_chat_tokens, model_name, start_chat
from .schemas import ChatCompletionRequest, MessagesRequest, SamplingFields
from .sse import SSEWriter
from .state import STATE


DEFAULT_MAX_TOKENS = 4096       # llama-server's, when max_tokens is missing
# llama.cpp's own sampling fields pass through (a pyllama extension: seed, logit_bias, ...)
_PASSTHROUGH = tuple(k for k in SamplingFields.model_fields if k != "stop")


def anthropic_errors(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    """Errors of the handler as ``{"type": "error", "error": {...}}`` (Anthropic's shape, which keeps
    llama-server's code/message/type fields)."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (web.HTTPException, ConnectionResetError):
            raise
        except Exception as e:  # noqa: BLE001 - rendered from the one table, as every API's
            err = handled(e)
            return web.json_response({"type": "error", **err.body()}, status=err.status)
    return wrapped


def _image_part(source: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(source, dict):
        return None
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/jpeg')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "".join(b.get("text", "") for b in system if isinstance(b, dict) and b.get("type") == "text")


def messages_to_chat(body: Dict[str, Any]) -> Dict[str, Any]:
    """A Messages request body as a chat completions body (llama-server's conversion)."""
    msgs: List[Dict[str, Any]] = []
    if body.get("system") is not None:
        msgs.append({"role": "system", "content": _system_text(body["system"])})
    for m in body["messages"]:
        role, content = m["role"], m.get("content")
        if content is None:
            if role != "assistant":
                msgs.append({"role": role})
            continue
        if isinstance(content, str):
            msgs.append({"role": role, "content": content})
            continue
        parts: List[Dict[str, Any]] = []
        calls: List[Dict[str, Any]] = []
        results: List[Dict[str, Any]] = []
        reasoning = ""
        for b in content:
            t = b.get("type")
            if t == "text":
                if not isinstance(b.get("text"), str):
                    raise APIError(400, "a text block needs 'text'")
                parts.append({"type": "text", "text": b["text"]})
            elif t == "thinking":
                reasoning += b.get("thinking") or ""
            elif t == "image":
                p = _image_part(b.get("source"))
                if p:
                    parts.append(p)
            elif t == "tool_use":
                calls.append({"id": b.get("id", ""), "type": "function",
                              "function": {"name": b.get("name", ""), "arguments": json.dumps(b.get("input") or {})}})
            elif t == "tool_result":
                rc = b.get("content")
                if isinstance(rc, list):
                    rc = "".join(c.get("text", "") for c in rc if isinstance(c, dict) and c.get("type") == "text")
                elif not isinstance(rc, str):
                    rc = ""
                results.append({"role": "tool", "tool_call_id": b.get("tool_use_id", ""), "content": rc})
        if parts or calls or reasoning:
            msg: Dict[str, Any] = {"role": role, "content": parts if parts else ""}
            if calls:
                msg["tool_calls"] = calls
            if reasoning:
                msg["reasoning_content"] = reasoning
            msgs.append(msg)
        msgs.extend(results)
    chat: Dict[str, Any] = {"messages": msgs}
    if body.get("tools") is not None:
        chat["tools"] = [{"type": "function", "function": {
            "name": t.get("name", ""), "description": t.get("description", ""),
            "parameters": t.get("input_schema", {})}} for t in body["tools"]]
    tc = body.get("tool_choice")
    if isinstance(tc, dict):
        if tc.get("type") == "auto":
            chat["tool_choice"] = "auto"
        elif tc.get("type") == "any":
            chat["tool_choice"] = "required"
        elif tc.get("type") == "tool":      # llama-server says "required"; the named tool is more exact
            chat["tool_choice"] = {"type": "function", "function": {"name": tc.get("name", "")}}
        elif tc.get("type") == "none":
            chat["tool_choice"] = "none"
        if tc.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    if body.get("stop_sequences") is not None:
        chat["stop"] = body["stop_sequences"]
    chat["max_tokens"] = body["max_tokens"] if body.get("max_tokens") is not None else DEFAULT_MAX_TOKENS
    for k in ("model", "stream", "chat_template_kwargs", *_PASSTHROUGH):
        if k in body:
            chat[k] = body[k]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        chat["thinking_budget_tokens"] = thinking.get("budget_tokens", 10000)
    return chat


def _to_chat(raw: bytes) -> ChatCompletionRequest:
    body = decode_json(raw)
    validate(MessagesRequest, body)
    return validate(ChatCompletionRequest, messages_to_chat(body))


async def _parse(request: web.Request) -> ChatCompletionRequest:
    """The body converted to a chat request, on the worker pool."""
    return await request.app[STATE].workers.run(_to_chat, await read_body(request))


def _stop(o: RequestOutput, req: ChatCompletionRequest, has_calls: bool) -> Dict[str, Any]:
    if o.finish_reason == "length":
        return {"stop_reason": "max_tokens", "stop_sequence": None}
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if o.stop_word and o.stop_word in stops:
        return {"stop_reason": "stop_sequence", "stop_sequence": o.stop_word}
    return {"stop_reason": "tool_use" if has_calls else "end_turn", "stop_sequence": None}


def _usage(o: RequestOutput) -> Dict[str, Any]:
    u = o.usage or {}
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {"cache_read_input_tokens": cached, "input_tokens": u.get("prompt_tokens", 0) - cached,
            "output_tokens": u.get("completion_tokens", 0)}


def _tool_input(args: str) -> Any:
    try:
        v = json.loads(args)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _blocks(msg: Dict[str, Any]) -> List[Dict[str, Any]]:
    blocks: List[Dict[str, Any]] = []
    if msg.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        blocks.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or []:
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"],
                       "input": _tool_input(call["function"]["arguments"])})
    return blocks


@anthropic_errors
async def messages(request: web.Request) -> web.StreamResponse:
    """POST /v1/messages."""
    st = request.app[STATE].require()
    req = await _parse(request)
    prepared, streams = await start_chat(st, req)
    mid, model = f"msg_{uuid.uuid4().hex[:24]}", model_name(st, req.model)
    parser = ChatDeltaParser(prepared.rendered.syntax)
    if not req.stream:
        (o,) = await collect(streams)
        msg = fmt.assemble_message(parser, o.text)
        return web.json_response({"id": mid, "type": "message", "role": "assistant", "content": _blocks(msg),
                                  "model": model, **_stop(o, req, bool(msg.get("tool_calls"))), "usage": _usage(o)})

    async def send(sse: SSEWriter, typ: str, data: Dict[str, Any]) -> None:
        await sse.send_event(typ, {"type": typ, **data})

    async with SSEWriter(request, st.config.http.sse_ping_interval) as sse:
        await send(sse, "message_start", {"message": {
            "id": mid, "type": "message", "role": "assistant", "content": [], "model": model,
            "stop_reason": None, "stop_sequence": None,
            "usage": {"cache_read_input_tokens": 0, "input_tokens": len(prepared.prompts[0]), "output_tokens": 0}}})
        n_blocks = 0
        current: Optional[str] = None       # "thinking", "text" or "tool_use": the open block
        n_calls = 0

        async def close() -> None:
            nonlocal current
            if current == "thinking":
                await send(sse, "content_block_delta", {"index": n_blocks - 1,
                                                        "delta": {"type": "signature_delta", "signature": ""}})
            if current is not None:
                await send(sse, "content_block_stop", {"index": n_blocks - 1})
            current = None

        async def open_block(kind: str, block: Dict[str, Any]) -> None:
            nonlocal current, n_blocks
            await close()
            await send(sse, "content_block_start", {"index": n_blocks, "content_block": block})
            n_blocks += 1
            current = kind

        text = ""
        async for _, o in merged(streams):
            if o.finished and o.error is not None:
                await sse.send_event("error", {"type": "error", **error_of(o.error)})
                return sse.response
            text += o.text
            for d in parser.feed(text, partial=not o.finished):
                if "reasoning_content" in d:
                    if current != "thinking":
                        await open_block("thinking", {"type": "thinking", "thinking": ""})
                    await send(sse, "content_block_delta", {"index": n_blocks - 1, "delta": {
                        "type": "thinking_delta", "thinking": d["reasoning_content"]}})
                if "content" in d:
                    if current != "text":
                        await open_block("text", {"type": "text", "text": ""})
                    await send(sse, "content_block_delta", {"index": n_blocks - 1, "delta": {
                        "type": "text_delta", "text": d["content"]}})
                for tc in d.get("tool_calls", []):
                    if tc["index"] >= n_calls:
                        n_calls += 1
                        await open_block("tool_use", {"type": "tool_use", "id": tc["id"],
                                                      "name": tc["function"]["name"], "input": {}})
                    args = tc["function"].get("arguments", "")
                    if args:
                        await send(sse, "content_block_delta", {"index": n_blocks - 1, "delta": {
                            "type": "input_json_delta", "partial_json": args}})
            if o.finished:
                await close()
                await send(sse, "message_delta", {"delta": _stop(o, req, n_calls > 0), "usage": _usage(o)})
                await send(sse, "message_stop", {})
    return sse.response


@anthropic_errors
async def count_tokens(request: web.Request) -> web.Response:
    """POST /v1/messages/count_tokens: the token count of the converted request's rendered prompt."""
    st = request.app[STATE].require()
    req = await _parse(request)
    return web.json_response({"input_tokens": await count_chat_tokens(st, req)})
