"""OpenAI endpoints: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings."""
from __future__ import annotations

import base64
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from aiohttp import web

from .. import _core
from ..chat import (ChatDeltaParser, chat_stops, json_schema_from_response_format, new_id, sampling_extras,
                    token_logprob_entry)
from ..engine import RequestOutput, RequestStream
from ..errors import ChatTemplateError, ContextLimitError, GrammarError
from .common import error_of, now, parse, usage
from .errors import APIError, require_enabled
from .generation import (submit_all, collect, make_request, request_lora, merged, prompt_tokens, sampling_params,
                         stop_list)
from .schemas import ChatCompletionRequest, ChatControlRequest, EmbeddingRequest, OAICompletionRequest
from .sse import SSEWriter
from .state import STATE, ServerState


def model_name(st: ServerState, requested: Optional[str]) -> str:
    return requested or st.config.model_name


async def models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cfg = st.config
    meta: Dict[str, Any] = {}
    if st.ready and st.model is not None:
        m = st.model
        meta = {"vocab_type": m.vocab.type, "n_vocab": m.vocab.n_vocab, "n_ctx_train": m.n_ctx_train,
                "n_embd": m.n_embd, "n_params": m.n_params, "size": m.size}
    entry = {"id": cfg.model_name, "object": "model", "created": int(st.t_start), "owned_by": "llamacpp",
             "meta": meta or None}
    return web.json_response({"object": "list", "data": [entry],
                              "models": [{"name": cfg.model_name, "model": cfg.model_name, "type": "model",
                                          "capabilities": ["embedding"] if cfg.embedding else ["completion"]}]})


def _completion_logprobs(vocab: "_core.Vocab", o: RequestOutput, offset: int) -> Optional[Dict[str, Any]]:
    if not o.logprobs:
        return None
    pieces = [vocab.token_to_piece(t.token, special=False).decode("utf-8", "replace") for t in o.logprobs]
    offs = []
    for p in pieces:
        offs.append(offset)
        offset += len(p)
    return {"tokens": pieces, "text_offset": offs, "token_logprobs": [t.logprob for t in o.logprobs],
            "top_logprobs": [{vocab.token_to_piece(k, special=False).decode("utf-8", "replace"): v for k, v in t.top}
                             for t in o.logprobs]}


async def completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    req = await parse(request, OAICompletionRequest)
    if req.suffix:
        raise APIError(501, "suffix is not supported on /v1/completions; use /infill", "not_supported_error")
    cfg, vocab = st.config, st.vocab
    prompts = prompt_tokens(vocab, req.prompt)
    sampling = sampling_params(req, cfg, vocab)
    n_top = req.logprobs or 0
    lora = request_lora(req, st.lora_scales())
    reqs = [make_request(p, req, cfg, sampling, max_tokens=req.max_tokens, stop=stop_list(req.stop),
                         n_probs=n_top, logprobs=req.logprobs is not None, choice=j, lora=lora)
            for p in prompts for j in range(req.n)]
    streams = submit_all(st.engine, reqs)
    cid, created, model = new_id("cmpl"), now(), model_name(st, req.model)
    echo = [vocab.detokenize(p) if req.echo else "" for p in prompts for _ in range(req.n)]

    def base() -> Dict[str, Any]:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": "pyllama"}

    if req.stream:
        finals: List[Optional[RequestOutput]] = [None] * len(reqs)
        offsets = [len(e) for e in echo]
        async with SSEWriter(request, cfg.sse_ping_interval) as sse:
            for i, e in enumerate(echo):
                if e:
                    await sse.send({**base(), "choices": [{"text": e, "index": i, "logprobs": None,
                                                            "finish_reason": None}]})
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o))
                    return sse.response
                lp = _completion_logprobs(vocab, o, offsets[i]) if req.logprobs is not None else None
                offsets[i] += len(o.text)
                if o.text or lp or o.finished:
                    await sse.send({**base(), "choices": [{"text": o.text, "index": i, "logprobs": lp,
                                                            "finish_reason": o.finish_reason if o.finished else None}]})
                if o.finished:
                    finals[i] = o
            last = {**base(), "choices": [], "usage": usage([f for f in finals if f], req.n)}
            if req.stream_options and req.stream_options.include_usage:
                await sse.send(last)
            await sse.done()
        return sse.response

    outs = await collect(streams)
    choices = []
    for i, o in enumerate(outs):
        choices.append({"text": echo[i] + o.text, "index": i,
                        "logprobs": _completion_logprobs(vocab, o, len(echo[i])) if req.logprobs is not None
                        else None, "finish_reason": o.finish_reason})
    return web.json_response({**base(), "choices": choices, "usage": usage(outs, req.n),
                              "timings": outs[0].timings})


