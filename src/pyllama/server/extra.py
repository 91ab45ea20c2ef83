"""/infill, /reranking and /lora-adapters."""
from __future__ import annotations

from typing import Any, Dict, List

from aiohttp import web

from ..errors import ContextLimitError
from .common import parse, read_json, validate
from .errors import APIError, require_enabled
from .schemas import InfillRequest, LoraItem, RerankRequest
from .state import STATE


async def rerank(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    require_enabled(st.config.reranking, "reranking", "--reranking")
    req = await parse(request, RerankRequest)
    vocab = st.vocab
    q = vocab.tokenize(req.query, add_special=False, parse_special=False)
    prompts = []
    for doc in req.documents:
        d = vocab.tokenize(doc, add_special=False, parse_special=False)
        toks: List[int] = []
        if vocab.bos is not None:
            toks.append(vocab.bos)
        toks += q
        if vocab.eos is not None:
            toks.append(vocab.eos)
        if vocab.sep is not None:
            toks.append(vocab.sep)
        toks += d
        if vocab.eos is not None:
            toks.append(vocab.eos)
        prompts.append(toks)
    try:
        vecs = await st.engine.embed(prompts, pooled=True, normalize=-1)
    except ContextLimitError as e:
        raise APIError(400, str(e)) from None
    results = [{"index": i, "relevance_score": float(v[0])} for i, v in enumerate(vecs)]
    if req.return_text:
        for r in results:
            r["document"] = {"text": req.documents[r["index"]]}
    results.sort(key=lambda r: -r["relevance_score"])
    if req.top_n:
        results = results[:req.top_n]
    n = sum(len(p) for p in prompts)
    return web.json_response({"model": req.model or st.config.model_name, "object": "list",
                              "usage": {"prompt_tokens": n, "total_tokens": n}, "results": results})


async def infill(request: web.Request) -> web.StreamResponse:
    """Fill-in-the-middle: [FIM_PRE] prefix [FIM_SUF] suffix [FIM_MID] prompt, answered as /completion."""
    st = request.app[STATE].require()
    req = await parse(request, InfillRequest)
    vocab = st.vocab
    pre, suf, mid = vocab.fim_pre, vocab.fim_suf, vocab.fim_mid
    if pre is None or suf is None or mid is None:
        raise APIError(501, "the model has no fill-in-the-middle tokens (FIM_PRE/FIM_SUF/FIM_MID)",
                       "not_supported_error")
    extra: List[int] = []
    sep = vocab.fim_sep
    for chunk in req.input_extra:
        if not isinstance(chunk, dict) or "text" not in chunk:
            raise APIError(400, "input_extra items must be objects with a \"text\" field")
        if sep is not None and chunk.get("filename"):
            extra += [sep] + vocab.tokenize(chunk["filename"] + "\n", add_special=False, parse_special=False)
        extra += vocab.tokenize(chunk["text"], add_special=False, parse_special=False)
    toks = ([vocab.bos] if vocab.add_bos and vocab.bos is not None else []) + extra + [pre] + \
        vocab.tokenize(req.input_prefix, add_special=False, parse_special=False) + [suf] + \
        vocab.tokenize(req.input_suffix, add_special=False, parse_special=False) + [mid] + \
        vocab.tokenize(req.prompt, add_special=False, parse_special=False)
    body: Dict[str, Any] = req.model_dump(exclude={"input_prefix", "input_suffix", "input_extra", "prompt"},
                                          exclude_none=True)
    body["prompt"] = toks
    from . import native
    from .schemas import CompletionRequest
    creq = validate(CompletionRequest, body)
    return await native.run_completion(request, st, creq)


async def lora_get(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    return web.json_response([{"id": i, "path": e.path, "scale": e.scale} for i, e in enumerate(st.loras)])


async def lora_post(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    data = await read_json(request)
    if not isinstance(data, list):
        raise APIError(400, "expected a list of {\"id\": ..., \"scale\": ...}")
    items = [validate(LoraItem, d) for d in data]
    for it in items:
        if it.id >= len(st.loras):
            raise APIError(400, f"invalid adapter id {it.id}")
    scales = {it.id: it.scale for it in items}
    for i, e in enumerate(st.loras):
        e.scale = scales.get(i, 0.0)        # not listed: scale 0, as llama-server
    scales = st.lora_scales()
    # the default of requests without a "lora" field (and of embeddings); applied by the next decode
    await st.engine.call(lambda core: core.runner.set_lora_default(scales))
    return web.json_response([{"id": i, "path": e.path, "scale": e.scale} for i, e in enumerate(st.loras)])
