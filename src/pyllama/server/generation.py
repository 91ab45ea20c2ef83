"""Shared by the OpenAI and native handlers: prompts to tokens, fields to SamplingParams, and
running several engine requests (n > 1, several prompts) as one merged stream."""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

from .. import _core
from ..chat import chat_reasoning_extras, reasoning_budget_extras
from ..engine import AsyncEngine, Request, RequestOutput, RequestStream, fold
from ..errors import GrammarError
from ..params import DEFAULT_SEED, SamplingParams
from .config import ServerConfig
from .common import error_of
from .errors import APIError
from .schemas import SamplingFields

import logging

logger = logging.getLogger("pyllama.server")


def log_final(o: RequestOutput) -> None:
    """One log line per finished request: id, slot, tokens, timings."""
    u, t = o.usage or {}, o.timings or {}
    logger.info("done", extra={"req": {
        "id": o.request_id, "slot": o.id_slot, "finish": o.finish_reason, "prompt": u.get("prompt_tokens"),
        "cached": (u.get("prompt_tokens_details") or {}).get("cached_tokens"), "generated": u.get("completion_tokens"),
        "prompt_ms": round(t.get("prompt_ms", 0.0), 1), "gen_ms": round(t.get("predicted_ms", 0.0), 1),
        "gen_tps": round(t.get("predicted_per_second", 0.0), 1),
        **({"error": str(o.error)} if o.error is not None else {})}})


_SAMPLING_FIELDS = ("temperature", "dynatemp_range", "dynatemp_exponent", "top_k", "top_p", "min_p", "typical_p",
                    "top_n_sigma", "xtc_probability", "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta",
                    "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "dry_multiplier",
                    "dry_base", "dry_allowed_length", "dry_penalty_last_n", "min_keep")


def tokenize_piece(vocab: "_core.Vocab", item: Any, first: bool) -> List[int]:
    if isinstance(item, str):
        return vocab.tokenize(item, add_special=first, parse_special=True)
    if isinstance(item, bool) or not isinstance(item, int):
        raise APIError(400, f"invalid prompt element {item!r}: expected a string or a token id")
    if not 0 <= item < vocab.n_vocab:
        raise APIError(400, f"token id {item} out of range [0, {vocab.n_vocab})")
    return [item]


def prompt_tokens(vocab: "_core.Vocab", prompt: Any) -> List[List[int]]:
    """llama-server's prompt shapes: a string, tokens, mixed tokens and strings, or a list of those."""
    def one(p: Any) -> List[int]:
        if isinstance(p, str):
            return vocab.tokenize(p, add_special=True, parse_special=True)
        if isinstance(p, list):
            toks: List[int] = []
            for i, item in enumerate(p):
                toks += tokenize_piece(vocab, item, first=(i == 0))
            return toks
        raise APIError(400, "prompt must be a string, a list of tokens, or a list of prompts")

    if isinstance(prompt, str):
        out = [one(prompt)]
    elif isinstance(prompt, list) and prompt:
        if any(isinstance(x, list) for x in prompt) or all(isinstance(x, str) for x in prompt):
            out = [one(x) for x in prompt]          # several prompts
        else:
            out = [one(prompt)]                     # one prompt of tokens, maybe mixed with text
    else:
        raise APIError(400, "prompt must be a non-empty string or list")
    for toks in out:
        if not toks:
            raise APIError(400, "the prompt is empty")
    return out


def logit_bias_pairs(vocab: "_core.Vocab", bias: Any) -> List[Tuple[int, float]]:
    """OpenAI's {"id": bias} or llama-server's [[id|text, bias|false], ...] to (token, bias) pairs."""
    if not bias:
        return []
    items = list(bias.items()) if isinstance(bias, dict) else bias
    pairs: List[Tuple[int, float]] = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            key, val = item
        else:
            raise APIError(400, "logit_bias entries must be [token or text, bias]")
        b = float("-inf") if val is False else float(val)
        if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(bias, dict):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < vocab.n_vocab:
                raise APIError(400, f"logit_bias token {key} out of range [0, {vocab.n_vocab})")
            pairs.append((key, b))
        elif isinstance(key, str):
            pairs += [(t, b) for t in vocab.tokenize(key, add_special=False, parse_special=False)]
        else:
            raise APIError(400, f"invalid logit_bias key {key!r}")
    return pairs


