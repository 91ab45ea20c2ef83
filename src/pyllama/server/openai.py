"""OpenAI endpoints: /v1/models, /v1/completions, /v1/chat/completions, /v1/embeddings."""
from __future__ import annotations

import base64
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from aiohttp import web

from ..engine import RequestOutput, RequestStream
from ..frontend import ChatDeltaParser, GenerationOptions, Prepared, new_id
from ..frontend import formatting as fmt
from .common import json_response, parse
from .errors import APIError, error_of, require_enabled
from .generation import collect, merged, start
from .pipeline import count_chat_tokens, model_name, start_chat
from .schemas import ChatCompletionRequest, ChatControlRequest, EmbeddingRequest, OAICompletionRequest
from .sse import SSEWriter
from .state import STATE, ServerState


async def models(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cfg = st.config
    meta: Dict[str, Any] = {}
    if st.ready and st.frontend is not None:
        m = st.frontend.bundle.model
        meta = {"vocab_type": m.vocab.type, "n_vocab": m.vocab.n_vocab, "n_ctx_train": m.n_ctx_train,
                "n_embd": m.n_embd, "n_params": m.n_params, "size": m.size}
    entry = {"id": cfg.model_name, "object": "model", "created": int(st.t_start), "owned_by": "llamacpp",
             "meta": meta or None}
    caps = ["embedding"] if cfg.endpoints.embeddings else ["completion"]
    return web.json_response({"object": "list", "data": [entry],
                              "models": [{"name": cfg.model_name, "model": cfg.model_name, "type": "model",
                                          "capabilities": caps}]})


async def completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    req = await parse(request, OAICompletionRequest)
    if req.suffix:
        raise APIError(501, "suffix is not supported on /v1/completions; use /infill", "not_supported_error")
    cfg, fe = st.config, st.fe
    prepared, streams = await start(st, lambda: fe.completion(
        req.prompt, GenerationOptions.of(req), n=req.n, max_tokens=req.max_tokens, stop=req.stop, n_probs=req.logprobs or 0,
        logprobs=req.logprobs is not None))
    cid, created, model = new_id("cmpl"), fmt.now(), model_name(st, req.model)
    echo = [""] * len(streams)
    if req.echo:
        echo = await st.workers.run(lambda: [fe.vocab.detokenize(p) for p in prepared.prompts for _ in range(req.n)])

    def obj(choices: List[Dict[str, Any]], **extra: Any) -> Dict[str, Any]:
        return fmt.completion_object(cid, created, model, choices, **extra)

    if req.stream:
        finals: List[Optional[RequestOutput]] = [None] * len(streams)
        offsets = [len(e) for e in echo]
        async with SSEWriter(request, cfg.http.sse_ping_interval) as sse:
            for i, e in enumerate(echo):
                if e:
                    await sse.send(obj([fmt.completion_choice(i, e, None)]))
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o.error))
                    return sse.response
                lp = None
                if req.logprobs is not None:
                    lp, _ = fmt.completion_logprobs(fe.vocab, o.logprobs, offsets[i])
                offsets[i] += len(o.text)
                if o.text or lp or o.finished:
                    await sse.send(obj([fmt.completion_choice(i, o.text, o.finish_reason if o.finished else None, lp)]))
                if o.finished:
                    finals[i] = o
            if req.stream_options and req.stream_options.include_usage:
                await sse.send(obj([], usage=fmt.usage([f for f in finals if f], req.n)))
            await sse.done()
        return sse.response

    outs = await collect(streams)
    choices = []
    for i, o in enumerate(outs):
        lp = fmt.completion_logprobs(fe.vocab, o.logprobs, len(echo[i]))[0] if req.logprobs is not None else None
        choices.append(fmt.completion_choice(i, echo[i] + o.text, o.finish_reason, lp))
    return web.json_response(obj(choices, usage=fmt.usage(outs, req.n), timings=outs[0].timings))


