"""Frozen parameter groups for models, contexts and sampling.

Values are validated here, at the edge, so that no bad value reaches llama.cpp.
Defaults follow llama-server's.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Optional, Tuple, Union

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed

SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}
POOLING_TYPES = {"unspecified": -1, "none": 0, "mean": 1, "cls": 2, "last": 3, "rank": 4}
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
ROPE_SCALING = {"unspecified": -1, "none": 0, "linear": 1, "yarn": 2, "longrope": 3}
# names accepted for KV cache types (ggml_type values)
CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8,
               "iq4_nl": 20, "bf16": 30}

KVOverride = Union[int, float, bool, str]


INT32_MAX = 2**31 - 1
INT32_MIN = -2**31
FLT_MAX = 3.4028234663852886e38     # the largest 32-bit float: sampling numbers reach llama.cpp as floats


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _token_tuple(seq: Any, what: str) -> Tuple[int, ...]:
    _check(not isinstance(seq, (str, bytes)), f"{what} must be token ids, got a string")
    toks = tuple(seq)
    _check(all(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0 for t in toks),
           f"{what} must be non-negative token ids, got {seq!r}")
    return tuple(int(t) for t in toks)


def _lookup(table: Mapping[str, int], value: Union[str, int], what: str) -> int:
    if isinstance(value, str):
        key = value.lower()
        if key not in table:
            raise ValueError(f"unknown {what} {value!r}; expected one of {sorted(table)}")
        return table[key]
    if int(value) not in table.values():
        raise ValueError(f"unknown {what} {value!r}")
    return int(value)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ModelParams:
    """How to load a model (llama_model_params)."""

    n_gpu_layers: int = -1          # -1 = all layers (ignored on a CPU-only build)
    split_mode: Union[str, int] = "layer"
    main_gpu: int = 0
    tensor_split: Optional[Tuple[float, ...]] = None
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False
    check_tensors: bool = False
    kv_overrides: Optional[Mapping[str, KVOverride]] = None
    devices: Optional[Tuple[str, ...]] = None  # device names, e.g. ("RPC0",); None = all
    rpc_servers: Optional[Tuple[str, ...]] = None  # "host:port" of pyllama.rpc_server workers

    def __post_init__(self) -> None:
        object.__setattr__(self, "split_mode", _lookup(SPLIT_MODES, self.split_mode, "split mode"))
        _check(self.main_gpu >= 0, "main_gpu must be >= 0")
        if self.tensor_split is not None:
            ts = tuple(float(x) for x in self.tensor_split)
            _check(all(x >= 0 and math.isfinite(x) for x in ts), "tensor_split values must be >= 0")
            object.__setattr__(self, "tensor_split", ts)
        if self.kv_overrides:
            for k, v in self.kv_overrides.items():
                _check(isinstance(k, str) and 0 < len(k.encode()) < 128,
                       f"kv override key must be 1..127 bytes: {k!r}")
                _check(isinstance(v, (bool, int, float, str)), f"kv override {k!r}: unsupported value {v!r}")
                if isinstance(v, str):
                    _check(len(v.encode()) < 128, f"kv override {k!r}: string value over 127 bytes")
        if self.devices is not None:
            object.__setattr__(self, "devices", tuple(self.devices))
        if self.rpc_servers is not None:
            from .rpc import parse_endpoints
            try:
                object.__setattr__(self, "rpc_servers", parse_endpoints(self.rpc_servers))
            except ValueError as e:
                raise ValueError(f"rpc_servers: {e}") from None


@dataclass(frozen=True)
class ContextParams:
    """How to create a context (llama_context_params)."""

    n_ctx: int = 4096               # 0 = from the model
    n_batch: int = 2048
    n_ubatch: int = 512
    n_seq_max: int = 1
    n_threads: int = field(default_factory=default_threads)
    n_threads_batch: int = 0        # 0 = same as n_threads
    flash_attn: Union[str, int] = "auto"
    type_k: Union[str, int] = "f16"
    type_v: Union[str, int] = "f16"
    offload_kqv: bool = True
    embeddings: bool = False
    pooling_type: Union[str, int] = "unspecified"
    rope_scaling_type: Union[str, int] = "unspecified"
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    yarn_ext_factor: float = -1.0
    yarn_attn_factor: float = -1.0
    yarn_beta_fast: float = -1.0
    yarn_beta_slow: float = -1.0
    yarn_orig_ctx: int = 0
    kv_unified: bool = False
    swa_full: bool = False
    no_perf: bool = False

    def __post_init__(self) -> None:
        _check(self.n_ctx >= 0, f"n_ctx must be >= 0, got {self.n_ctx}")
        _check(self.n_batch >= 1, f"n_batch must be >= 1, got {self.n_batch}")
        _check(self.n_ubatch >= 1, f"n_ubatch must be >= 1, got {self.n_ubatch}")
        _check(1 <= self.n_seq_max <= 256, f"n_seq_max must be in 1..256, got {self.n_seq_max}")
        _check(self.n_threads >= 1, f"n_threads must be >= 1, got {self.n_threads}")
        _check(self.n_threads_batch >= 0, "n_threads_batch must be >= 0")
        _check(self.yarn_orig_ctx >= 0, "yarn_orig_ctx must be >= 0")
        for name in ("rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor",
                     "yarn_beta_fast", "yarn_beta_slow"):
            _check(math.isfinite(getattr(self, name)), f"{name} must be finite")
        object.__setattr__(self, "flash_attn", _lookup(FLASH_ATTN, self.flash_attn, "flash_attn"))
        object.__setattr__(self, "type_k", _lookup(CACHE_TYPES, self.type_k, "cache type"))
        object.__setattr__(self, "type_v", _lookup(CACHE_TYPES, self.type_v, "cache type"))
        object.__setattr__(self, "pooling_type", _lookup(POOLING_TYPES, self.pooling_type, "pooling type"))
        object.__setattr__(self, "rope_scaling_type",
                           _lookup(ROPE_SCALING, self.rope_scaling_type, "rope scaling type"))
        if self.n_threads_batch == 0:
            object.__setattr__(self, "n_threads_batch", self.n_threads)


@dataclass(frozen=True)
class SamplingParams:
    """One request's sampling settings (llama-server's names and defaults).

    ``temperature <= 0`` means greedy decoding.
    """

    temperature: float = 0.8
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    top_n_sigma: float = -1.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: Tuple[str, ...] = ("\n", ":", "\"", "*")
    min_keep: int = 0
    seed: int = DEFAULT_SEED
    logit_bias: Tuple[Tuple[int, float], ...] = ()
    grammar: Optional[str] = None
    grammar_lazy: bool = False
    grammar_trigger_patterns: Tuple[str, ...] = ()
    grammar_trigger_tokens: Tuple[int, ...] = ()
    grammar_prefill: Tuple[int, ...] = ()   # tokens the grammar accepts before sampling starts
    # reasoning budget (llama.cpp's common/reasoning-budget.h, llama-server's --reasoning-budget):
    # at most ``reasoning_budget_tokens`` tokens between a start and an end sequence, then
    # ``reasoning_budget_message`` + the first end sequence are forced. -1 = unlimited.
    reasoning_budget_tokens: int = -1
    reasoning_budget_start: Tuple[int, ...] = ()                # start tag tokens (e.g. "<think>")
    reasoning_budget_end: Tuple[Tuple[int, ...], ...] = ()      # end tag token sequences; the first is forced
    reasoning_budget_message: str = ""                          # text forced before the end tag
    reasoning_budget_prefill: Tuple[int, ...] = ()              # the generation prompt's tokens: the initial state
    reasoning_control: bool = False                             # keep the budget sampler to end reasoning on demand
    samplers: Tuple[str, ...] = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p",
                                 "min_p", "xtc", "temperature")

    def __post_init__(self) -> None:
        for f in ("temperature", "dynatemp_range", "dynatemp_exponent", "top_p", "min_p", "typical_p",
                  "top_n_sigma", "xtc_probability", "xtc_threshold", "mirostat_tau", "mirostat_eta",
                  "repeat_penalty", "presence_penalty", "frequency_penalty", "dry_multiplier", "dry_base"):
            v = getattr(self, f)
            _check(isinstance(v, (int, float)) and math.isfinite(v), f"{f} must be a finite number, got {v!r}")
        for f in ("temperature", "dynatemp_range", "dynatemp_exponent", "top_n_sigma", "xtc_threshold",
                  "mirostat_tau", "mirostat_eta", "repeat_penalty", "dry_multiplier", "dry_base"):
            _check(abs(getattr(self, f)) <= FLT_MAX, f"{f} must fit a 32-bit float, got {getattr(self, f)!r}")
        for f in ("top_k", "repeat_last_n", "dry_allowed_length", "dry_penalty_last_n", "min_keep"):
            v = getattr(self, f)
            _check(isinstance(v, numbers.Integral) and not isinstance(v, bool) and INT32_MIN <= v <= INT32_MAX,
                   f"{f} must be a 32-bit integer, got {v!r}")
        _check(self.repeat_penalty > 0, "repeat_penalty must be > 0")
        _check(self.mirostat in (0, 1, 2), f"mirostat must be 0, 1 or 2, got {self.mirostat}")
        _check(self.repeat_last_n >= -1, "repeat_last_n must be >= -1")
        _check(self.dry_penalty_last_n >= -1, "dry_penalty_last_n must be >= -1")
        _check(self.dry_allowed_length >= 0, "dry_allowed_length must be >= 0")
        _check(self.min_keep >= 0, "min_keep must be >= 0")
        _check(0 <= int(self.seed) <= 0xFFFFFFFF or self.seed == -1, "seed must be a 32-bit unsigned value or -1")
        if self.seed == -1:
            object.__setattr__(self, "seed", DEFAULT_SEED)
        lb = self.logit_bias
        if isinstance(lb, Mapping):
            lb = lb.items()
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in lb))
        for name in self.samplers:
            _check(name in SAMPLER_NAMES, f"unknown sampler {name!r}; expected some of {sorted(SAMPLER_NAMES)}")
        object.__setattr__(self, "samplers", tuple(self.samplers))
        object.__setattr__(self, "dry_sequence_breakers", tuple(self.dry_sequence_breakers))
        object.__setattr__(self, "grammar_trigger_patterns", tuple(self.grammar_trigger_patterns))
        object.__setattr__(self, "grammar_trigger_tokens", tuple(int(t) for t in self.grammar_trigger_tokens))
        object.__setattr__(self, "grammar_prefill", tuple(int(t) for t in self.grammar_prefill))
        b = self.reasoning_budget_tokens
        _check(isinstance(b, numbers.Integral) and not isinstance(b, bool) and -1 <= b <= INT32_MAX,
               f"reasoning_budget_tokens must be an integer in [-1, {INT32_MAX}] (-1 = unlimited), got {b!r}")
        object.__setattr__(self, "reasoning_budget_tokens", int(b))
        _check(isinstance(self.reasoning_budget_message, str),
               f"reasoning_budget_message must be a string, got {self.reasoning_budget_message!r}")
        object.__setattr__(self, "reasoning_budget_start", _token_tuple(self.reasoning_budget_start,
                                                                        "reasoning_budget_start"))
        ends = self.reasoning_budget_end
        _check(not isinstance(ends, (str, bytes)) and all(not isinstance(e, (str, bytes, int)) for e in ends),
               "reasoning_budget_end must be a sequence of token sequences")
        object.__setattr__(self, "reasoning_budget_end",
                           tuple(t for t in (_token_tuple(e, "reasoning_budget_end") for e in ends) if t))
        object.__setattr__(self, "reasoning_budget_prefill", _token_tuple(self.reasoning_budget_prefill,
                                                                          "reasoning_budget_prefill"))
        object.__setattr__(self, "reasoning_control", bool(self.reasoning_control))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 and self.mirostat == 0

    def replace(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SamplingParams":
        """Build from a dict with llama-server field names (unknown keys ignored)."""
        aliases = {"temp": "temperature", "typ_p": "typical_p", "penalty_last_n": "repeat_last_n",
                   "thinking_budget_tokens": "reasoning_budget_tokens"}
        names = {f.name for f in fields(cls)}
        kw = {}
        for k, v in d.items():
            k = aliases.get(k, k)
            if k in names and v is not None:
                kw[k] = v
        return cls(**kw)


SAMPLER_NAMES = frozenset({"penalties", "dry", "top_n_sigma", "top_k", "typ_p", "typical_p", "top_p",
                           "min_p", "xtc", "temperature", "infill"})

__all__ = ["ModelParams", "ContextParams", "SamplingParams", "DEFAULT_SEED", "default_threads"]
