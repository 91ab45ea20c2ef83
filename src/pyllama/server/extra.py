"""/infill, /reranking and /lora-adapters."""
from __future__ import annotations

from typing import Any, Dict

from aiohttp import web

from .common import parse, read_json, validate
from .errors import APIError, require_enabled
from .generation import start
from .native import completion_prepare, run_completion
from .schemas import CompletionRequest, InfillRequest, LoraItem, RerankRequest
from .state import STATE


async def rerank(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    require_enabled(st.config.endpoints.reranking, "reranking", "--reranking")
    req = await parse(request, RerankRequest)
    prompts = await st.workers.run(st.fe.rerank_prompts, req.query, req.documents)
    assert st.engine is not None
    vecs = await st.engine.embed(prompts, pooled=True, normalize=-1)
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
    body: Dict[str, Any] = req.model_dump(exclude={"input_prefix", "input_suffix", "input_extra", "prompt"},
                                          exclude_none=True)
    creq = validate(CompletionRequest, {**body, "prompt": [0]})

    def build():
        toks = st.fe.infill_prompt(req.input_prefix, req.input_suffix, req.prompt, req.input_extra)
        return completion_prepare(st, creq, [toks])

    return await run_completion(request, st, creq, *await start(st, build))


def _adapters(st) -> list:
    return [{"id": i, "path": s.path, "scale": s.scale} for i, s in enumerate(st.fe.bundle.loras)]


async def lora_get(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    return web.json_response(_adapters(st))


async def lora_post(request: web.Request) -> web.Response:
    st = request.app[STATE].require()
    data = await read_json(request)
    if not isinstance(data, list):
        raise APIError(400, "expected a list of {\"id\": ..., \"scale\": ...}")
    items = [validate(LoraItem, d) for d in data]
    loras = st.fe.bundle.loras
    for it in items:
        if it.id >= len(loras):
            raise APIError(400, f"invalid adapter id {it.id}")
    scales = {it.id: it.scale for it in items}
    for i, s in enumerate(loras):
        s.scale = scales.get(i, 0.0)        # not listed: scale 0, as llama-server
    # the default of requests without a "lora" field (and of embeddings); applied by the next decode
    assert st.engine is not None
    await st.engine.set_lora_scales(st.fe.bundle.lora_scales())
    return web.json_response(_adapters(st))
