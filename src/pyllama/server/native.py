"""llama-server's own endpoints: /health, /completion, /tokenize, /detokenize, /apply-template,
/props, /slots, /metrics, /embedding(s)."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

from aiohttp import web

from .. import __version__
from ..engine import RequestOutput
from ..errors import PyllamaError, StateError
from . import metrics as prom
from .common import error_of, parse
from .errors import APIError, error_response, require_enabled
from .generation import (submit_all, collect, make_request, request_lora, merged, prompt_tokens, sampling_params,
                         stop_list)
from .openai import compute_embeddings
from .schemas import ApplyTemplateRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from .sse import SSEWriter
from .state import STATE, ServerState


async def health(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if st.load_error:
        return error_response(503, f"Model failed to load: {st.load_error}")
    if not st.ready:
        return error_response(503, "Loading model")
    if st.engine is not None and st.engine.running and st.engine.core.fatal_error:
        return error_response(503, f"the engine's last decode failed: {st.engine.core.fatal_error}")
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
    cfg = st.config
    d = {"n_ctx": st.engine.core.runner.n_ctx_slot if st.engine and st.engine.running else cfg.ctx_size,
         "model": cfg.model_name, "n_predict": cfg.n_predict, "temperature": cfg.temperature, "top_k": cfg.top_k,
         "top_p": cfg.top_p, "min_p": cfg.min_p, "typical_p": cfg.typical_p, "repeat_penalty": cfg.repeat_penalty,
         "repeat_last_n": cfg.repeat_last_n, "presence_penalty": cfg.presence_penalty,
         "frequency_penalty": cfg.frequency_penalty, "seed": cfg.seed, "cache_prompt": cfg.cache_prompt}
    if req is not None:
        d.update({k: v for k, v in req.model_dump(exclude={"prompt"}).items() if v is not None})
    return d


async def completion(request: web.Request) -> web.StreamResponse:
    st = request.app[STATE].require()
    return await run_completion(request, st, await parse(request, CompletionRequest))


async def run_completion(request: web.Request, st: ServerState, req: CompletionRequest) -> web.StreamResponse:
    cfg, vocab = st.config, st.vocab
    prompts = prompt_tokens(vocab, req.prompt)
    sampling = sampling_params(req, cfg, vocab)
    max_tokens = req.n_predict if req.n_predict is not None else req.max_tokens
    n_probs = req.n_probs or 0
    lora = request_lora(req, st.lora_scales())
    reqs = [make_request(p, req, cfg, sampling, max_tokens=max_tokens, stop=stop_list(req.stop), n_probs=n_probs,
                         choice=j, lora=lora) for p in prompts for j in range(req.n_cmpl)]
    streams = submit_all(st.engine, reqs)

    def final_fields(i: int, o: RequestOutput, content: str, tokens: List[int]) -> Dict[str, Any]:
        d: Dict[str, Any] = {
            "index": i, "content": content, "tokens": tokens if (req.return_tokens or req.stream) else [],
            "id_slot": o.id_slot, "stop": True, "model": cfg.model_name,
            "tokens_predicted": o.usage["completion_tokens"] if o.usage else 0,
            "tokens_evaluated": o.usage["prompt_tokens"] if o.usage else 0,
            "generation_settings": generation_settings(st, req),
            "prompt": vocab.detokenize(list(reqs[i].prompt)), "has_new_line": "\n" in content, "truncated": False,
            "stop_type": _stop_type(o), "stopping_word": o.stop_word or "",
            "tokens_cached": o.usage["prompt_tokens_details"]["cached_tokens"] if o.usage else 0,
            "timings": o.timings}
        if n_probs:
            d["completion_probabilities"] = _probs(st, o)
        return d

    if req.stream:
        async with SSEWriter(request, cfg.sse_ping_interval) as sse:
            async for i, o in merged(streams):
                if o.finished and o.error is not None:
                    await sse.send(error_of(o))
                    return sse.response
                if o.finished:
                    d = final_fields(i, o, o.text, o.token_ids)
                    await sse.send(d)
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
    results = []
    for i, o in enumerate(outs):
        results.append(final_fields(i, o, o.text, o.token_ids))
    return web.json_response(results[0] if len(results) == 1 else results)


async def tokenize(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, TokenizeRequest)
    vocab = st.vocab
    toks = vocab.tokenize(req.content, add_special=req.add_special, parse_special=req.parse_special)
    if not req.with_pieces:
        return web.json_response({"tokens": toks})
    out = []
    for t in toks:
        piece = vocab.token_to_piece(t, special=True)
        try:
            p: Any = piece.decode("utf-8")
        except UnicodeDecodeError:
            p = list(piece)
        out.append({"id": t, "piece": p})
    return web.json_response({"tokens": out})


async def detokenize(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, DetokenizeRequest)
    vocab = st.vocab
    bad = [t for t in req.tokens if not 0 <= t < vocab.n_vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} out of range [0, {vocab.n_vocab})")
    return web.json_response({"content": vocab.detokenize(req.tokens, unparse_special=True)})


async def apply_template(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    req = await parse(request, ApplyTemplateRequest)
    from .openai import render_chat
    from .schemas import ChatCompletionRequest
    chat = ChatCompletionRequest(messages=req.messages, tools=req.tools, tool_choice=req.tool_choice,
                                 chat_template_kwargs=req.chat_template_kwargs,
                                 add_generation_prompt=req.add_generation_prompt)
    return web.json_response({"prompt": render_chat(st, chat)["prompt"]})


async def props(request: web.Request) -> web.Response:
    st = request.app[STATE]
    cfg = st.config
    d: Dict[str, Any] = {
        "default_generation_settings": {"id": 0, "n_ctx": cfg.ctx_size, "params": generation_settings(st)}
        if not st.ready else {"n_ctx": st.engine.core.runner.n_ctx_slot, "params": generation_settings(st)},
        "total_slots": cfg.n_slots, "model_alias": cfg.model_name, "model_path": cfg.model or "",
        "modalities": {"vision": False, "audio": False}, "endpoint_slots": cfg.slots,
        "endpoint_props": cfg.props, "endpoint_metrics": cfg.metrics, "webui": cfg.ui,
        "build_info": f"pyllama {__version__}", "is_sleeping": False,
    }
    if st.ready and st.templates is not None:
        d["chat_template"] = st.templates.source() or ""
        d["chat_template_caps"] = st.templates.caps
        tu = st.templates.source("tool_use")
        if tu:
            d["chat_template_tool_use"] = tu
        d["bos_token"] = st.vocab.token_to_piece(st.vocab.bos).decode("utf-8", "replace") if st.vocab.bos is not None else ""
        d["eos_token"] = st.vocab.token_to_piece(st.vocab.eos).decode("utf-8", "replace") if st.vocab.eos is not None else ""
    return web.json_response(d)


async def props_post(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.props, "changing global properties", "--props")
    # llama-server (server-context.cpp, post_props) accepts no property yet ("Options: None yet"):
    # it reads no body and answers success; so do we, whatever the body
    return web.json_response({"success": True})


async def slots(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.slots, "slots endpoint", "--slots")
    st.require()
    info = await st.engine.slots()
    if request.query.get("fail_on_no_slot") in ("1", "true") and all(s["is_processing"] for s in info):
        raise APIError(503, "no slot available")
    return web.json_response(info)


_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


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
    try:
        if action == "erase":
            res = await st.engine.erase_slot(id_slot)
            return web.json_response(res)
        require_enabled(cfg.slot_save_path, "slot save/restore", "--slot-save-path")
        body = await request.json() if request.can_read_body else {}
        filename = body.get("filename") if isinstance(body, dict) else None
        if not isinstance(filename, str) or not filename or not _SAFE.match(filename) or filename in (".", ".."):
            raise APIError(400, "Invalid filename")
        path = os.path.join(cfg.slot_save_path, filename)
        import time
        t0 = time.perf_counter()
        if action == "save":
            res = await st.engine.save_slot(id_slot, path)
            return web.json_response({"id_slot": id_slot, "filename": filename, "n_saved": res["n_saved"],
                                      "n_written": res["n_written"],
                                      "timings": {"save_ms": (time.perf_counter() - t0) * 1e3}})
        res = await st.engine.restore_slot(id_slot, path)
        return web.json_response({"id_slot": id_slot, "filename": filename, "n_restored": res["n_restored"],
                                  "n_read": os.path.getsize(path),
                                  "timings": {"restore_ms": (time.perf_counter() - t0) * 1e3}})
    except ValueError as e:
        raise APIError(400, str(e)) from None
    except StateError as e:
        raise APIError(400, str(e)) from None
    except PyllamaError as e:
        raise APIError(400, str(e)) from None


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    require_enabled(st.config.metrics, "metrics endpoint", "--metrics")
    st.require()
    m = await st.engine.metrics()
    return web.Response(text=prom.render(m), content_type="text/plain", charset="utf-8",
                        headers={"Process-Start-Time-Unix": str(int(st.t_start))})


async def embedding_native(request: web.Request) -> web.Response:
    """POST /embedding(s): llama-server's non-OpenAI shape (one vector per token when pooling is none)."""
    _, _, _, vecs = await compute_embeddings(request, pooled=False)
    return web.json_response([{"index": i, "embedding": v} for i, v in enumerate(vecs)])