async def chat_input_tokens(request: web.Request) -> web.Response:
    """POST /v1/chat/completions/input_tokens (llama-server's): the prompt's token count."""
    st = request.app[STATE].require()
    req = await parse(request, ChatCompletionRequest)
    return web.json_response({"object": "response.input_tokens", "input_tokens": await count_chat_tokens(st, req)})


async def chat_completions(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    req = await parse(request, ChatCompletionRequest)
    prepared, streams = await start_chat(st, req)
    cid, created, model = new_id("chatcmpl"), fmt.now(), model_name(st, req.model)
    # while it runs, the completion can be acted on by id (POST /v1/chat/completions/control)
    st.live_chats[cid] = [s.request_id for s in streams]
    try:
        return await _chat_response(request, st, req, prepared, streams, cid, created, model)
    finally:
        st.live_chats.pop(cid, None)


async def _chat_response(request: web.Request, st: ServerState, req: ChatCompletionRequest, prepared: Prepared,
                         streams: List[RequestStream], cid: str, created: int, model: str) -> web.StreamResponse:
    vocab = st.vocab
    assert prepared.rendered is not None
    parsers = [ChatDeltaParser(prepared.rendered.syntax) for _ in streams]
    texts = [""] * len(streams)

    def lp_of(o: RequestOutput) -> Optional[Dict[str, Any]]:
        return fmt.chat_logprobs(vocab, o.logprobs) if req.logprobs else None

    def chunk(i: int, delta: Dict[str, Any], finish: Optional[str] = None, lp: Any = None) -> Dict[str, Any]:
        return fmt.chat_chunk(cid, created, model, i, delta, finish, lp)

    if req.stream:
        finals: List[Optional[RequestOutput]] = [None] * len(streams)
        async with SSEWriter(request, st.config.http.sse_ping_interval) as sse:
            for i in range(len(streams)):
                await sse.send(chunk(i, {"role": "assistant", "content": None}))
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o.error))
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
                    last = chunk(i, {}, fmt.chat_finish_reason(o.finish_reason, parsers[i].n_calls))
                    last["timings"] = o.timings
                    await sse.send(last)
            if req.stream_options and req.stream_options.include_usage:
                await sse.send(fmt.usage_chunk(cid, created, model, fmt.usage([f for f in finals if f], req.n)))
            await sse.done()
        return sse.response

    outs = await collect(streams)
    choices = [{"index": i, "message": fmt.assemble_message(parsers[i], o.text), "logprobs": lp_of(o),
                "finish_reason": fmt.chat_finish_reason(o.finish_reason, parsers[i].n_calls)}
               for i, o in enumerate(outs)]
    return web.json_response(fmt.chat_completion(cid, created, model, choices, usage=fmt.usage(outs, req.n),
                                                 timings=outs[0].timings))


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


async def compute_embeddings(request: web.Request, pooled: bool) -> Tuple[ServerState, EmbeddingRequest,
                                                                          List[List[int]], List[Any]]:
    """Shared by /v1/embeddings and /embedding(s): validate, tokenize, embed through the engine."""
    st = request.app[STATE].require()
    cfg = st.config
    require_enabled(cfg.endpoints.embeddings, "embeddings", "--embeddings")
    req = await parse(request, EmbeddingRequest)
    value = req.inputs()
    inputs = await st.workers.run(st.fe.embedding_inputs, value)
    norm = cfg.endpoints.embd_normalize if req.embd_normalize is None else req.embd_normalize
    assert st.engine is not None
    return st, req, inputs, await st.engine.embed(inputs, pooled=pooled, normalize=norm)


async def embeddings(request: web.Request) -> web.Response:
    st, req, inputs, vecs = await compute_embeddings(request, pooled=True)

    def body() -> Dict[str, Any]:
        data = []
        for i, v in enumerate(vecs):
            emb: Any = v
            if req.encoding_format == "base64":
                emb = base64.b64encode(np.asarray(v, dtype=np.float32).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        n = sum(len(t) for t in inputs)
        return {"object": "list", "model": model_name(st, req.model), "data": data,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    return await json_response(request, body)