def render_chat(st: ServerState, req: ChatCompletionRequest) -> Dict[str, Any]:
    cfg = st.config
    try:
        json_schema = json_schema_from_response_format(req.response_format)
    except ValueError as e:
        raise APIError(400, str(e)) from None
    if json_schema is not None and req.json_schema is not None:
        raise APIError(400, "use either response_format or json_schema, not both")
    json_schema = json_schema if json_schema is not None else req.json_schema
    kwargs = dict(cfg.chat_template_kwargs)
    kwargs.update(req.chat_template_kwargs or {})
    r: Dict[str, Any] = {"messages": req.rendered_messages(), "add_generation_prompt": req.add_generation_prompt,
                         "reasoning_format": req.reasoning_format or cfg.reasoning_format,
                         "chat_template_kwargs": kwargs}
    for k in ("tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "grammar"):
        v = getattr(req, k)
        if v is not None:
            r[k] = v
    if json_schema is not None:
        r["json_schema"] = json_schema
    if r["reasoning_format"] == "auto":
        r["reasoning_format"] = "deepseek"
    try:
        assert st.templates is not None
        return st.templates.render(r)
    except (ChatTemplateError, GrammarError) as e:
        raise APIError(400, str(e)) from None


def prepare_chat(st: ServerState, req: ChatCompletionRequest) -> Tuple[Dict[str, Any], List[int], List[RequestStream]]:
    """Render a chat request with the template, build its engine requests and submit them: the one
    generation path of /v1/chat/completions, /v1/responses and /v1/messages (those two convert
    their bodies to a ChatCompletionRequest first)."""
    cfg, vocab = st.config, st.vocab
    rendered = render_chat(st, req)
    extra = sampling_extras(rendered, vocab)
    sampling = sampling_params(req, cfg, vocab, rendered=rendered, **extra)
    tokens = vocab.tokenize(rendered["prompt"], add_special=True, parse_special=True)
    max_tokens = next((v for v in (req.max_completion_tokens, req.max_tokens, req.n_predict) if v is not None), None)
    n_top = (req.top_logprobs or 0) if req.logprobs else 0
    lora = request_lora(req, st.lora_scales())
    reqs = [make_request(tokens, req, cfg, sampling, max_tokens=max_tokens, stop=chat_stops(req.stop, rendered),
                         n_probs=n_top, logprobs=bool(req.logprobs), choice=j, lora=lora) for j in range(req.n)]
    return rendered, tokens, submit_all(st.engine, reqs)


def count_chat_tokens(st: ServerState, req: ChatCompletionRequest) -> int:
    """The number of tokens of the rendered prompt of a chat request (the */input_tokens endpoints)."""
    rendered = render_chat(st, req)
    return len(st.vocab.tokenize(rendered["prompt"], add_special=True, parse_special=True))


async def chat_input_tokens(request: web.Request) -> web.Response:
    """POST /v1/chat/completions/input_tokens (llama-server's): the prompt's token count."""
    st = request.app[STATE].require()
    req = await parse(request, ChatCompletionRequest)
    return web.json_response({"object": "response.input_tokens", "input_tokens": count_chat_tokens(st, req)})


def assemble_message(parser: ChatDeltaParser, text: str) -> Dict[str, Any]:
    """The whole assistant message of a finished generation: content, reasoning_content, tool_calls."""
    msg: Dict[str, Any] = {"role": "assistant", "content": None}
    calls: List[Dict[str, Any]] = []
    content: List[str] = []
    reasoning: List[str] = []
    for d in parser.feed(text, partial=False):
        if "content" in d:
            content.append(d["content"])
        if "reasoning_content" in d:
            reasoning.append(d["reasoning_content"])
        for tc in d.get("tool_calls", []):
            if tc["index"] >= len(calls):
                calls.append({"id": tc["id"], "type": "function",
                              "function": {"name": tc["function"]["name"], "arguments": ""}})
            calls[tc["index"]]["function"]["arguments"] += tc["function"].get("arguments", "")
    msg["content"] = "".join(content) if (content or not calls) else None
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    return msg


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    req = await parse(request, ChatCompletionRequest)
    rendered, _, streams = prepare_chat(st, req)
    cid, created, model = new_id("chatcmpl"), now(), model_name(st, req.model)
    # while it runs, the completion can be acted on by id (POST /v1/chat/completions/control)
    st.live_chats[cid] = [s.request_id for s in streams]
    try:
        return await _chat_response(request, st, req, rendered, streams, cid, created, model)
    finally:
        st.live_chats.pop(cid, None)


async def _chat_response(request: web.Request, st: ServerState, req: ChatCompletionRequest, rendered: Dict[str, Any],
                         streams: List[RequestStream], cid: str, created: int, model: str) -> web.StreamResponse:
    cfg, vocab = st.config, st.vocab
    syntax = rendered.get("syntax")
    parsers = [ChatDeltaParser(syntax) for _ in streams]
    texts = [""] * len(streams)

    def lp_of(o: RequestOutput) -> Optional[Dict[str, Any]]:
        if not req.logprobs or not o.logprobs:
            return None
        return {"content": [token_logprob_entry(vocab, t.token, t.prob, t.top_probs, post_sampling=True)
                            if t.post_sampling else token_logprob_entry(vocab, t.token, t.logprob, t.top)
                            for t in o.logprobs]}

    def finish_of(i: int, o: RequestOutput) -> Optional[str]:
        if o.finish_reason == "stop" and parsers[i].n_calls:
            return "tool_calls"
        return o.finish_reason

    def chunk(i: int, delta: Dict[str, Any], finish: Optional[str] = None, lp: Any = None) -> Dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "pyllama",
                "choices": [{"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

    if req.stream:
        finals: List[Optional[RequestOutput]] = [None] * len(streams)
        async with SSEWriter(request, cfg.sse_ping_interval) as sse:
            for i in range(len(streams)):
                await sse.send(chunk(i, {"role": "assistant", "content": None}))
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o))
                    return sse.response
                texts[i] += o.text
                lp = lp_of(o)
                for delta in parsers[i].feed(texts[i], partial=not o.finished):
                    await sse.send(chunk(i, delta, None, lp))
                    lp = None
                if lp is not None:
                    await sse.send(chunk(i, {}, None, lp))
                if o.finished:
                    finals[i] = o
                    last = chunk(i, {}, finish_of(i, o))
                    last["timings"] = o.timings
                    await sse.send(last)
            if req.stream_options and req.stream_options.include_usage:
                await sse.send({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "choices": [], "usage": usage([f for f in finals if f], req.n)})
            await sse.done()
        return sse.response

    outs = await collect(streams)
    choices = []
    for i, o in enumerate(outs):
        msg = assemble_message(parsers[i], o.text)
        choices.append({"index": i, "message": msg, "logprobs": lp_of(o), "finish_reason": finish_of(i, o)})
    return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                              "system_fingerprint": "pyllama", "choices": choices, "usage": usage(outs, req.n),
                              "timings": outs[0].timings})


