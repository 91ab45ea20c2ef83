"""The one request builder: defaults + a request's fields -> ``SamplingParams`` + engine ``Request``s.

``GenerationOptions`` holds llama-server's generation fields, protocol-neutral (None: not
given); the server fills it from its pydantic bodies, ``Llama`` from keyword arguments. The
defaults (the server's flags, or a Llama's seed) are a ``GenerationDefaults``: the sampling
defaults are one ``SamplingParams``, whose own field defaults are the only copy of llama-server's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _core
from ..engine import Request
from ..errors import InvalidRequestError
from ..params import DEFAULT_SEED, SamplingParams
from .limits import Limits
from .chat import RenderedChat, chat_reasoning_sampling, grammar_sampling, reasoning_budget_sampling
from .prompts import logit_bias_pairs

# fields copied as they are onto SamplingParams when given
SAMPLING_FIELDS = ("temperature", "dynatemp_range", "dynatemp_exponent", "top_k", "top_p", "min_p", "typical_p",
                   "top_n_sigma", "xtc_probability", "xtc_threshold", "mirostat", "mirostat_tau", "mirostat_eta",
                   "repeat_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty", "dry_multiplier",
                   "dry_base", "dry_allowed_length", "dry_penalty_last_n", "min_keep", "seed")


@dataclass(frozen=True)
class GenerationOptions:
    """A generation request's fields (llama-server's names). None: the default."""

    temperature: Optional[float] = None
    dynatemp_range: Optional[float] = None
    dynatemp_exponent: Optional[float] = None
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    typical_p: Optional[float] = None
    top_n_sigma: Optional[float] = None
    xtc_probability: Optional[float] = None
    xtc_threshold: Optional[float] = None
    mirostat: Optional[int] = None
    mirostat_tau: Optional[float] = None
    mirostat_eta: Optional[float] = None
    repeat_penalty: Optional[float] = None
    repeat_last_n: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    dry_multiplier: Optional[float] = None
    dry_base: Optional[float] = None
    dry_allowed_length: Optional[int] = None
    dry_penalty_last_n: Optional[int] = None
    dry_sequence_breakers: Optional[Sequence[str]] = None
    min_keep: Optional[int] = None
    seed: Optional[int] = None
    logit_bias: Any = None                      # {"id": bias} or [[id|text, bias|false], ...]
    grammar: Optional[str] = None
    json_schema: Optional[Dict[str, Any]] = None
    samplers: Any = None                        # ["top_k", ...] or "top_k;top_p;..."
    ignore_eos: bool = False
    post_sampling_probs: bool = False
    cache_prompt: Optional[bool] = None
    n_cache_reuse: Optional[int] = None
    id_slot: int = -1
    lora: Optional[List[Dict[str, Any]]] = None    # [{"id": N, "scale": S}]
    reasoning_budget_tokens: Optional[int] = None
    thinking_budget_tokens: Optional[int] = None   # Anthropic's spelling (chat only)
    reasoning_budget_message: Optional[str] = None
    reasoning_budget_start_tag: Optional[str] = None
    reasoning_budget_end_tags: Optional[List[str]] = None
    reasoning_budget_end_tag: Optional[str] = None
    generation_prompt: Optional[str] = None
    reasoning_control: bool = False

    @classmethod
    def of(cls, obj: Any) -> "GenerationOptions":
        """From any object with (some of) these attributes, e.g. a validated request body."""
        return cls(**{f.name: getattr(obj, f.name) for f in fields(cls) if getattr(obj, f.name, None) is not None})


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request gets for the fields it leaves out (the server's flags)."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    n_predict: int = -1                 # -1: until EOG or the context is full
    cache_prompt: bool = True
    cache_reuse: int = 0                # --cache-reuse (<= 0 off)
    reasoning_budget: int = -1          # --reasoning-budget
    reasoning_budget_message: str = ""


def request_lora(items: Optional[List[Any]], n_adapters: int) -> Optional[Tuple[float, ...]]:
    """A request's LoRA scales (Request.lora), one per loaded adapter, as llama-server reads the
    ``lora`` field: [{"id": N, "scale": S}, ...], an adapter not listed at scale 0. No field (or an
    empty list): None, which the engine reads as the global scales when it queues the request.
    Unknown or repeated ids and scales that are not finite numbers are invalid."""
    if not items:
        return None
    n = n_adapters
    scales = [0.0] * n
    seen = set()
    for item in items:
        if not isinstance(item, dict) or "id" not in item or "scale" not in item:
            raise InvalidRequestError(f"invalid \"lora\" entry {item!r}: expected {{\"id\": <adapter id>, "
                                      f"\"scale\": <number>}}")
        i, x = item["id"], item["scale"]
        if isinstance(i, bool) or not isinstance(i, int):
            raise InvalidRequestError(f"invalid LoRA adapter id {i!r}: expected an integer")
        if not 0 <= i < n:
            raise InvalidRequestError(f"invalid LoRA adapter id {i}: " + (
                f"the server has {n} adapter(s), ids 0..{n - 1} (see GET /lora-adapters)" if n else
                "no LoRA adapter is loaded (start the server with --lora)"))
        if i in seen:
            raise InvalidRequestError(f"LoRA adapter id {i} is listed more than once")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise InvalidRequestError(f"invalid scale {x!r} for LoRA adapter {i}: expected a finite number")
        seen.add(i)
        scales[i] = float(x)
    return tuple(scales)


class RequestBuilder:
    """Turns options into SamplingParams and Requests for one vocabulary and one set of defaults."""

    def __init__(self, vocab: "_core.Vocab", defaults: GenerationDefaults = GenerationDefaults(),
                 n_adapters: int = 0, limits: Limits = Limits()):
        self.vocab = vocab
        self.defaults = defaults
        self.n_adapters = n_adapters
        self.limits = limits

    def _reasoning(self, o: GenerationOptions, rendered: Optional[RenderedChat]) -> Dict[str, Any]:
        """The reasoning budget fields, as llama-server fills them. Chat (``rendered`` given;
        oaicompat_chat_params_parse): the budget is ``reasoning_budget_tokens`` or
        ``thinking_budget_tokens``, -1 meaning the default; the tags and the generation prompt are
        the template's. Elsewhere (server-schema.cpp) every field comes from the request, the
        budget and message defaulting to the server's; without tags there is no budget."""
        d = self.defaults
        budget = o.reasoning_budget_tokens
        if rendered is not None and budget is None:
            budget = o.thinking_budget_tokens
        if budget is None or (rendered is not None and budget == -1):
            budget = d.reasoning_budget
        message = d.reasoning_budget_message if o.reasoning_budget_message is None else o.reasoning_budget_message
        control = bool(o.reasoning_control)
        if rendered is not None and rendered.thinking_end_tags:
            return chat_reasoning_sampling(rendered, self.vocab, budget=budget, message=message, control=control)
        ends = o.reasoning_budget_end_tags
        if ends is None:
            ends = [o.reasoning_budget_end_tag] if o.reasoning_budget_end_tag else []
        gp = rendered.generation_prompt if rendered is not None else (o.generation_prompt or "")
        return reasoning_budget_sampling(self.vocab, budget=budget, message=message,
                                         start_tag=o.reasoning_budget_start_tag or "", end_tags=ends,
                                         generation_prompt=gp, control=control)

    def sampling(self, o: GenerationOptions, rendered: Optional[RenderedChat] = None,
                 **extra: Any) -> SamplingParams:
        """The defaults, then the request's fields, then a chat template's grammar, then ``extra``."""
        kw: Dict[str, Any] = {}
        for name in SAMPLING_FIELDS:
            v = getattr(o, name)
            if v is not None:
                kw[name] = v
        if o.dry_sequence_breakers is not None:
            self.limits.check_count("dry_sequence_breakers", len(o.dry_sequence_breakers),
                                    self.limits.max_dry_sequence_breakers)
            kw["dry_sequence_breakers"] = tuple(o.dry_sequence_breakers)
        if o.samplers is not None:
            names = o.samplers.split(";") if isinstance(o.samplers, str) else o.samplers
            kw["samplers"] = tuple(n.strip() for n in names if n.strip())
        kw["logit_bias"] = tuple(logit_bias_pairs(self.vocab, o.logit_bias))
        kw.update(self._reasoning(o, rendered))
        if rendered is not None:
            kw.update(grammar_sampling(rendered, self.vocab))
        kw.update(extra)
        if o.grammar and o.json_schema:
            raise InvalidRequestError("use either grammar or json_schema, not both")
        if "grammar" not in kw:
            self.limits.check_schema("json_schema", o.json_schema)
            self.limits.check_grammar(o.grammar)
            if o.json_schema is not None:
                kw["grammar"] = _core.json_schema_to_grammar(o.json_schema)    # GrammarError if invalid
            elif o.grammar:
                kw["grammar"] = o.grammar
        try:
            return self.defaults.sampling.replace(**kw)
        except (TypeError, ValueError) as e:
            raise InvalidRequestError(f"invalid sampling parameters: {e}") from None

    def requests(self, prompts: Sequence[Sequence[int]], o: GenerationOptions, sampling: SamplingParams, *,
                 n: int = 1, max_tokens: Optional[int] = None, stop: Sequence[str] = (), n_probs: int = 0,
                 logprobs: bool = False) -> List[Request]:
        """``n`` requests per prompt (choices), in order. A fixed seed gives each choice its own
        reproducible seed (seed + choice index)."""
        d = self.defaults
        self.limits.check_choices(n, len(prompts))
        if max_tokens is None or max_tokens < 0:
            max_tokens = d.n_predict
        cache = d.cache_prompt if o.cache_prompt is None else o.cache_prompt
        n_reuse = max(0, d.cache_reuse) if o.n_cache_reuse is None else o.n_cache_reuse   # llama-server: <= 0 off
        lora = request_lora(o.lora, self.n_adapters)
        out = []
        for p in prompts:
            for choice in range(n):
                sp = sampling
                if choice and sp.seed != DEFAULT_SEED:
                    sp = sp.replace(seed=(sp.seed + choice) & 0xFFFFFFFF)
                out.append(Request(prompt=tuple(p), sampling=sp, max_tokens=max_tokens, stop=tuple(stop),
                                   ignore_eos=o.ignore_eos, n_probs=n_probs, logprobs=logprobs or n_probs > 0,
                                   post_sampling_probs=o.post_sampling_probs, cache_prompt=cache,
                                   n_cache_reuse=n_reuse, id_slot=o.id_slot, lora=lora))
        return out


def stop_list(stop: Any) -> List[str]:
    return [stop] if isinstance(stop, str) else list(stop or [])


__all__ = ["GenerationOptions", "GenerationDefaults", "RequestBuilder", "request_lora", "stop_list",
           "SAMPLING_FIELDS"]
