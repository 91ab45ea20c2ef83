"""llama-server's own endpoints: /health, /completion, /tokenize, /detokenize, /apply-template,
/props, /slots, /metrics, /embedding(s)."""
from __future__ import annotations

import os
import re
import time
from typing import Any, Dict, List, Optional

from aiohttp import web

from .. import __version__
from ..engine import RequestOutput
from ..errors import PyllamaError
from ..frontend import ChatInput, GenerationOptions, Prepared
from ..params import DEFAULT_SEED
from . import metrics as prom
from .common import json_response, parse, read_json
from .errors import APIError, error_of, error_response, require_enabled
from .generation import collect, merged, start
from .openai import compute_embeddings
from .schemas import ApplyTemplateRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .serve import TRANSPORT
from .sse import SSEWriter
from .state import STATE, ServerState


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if st.load_error:
        return error_response(503, f"Model failed to load: {st.load_error}")
    if not st.ready:
        return error_response(503, "Loading model")
    fatal = st.engine.fatal_error if st.engine is not None and st.engine.running else None
    if fatal:
        return error_response(503, f"the engine's last decode failed: {fatal}")
    return web.json_response({"status": "ok"})


def _stop_type(o: RequestOutput) -> str:
    if not o.finished:
        return "none"
    if o.finish_reason == "length":
        return "limit"
    if o.finish_reason == "stop":
        return "word" if o.stop_word else "eos"
    return "none"


def _probs(st: ServerState, o: RequestOutput) -> List[Dict[str, Any]]:
    """``completion_probabilities`` as llama-server: ``logprob``/``top_logprobs`` from the raw logits, or
    with ``post_sampling_probs`` ``prob``/``top_probs`` from the sampling chain's candidates."""
    vocab = st.vocab

    def tok(t: int, key: str, v: float) -> Dict[str, Any]:
        piece = vocab.token_to_piece(t, special=False)
        return {"id": t, "token": piece.decode("utf-8", "replace"), "bytes": list(piece), key: v}

    out = []
    for p in o.logprobs:
        if p.post_sampling:
            out.append({**tok(p.token, "prob", p.prob), "top_probs": [tok(t, "prob", q) for t, q in p.top_probs]})
        else:
            out.append({**tok(p.token, "logprob", p.logprob),
                        "top_logprobs": [tok(t, "logprob", lp) for t, lp in p.top]})
    return out


def generation_settings(st: ServerState, req: Optional[CompletionRequest] = None) -> Dict[str, Any]:
    cfg, s = st.config, st.config.sampling
    d: Dict[str, Any] = {"n_ctx": st.engine.n_ctx_slot if st.engine and st.engine.running else cfg.context.n_ctx,
                         "model": cfg.model_name, "n_predict": cfg.generation.n_predict}
    d.update({k: getattr(s, k) for k in ("temperature", "top_k", "top_p", "min_p", "typical_p", "repeat_penalty",
                                         "repeat_last_n", "presence_penalty", "frequency_penalty")})
    # the seed as the flag spells it: -1 for a random one (SamplingParams holds DEFAULT_SEED)
    d.update(seed=-1 if s.seed == DEFAULT_SEED else s.seed, cache_prompt=cfg.generation.cache_prompt)
    if req is not None:
        d.update({k: _echo(v) for k, v in req.model_dump(exclude={"prompt"}).items() if v is not None})
    return d


ECHO_MAX = 64 * 1024


def _echo(v: Any) -> Any:
    """A request field as generation_settings echoes it: a string past ECHO_MAX characters (a 4 MiB
    grammar, say) is cut there, so that a response with many results does not repeat it whole in each."""
    if isinstance(v, str) and len(v) > ECHO_MAX:
        return v[:ECHO_MAX] + f"... ({len(v)} characters)"
    return v


def completion_prepare(st: ServerState, req: CompletionRequest, prompt: Any = None) -> Prepared:
    """/completion's engine requests (``prompt``: tokens built elsewhere, e.g. /infill's)."""
    return st.fe.completion(req.prompt if prompt is None else prompt, GenerationOptions.of(req), n=req.n_cmpl,
                            max_tokens=req.n_predict if req.n_predict is not None else req.max_tokens,
                            stop=req.stop, n_probs=req.n_probs or 0)