async def chat_control(request: web.Request) -> web.Response:
    """POST /v1/chat/completions/control: act on a running chat completion by its id. The one action
    is "reasoning_end" (llama-server's): the completion must have been sent with
    ``reasoning_control: true``; its reasoning block ends now (the budget message and end tag are
    forced) and the answer follows. Answers {"success": bool, "message"?: str}."""
    st = request.app[STATE].require()
    req = await parse(request, ChatControlRequest)
    if not req.id:
        raise APIError(400, "missing completion id")
    if req.action != "reasoning_end":
        raise APIError(400, "unknown control action")
    ids = st.live_chats.get(req.id)
    if not ids:
        return web.json_response({"success": False, "message": "no active completion for this id"})
    assert st.engine is not None
    found = False
    for rid in ids:
        try:
            await st.engine.reasoning_end(rid)
            found = True
        except LookupError:
            continue            # that choice has finished
        except ValueError as e:
            return web.json_response({"success": False, "message": str(e)})
    if not found:
        return web.json_response({"success": False, "message": "no active completion for this id"})
    return web.json_response({"success": True})


def embedding_inputs(vocab: "_core.Vocab", value: Any) -> List[List[int]]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise APIError(400, "input must be a string, a list of strings, tokens or a list of token lists")
    out = []
    for item in value:
        if isinstance(item, str):
            toks = vocab.tokenize(item, add_special=True, parse_special=True)
        elif isinstance(item, list):
            toks = [int(t) for t in item]
            if any(t < 0 or t >= vocab.n_vocab for t in toks):
                raise APIError(400, f"token id out of range [0, {vocab.n_vocab})")
        else:
            raise APIError(400, f"invalid input element {item!r}")
        if not toks:
            raise APIError(400, "an input is empty")
        out.append(toks)
    return out


async def compute_embeddings(request: web.Request, pooled: bool) -> Tuple[ServerState, EmbeddingRequest,
                                                                          List[List[int]], List[Any]]:
    """Shared by /v1/embeddings and /embedding(s): validate, tokenize, embed through the engine."""
    st = request.app[STATE].require()
    cfg = st.config
    require_enabled(cfg.embedding, "embeddings", "--embeddings")
    req = await parse(request, EmbeddingRequest)
    try:
        inputs = embedding_inputs(st.vocab, req.inputs())
    except ValueError as e:
        raise APIError(400, str(e)) from None
    norm = cfg.embd_normalize if req.embd_normalize is None else req.embd_normalize
    try:
        vecs = await st.engine.embed(inputs, pooled=pooled, normalize=norm)
    except ContextLimitError as e:
        raise APIError(400, str(e)) from None
    return st, req, inputs, vecs


async def embeddings(request: web.Request) -> web.Response:
    st, req, inputs, vecs = await compute_embeddings(request, pooled=True)
    data = []
    for i, v in enumerate(vecs):
        emb: Any = v
        if req.encoding_format == "base64":
            emb = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(t) for t in inputs)
    return web.json_response({"object": "list", "model": model_name(st, req.model), "data": data,
                              "usage": {"prompt_tokens": n, "total_tokens": n}})
