"""Requests: the immutable input, the progress state, and the outputs the engine emits."""
from __future__ import annotations

import enum
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..detokenize import IncrementalDetokenizer, StopMatcher
from ..params import SamplingParams

_ids = itertools.count(1)


def new_request_id() -> str:
    return f"req-{next(_ids)}"


class RequestKind(enum.Enum):
    GENERATE = "generate"
    EMBED = "embed"


class RequestStatus(enum.IntEnum):
    """Ordered: everything from FINISHED_STOPPED on is final."""

    WAITING = 0
    PREFILL = 1
    DECODING = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


# The one table from status to OpenAI's finish_reason.
FINISH_REASON: Dict[RequestStatus, str] = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass(frozen=True)
class Request:
    """What a caller asks for. ``prompt`` is token ids (the engine never tokenizes)."""

    prompt: Tuple[int, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int = -1              # -1: until EOG or the slot's context is full
    stop: Tuple[str, ...] = ()
    ignore_eos: bool = False
    n_probs: int = 0                  # top-N log-probabilities per generated token (0: none)
    logprobs: bool = False            # the chosen token's log-probability
    post_sampling_probs: bool = False # n_probs/logprobs from the sampling chain's candidates, not the raw logits
    cache_prompt: bool = True
    n_cache_reuse: int = 0            # llama-server's n_cache_reuse: after the common prefix, reuse cached
                                      # chunks of at least this many tokens by shifting their KV (0: off)
    id_slot: int = -1                 # -1: the engine chooses
    kind: RequestKind = RequestKind.GENERATE
    embd_normalize: int = 2           # for EMBED: -1 none, 0 max-abs, 1 taxicab, 2 euclidean, >2 p-norm
    pooled: bool = True               # for EMBED: one vector (model pooling) or one per token
    lora: Optional[Tuple[float, ...]] = None    # one scale per adapter of the runner (0: off);
                                                # None: the runner's default scales. Requests with
                                                # different values never share a decode.
    id: str = field(default_factory=new_request_id)

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", tuple(int(t) for t in self.prompt))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not self.prompt:
            raise ValueError("the prompt is empty")
        if self.n_probs < 0:
            raise ValueError("n_probs must be >= 0")
        if self.n_cache_reuse < 0:
            raise ValueError("n_cache_reuse must be >= 0")
        if self.max_tokens < -1:
            raise ValueError("max_tokens must be >= -1")
        if self.lora is not None:
            scales = tuple(float(x) for x in self.lora)
            if not all(math.isfinite(x) for x in scales):
                raise ValueError(f"LoRA scales must be finite numbers, got {list(self.lora)}")
            object.__setattr__(self, "lora", scales)


@dataclass
class TokenLogprob:
    """One generated token's probabilities. By default from the raw logits (``logprob``, ``top``).

    With ``Request.post_sampling_probs`` they are the sampling chain's candidates after it ran
    (llama-server's ``post_sampling_probs``): ``prob`` and ``top_probs`` in probability space, and
    ``logprob``/``top`` their logarithms, so log-space readers see the same distribution."""

    token: int
    logprob: float
    top: List[Tuple[int, float]] = field(default_factory=list)
    prob: Optional[float] = None
    top_probs: Optional[List[Tuple[int, float]]] = None

    @property
    def post_sampling(self) -> bool:
        return self.prob is not None


@dataclass
class RequestOutput:
    """One delta for one request. The last one has ``finished`` set, usage and timings."""

    request_id: str
    text: str = ""
    token_ids: List[int] = field(default_factory=list)
    logprobs: List[TokenLogprob] = field(default_factory=list)
    finished: bool = False
    finish_reason: Optional[str] = None
    stop_word: Optional[str] = None
    error: Optional[BaseException] = None
    usage: Optional[Dict[str, Any]] = None
    timings: Optional[Dict[str, Any]] = None
    embedding: Optional[Any] = None   # for EMBED requests: list (pooled) or list of lists
    id_slot: int = -1


class RequestState:
    """A request's progress on the engine: generated tokens, text, stops, timings.

    Pure Python: ``piece(token) -> bytes`` and ``is_eog(token) -> bool`` come from the runner.
    """

    __slots__ = ("request", "status", "slot", "n_cached", "generated", "detok", "stops",
                 "t_arrival", "t_start", "t_prompt_done", "t_last", "pending", "_is_eog", "error",
                 "stop_word", "n_prompt_decoded")

    def __init__(self, request: Request, piece: Callable[[int], bytes], is_eog: Callable[[int], bool]):
        self.request = request
        self.status = RequestStatus.WAITING
        self.slot: Optional[int] = None
        self.n_cached = 0               # of which reused from the cache
        self.n_prompt_decoded = 0
        self.generated: List[int] = []
        self.detok = IncrementalDetokenizer(piece)
        self.stops = StopMatcher(request.stop)
        self._is_eog = is_eog
        self.t_arrival = time.perf_counter()
        self.t_start = 0.0
        self.t_prompt_done = 0.0
        self.t_last = 0.0
        self.pending: Optional[RequestOutput] = None
        self.error: Optional[BaseException] = None
        self.stop_word: Optional[str] = None

    @property
    def id(self) -> str:
        return self.request.id

    def out(self) -> RequestOutput:
        if self.pending is None:
            self.pending = RequestOutput(self.request.id, id_slot=-1 if self.slot is None else self.slot)
        return self.pending

    def take_output(self) -> Optional[RequestOutput]:
        o, self.pending = self.pending, None
        return o

    def add_token(self, token: int, lp: Optional[TokenLogprob]) -> None:
        """Record a sampled token; set a final status when it ends the request.

        (A slot whose context is full is the scheduler's to handle: shift or finish "length".)"""
        req = self.request
        self.generated.append(token)
        self.t_last = time.perf_counter()
        o = self.out()
        if not req.ignore_eos and self._is_eog(token):
            o.text += self.stops.push(self.detok.flush())[0] + self.stops.flush()
            self.status = RequestStatus.FINISHED_STOPPED
            return
        o.token_ids.append(token)
        if lp is not None:
            o.logprobs.append(lp)
        text, matched = self.stops.push(self.detok.push(token))
        o.text += text
        if matched is not None:
            self.stop_word = matched
            self.status = RequestStatus.FINISHED_STOPPED
        elif req.max_tokens >= 0 and len(self.generated) >= req.max_tokens:
            self.finish(RequestStatus.FINISHED_LENGTH)

    def finish(self, status: RequestStatus, error: Optional[BaseException] = None) -> None:
        if self.status.finished:
            return
        if status in (RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_STOPPED):
            tail = self.stops.push(self.detok.flush())[0] + self.stops.flush()
            if tail:
                self.out().text += tail
        self.status = status
        self.error = error

    def final_output(self) -> RequestOutput:
        """The last delta: finish reason, usage and llama-server style timings."""
        o = self.out()
        o.finished = True
        o.finish_reason = FINISH_REASON.get(self.status)
        o.stop_word = self.stop_word
        o.error = self.error
        n_prompt = len(self.request.prompt)
        n_gen = len(self.generated)
        o.usage = {"prompt_tokens": n_prompt, "completion_tokens": n_gen, "total_tokens": n_prompt + n_gen,
                   "prompt_tokens_details": {"cached_tokens": self.n_cached}}
        t0 = self.t_start or self.t_arrival
        t_prompt = max(0.0, (self.t_prompt_done or t0) - t0) * 1e3
        t_gen = max(0.0, (self.t_last - self.t_prompt_done) * 1e3) if self.t_prompt_done and n_gen else 0.0
        n_p = self.n_prompt_decoded
        o.timings = {
            "cache_n": self.n_cached,
            "prompt_n": n_p, "prompt_ms": t_prompt,
            "prompt_per_token_ms": t_prompt / n_p if n_p else 0.0,
            "prompt_per_second": 1e3 * n_p / t_prompt if t_prompt > 0 else 0.0,
            "predicted_n": n_gen, "predicted_ms": t_gen,
            "predicted_per_token_ms": t_gen / n_gen if n_gen else 0.0,
            "predicted_per_second": 1e3 * n_gen / t_gen if t_gen > 0 else 0.0,
        }
        return o