async def completion(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    req = await parse(request, CompletionRequest)
    return await run_completion(request, st, req, *await start(st, lambda: completion_prepare(st, req)))


async def run_completion(request: web.Request, st: ServerState, req: CompletionRequest, prepared: Prepared,
                         streams: List[Any]) -> web.StreamResponse:
    cfg, vocab = st.config, st.vocab
    reqs = prepared.requests
    n_probs = req.n_probs or 0

    settings = generation_settings(st, req)     # one copy for every result

    def final_fields(i: int, o: RequestOutput, content: str, tokens: List[int]) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "index": i, "content": content, "tokens": tokens if (req.return_tokens or req.stream) else [],
            "id_slot": o.id_slot, "stop": True, "model": cfg.model_name,
            "tokens_predicted": o.usage["completion_tokens"] if o.usage else 0,
            "tokens_evaluated": o.usage["prompt_tokens"] if o.usage else 0,
            "generation_settings": settings,
            "prompt": vocab.detokenize(list(reqs[i].prompt)), "has_new_line": "\n" in content, "truncated": False,
            "stop_type": _stop_type(o), "stopping_word": o.stop_word or "",
            "tokens_cached": o.usage["prompt_tokens_details"]["cached_tokens"] if o.usage else 0,
            "timings": o.timings}
        if n_probs:
            d["completion_probabilities"] = _probs(st, o)
        return d

    if req.stream:
        async with SSEWriter(request, cfg.http.sse_ping_interval) as sse:
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o.error))
                    return sse.response
                if o.finished:     # it echoes the prompt: built on the worker pool
                    await sse.send(await st.workers.run(final_fields, i, o, o.text, o.token_ids))
                elif o.text or o.token_ids:
                    chunk: Dict[str, Any] = {"index": i, "content": o.text, "tokens": o.token_ids, "stop": False,
                                             "id_slot": o.id_slot}
                    if n_probs:
                        chunk["completion_probabilities"] = _probs(st, o)
                    if req.timings_per_token:
                        chunk["timings"] = o.timings
                    await sse.send(chunk)
        return sse.response

    outs = await collect(streams)

    def body() -> Any:
        results = [final_fields(i, o, o.text, o.token_ids) for i, o in enumerate(outs)]
        return results[0] if len(results) == 1 else results

    return await json_response(request, body)


async def tokenize(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, TokenizeRequest)
    fe = st.fe

    def work() -> Any:
        if req.with_pieces:
            return {"tokens": fe.tokenize_with_pieces(req.content, req.add_special, req.parse_special)}
        return fe.tokenize_json(req.content, req.add_special, req.parse_special)

    return await json_response(request, work)


async def detokenize(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, DetokenizeRequest)
    return await json_response(request, lambda: {"content": st.fe.detokenize(req.tokens)})


async def apply_template(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, ApplyTemplateRequest)
    return await json_response(request, lambda: {"prompt": st.fe.render(ChatInput(
        messages=[m.model_dump(exclude_none=True) for m in req.messages], tools=req.tools, tool_choice=req.tool_choice,
        chat_template_kwargs=req.chat_template_kwargs, add_generation_prompt=req.add_generation_prompt)).prompt})