def reasoning_params(fields: SamplingFields, cfg: ServerConfig, vocab: "_core.Vocab",
                     rendered: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The reasoning budget fields of a request, as llama-server fills them.

    Chat (``rendered`` given; oaicompat_chat_params_parse): the budget is ``reasoning_budget_tokens``
    or ``thinking_budget_tokens``, -1 meaning the server's ``--reasoning-budget``; the tags and the
    generation prompt are the template's. Elsewhere (server-schema.cpp) every field comes from the
    request, the budget and message defaulting to the server's; without tags there is no budget."""
    budget = fields.reasoning_budget_tokens
    if rendered is not None and budget is None:
        budget = getattr(fields, "thinking_budget_tokens", None)
    if budget is None or (rendered is not None and budget == -1):
        budget = cfg.reasoning_budget
    message = cfg.reasoning_budget_message if fields.reasoning_budget_message is None \
        else fields.reasoning_budget_message
    control = bool(fields.reasoning_control)
    if rendered is not None and rendered.get("thinking_end_tags"):
        return chat_reasoning_extras(rendered, vocab, budget=budget, message=message, control=control)
    ends = fields.reasoning_budget_end_tags
    if ends is None:
        ends = [fields.reasoning_budget_end_tag] if fields.reasoning_budget_end_tag else []
    gp = rendered.get("generation_prompt", "") if rendered is not None else (fields.generation_prompt or "")
    return reasoning_budget_extras(vocab, budget=budget, message=message,
                                   start_tag=fields.reasoning_budget_start_tag or "", end_tags=ends,
                                   generation_prompt=gp, control=control)


def sampling_params(fields: SamplingFields, cfg: ServerConfig, vocab: "_core.Vocab",
                    rendered: Optional[Dict[str, Any]] = None, **extra: Any) -> SamplingParams:
    """SamplingParams of a request: the server's defaults, the request's fields, then ``extra``
    (a chat template's grammar). ``rendered``: the chat template's output, for chat requests."""
    kw: Dict[str, Any] = {
        "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p, "min_p": cfg.min_p,
        "typical_p": cfg.typical_p, "repeat_penalty": cfg.repeat_penalty, "repeat_last_n": cfg.repeat_last_n,
        "presence_penalty": cfg.presence_penalty, "frequency_penalty": cfg.frequency_penalty,
        "seed": cfg.seed,
    }
    for name in _SAMPLING_FIELDS:
        v = getattr(fields, name)
        if v is not None:
            kw[name] = v
    if fields.seed is not None:
        kw["seed"] = fields.seed
    if fields.dry_sequence_breakers is not None:
        kw["dry_sequence_breakers"] = tuple(fields.dry_sequence_breakers)
    if fields.samplers is not None:
        names = fields.samplers.split(";") if isinstance(fields.samplers, str) else fields.samplers
        kw["samplers"] = tuple(n.strip() for n in names if n.strip())
    kw["logit_bias"] = tuple(logit_bias_pairs(vocab, fields.logit_bias))
    if fields.n_probs:
        kw["n_probs"] = fields.n_probs
    kw.update(reasoning_params(fields, cfg, vocab, rendered))
    kw.update(extra)
    if fields.grammar and fields.json_schema:
        raise APIError(400, "use either grammar or json_schema, not both")
    if "grammar" not in kw:
        if fields.json_schema is not None:
            try:
                kw["grammar"] = _core.json_schema_to_grammar(fields.json_schema)
            except ValueError as e:
                raise APIError(400, str(e)) from None
        elif fields.grammar:
            kw["grammar"] = fields.grammar
    try:
        return SamplingParams(**kw)
    except (TypeError, ValueError) as e:
        raise APIError(400, f"invalid sampling parameters: {e}") from None


def stop_list(stop: Any) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


def request_lora(fields: SamplingFields, global_scales: Sequence[float]) -> Optional[Tuple[float, ...]]:
    """A request's LoRA scales (Request.lora), one per loaded adapter, as llama-server reads the
    ``lora`` field: [{"id": N, "scale": S}, ...], an adapter not listed at scale 0. No field (or an
    empty list): None, which the engine reads as the global scales (--lora/--lora-scaled, POST
    /lora-adapters) when it queues the request. Unknown or repeated ids and scales that are not
    finite numbers are a 400."""
    items = fields.lora
    if not items:
        return None
    n = len(global_scales)
    scales = [0.0] * n
    seen = set()
    for item in items:
        if not isinstance(item, dict) or "id" not in item or "scale" not in item:
            raise APIError(400, f"invalid \"lora\" entry {item!r}: expected {{\"id\": <adapter id>, \"scale\": <number>}}")
        i, x = item["id"], item["scale"]
        if isinstance(i, bool) or not isinstance(i, int):
            raise APIError(400, f"invalid LoRA adapter id {i!r}: expected an integer")
        if not 0 <= i < n:
            raise APIError(400, f"invalid LoRA adapter id {i}: " + (
                f"the server has {n} adapter(s), ids 0..{n - 1} (see GET /lora-adapters)" if n else
                "no LoRA adapter is loaded (start the server with --lora)"))
        if i in seen:
            raise APIError(400, f"LoRA adapter id {i} is listed more than once")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x != x or x in (float("inf"), float("-inf")):
            raise APIError(400, f"invalid scale {x!r} for LoRA adapter {i}: expected a finite number")
        seen.add(i)
        scales[i] = float(x)
    return tuple(scales)


def make_request(tokens: Sequence[int], fields: SamplingFields, cfg: ServerConfig, sampling: SamplingParams, *,
                 max_tokens: Optional[int], stop: Sequence[str], n_probs: int = 0, logprobs: bool = False,
                 choice: int = 0, lora: Optional[Tuple[float, ...]] = None) -> Request:
    if max_tokens is None or max_tokens < 0:
        max_tokens = cfg.n_predict
    if choice and sampling.seed != DEFAULT_SEED:    # n > 1 with a fixed seed: distinct, reproducible choices
        sampling = sampling.replace(seed=(sampling.seed + choice) & 0xFFFFFFFF)
    cache = cfg.cache_prompt if fields.cache_prompt is None else fields.cache_prompt
    n_reuse = getattr(fields, "n_cache_reuse", None)
    n_reuse = max(0, cfg.cache_reuse) if n_reuse is None else n_reuse     # llama-server: <= 0 is off
    return Request(prompt=tuple(tokens), sampling=sampling, max_tokens=max_tokens, stop=tuple(stop),
                   ignore_eos=fields.ignore_eos, n_probs=n_probs, logprobs=logprobs or n_probs > 0,
                   post_sampling_probs=fields.post_sampling_probs,
                   cache_prompt=cache, n_cache_reuse=n_reuse, id_slot=fields.id_slot, lora=lora)


def submit_all(engine: AsyncEngine, requests: Sequence[Request]) -> List[RequestStream]:
    """Submit every request before a response starts: what can never run (a prompt over the context,
    a grammar that does not compile, a bad id_slot) raises now, while the status can still say 400.
    If one fails, the ones already submitted are aborted."""
    streams: List[RequestStream] = []
    try:
        for r in requests:
            streams.append(engine.generate(r))
    except GrammarError as e:
        for st in streams:
            st.close()
        raise APIError(400, f"invalid grammar: {e}") from None
    except BaseException:
        for st in streams:
            st.close()
        raise
    return streams


async def merged(streams: Sequence[RequestStream]) -> AsyncIterator[Tuple[int, RequestOutput]]:
    """Outputs of several request streams as they come: (index, output). Leaving early aborts the rest."""
    if len(streams) == 1:
        try:
            async for o in streams[0]:
                if o.finished:
                    log_final(o)
                yield 0, o
        finally:
            streams[0].close()
        return
    q: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for o in stream:
                await q.put((i, o))
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            await q.put((i, e))
        finally:
            stream.close()
            await q.put((i, done))

    tasks = [asyncio.create_task(pump(i, st)) for i, st in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            i, item = await q.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                if item.finished:
                    log_final(item)
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def collect(streams: Sequence[RequestStream]) -> List[RequestOutput]:
    """Read streams to the end; one folded output each, in order. A failed one raises its APIError."""
    try:
        outs = await asyncio.gather(*(fold(st) for st in streams))
    finally:
        for st in streams:
            st.close()
    for o in outs:
        log_final(o)
    for o in outs:
        if o.error is not None:
            err = error_of(o)["error"]
            raise APIError(err["code"], err["message"])
    return list(outs)