async def props(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cfg = st.config
    d: Dict[str, Any] = {
        "default_generation_settings": {"id": 0, "n_ctx": cfg.context.n_ctx, "params": generation_settings(st)}
        if not st.ready else {"n_ctx": st.engine.n_ctx_slot, "params": generation_settings(st)},
        "total_slots": cfg.n_slots, "model_alias": cfg.model_name, "model_path": cfg.model.path or "",
        "modalities": {"vision": False, "audio": False}, "endpoint_slots": cfg.endpoints.slots,
        "endpoint_props": cfg.endpoints.props, "endpoint_metrics": cfg.endpoints.metrics, "webui": cfg.http.ui,
        "build_info": f"pyllama {__version__}", "is_sleeping": False,
    }
    if st.ready and st.frontend is not None:
        templates = st.frontend.bundle.templates
        d["chat_template"] = templates.source() or ""
        d["chat_template_caps"] = templates.caps
        tu = templates.source("tool_use")
        if tu:
            d["chat_template_tool_use"] = tu
        d["bos_token"] = st.vocab.token_to_piece(st.vocab.bos).decode("utf-8", "replace") if st.vocab.bos is not None else ""
        d["eos_token"] = st.vocab.token_to_piece(st.vocab.eos).decode("utf-8", "replace") if st.vocab.eos is not None else ""
    return web.json_response(d)


async def props_post(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.endpoints.props, "changing global properties", "--props")
    # llama-server (server-context.cpp, post_props) accepts no property yet ("Options: None yet"):
    # it reads no body and answers success; so do we, whatever the body
    return web.json_response({"success": True})


async def slots(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.endpoints.slots, "slots endpoint", "--slots")
    st.require()
    info = await st.engine.slots()
    if request.query.get("fail_on_no_slot") in ("1", "true") and all(s["is_processing"] for s in info):
        raise APIError(503, "no slot available")
    return web.json_response(info)


_SAFE = re.compile(r"[A-Za-z0-9._-]{1,255}")     # a whole name: no newline, no path


async def slot_action(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    cfg = st.config
    try:
        id_slot = int(request.match_info["id_slot"])
    except ValueError:
        raise APIError(400, "invalid slot id") from None
    action = request.query.get("action", "")
    if action not in ("save", "restore", "erase"):
        raise APIError(400, "invalid action: use ?action=save|restore|erase")
    engine = st.engine
    assert engine is not None
    # llama-server refuses every slot action, erase included, without --slot-save-path
    require_enabled(cfg.endpoints.slot_save_path, "slot actions", "--slot-save-path")
    try:
        if action == "erase":
            erased = await engine.erase_slot(id_slot)
            return web.json_response({"id_slot": erased.id_slot, "n_erased": erased.n_erased})
        body = await read_json(request) if request.can_read_body else {}
        filename = body.get("filename") if isinstance(body, dict) else None
        if not isinstance(filename, str) or not _SAFE.fullmatch(filename) or filename in (".", ".."):
            raise APIError(400, "Invalid filename")
        path = os.path.join(cfg.endpoints.slot_save_path, filename)
        t0 = time.perf_counter()
        if action == "save":
            saved = await engine.save_slot(id_slot, path)
            return web.json_response({"id_slot": id_slot, "filename": filename, "n_saved": saved.n_saved,
                                      "n_written": saved.n_written,
                                      "timings": {"save_ms": (time.perf_counter() - t0) * 1e3}})
        restored = await engine.restore_slot(id_slot, path)
        return web.json_response({"id_slot": id_slot, "filename": filename, "n_restored": restored.n_restored,
                                  "n_read": restored.n_read,
                                  "timings": {"restore_ms": (time.perf_counter() - t0) * 1e3}})
    except (ValueError, PyllamaError) as e:     # a bad slot, a busy slot, a file that cannot be used
        raise APIError(400, str(e)) from None


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.endpoints.metrics, "metrics endpoint", "--metrics")
    st.require()
    m = await st.engine.metrics()
    transport = request.app.get(TRANSPORT)      # set by the serve loop (python -m pyllama.server)
    if transport is not None:
        m.update(http_connections_open=transport.open_connections,
                 http_connections_rejected_total=transport.http_rejected_connections)
    return web.Response(text=prom.render(m), content_type="text/plain", charset="utf-8",
                        headers={"Process-Start-Time-Unix": str(int(st.t_start))})


async def embedding_native(request: web.Request) -> web.Response:
    """POST /embedding(s): llama-server's non-OpenAI shape (one vector per token when pooling is none)."""
    _, _, _, vecs = await compute_embeddings(request, pooled=False)
    return web.json_response([{"index": i, "embedding": v} for i, v in enumerate(vecs)])
