"""LlamaRunner: the engine's only door to llama.cpp (a Model, a Context, one Batch).

It implements engine.core.Runner; only the engine thread calls it (new_sampler excepted: it
reads the model only)."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from .. import _core
from ..errors import StateError
from ..params import SamplingParams
from .request import Request, RequestKind, TokenLogprob
from .scheduler import BatchItem


def _log(p: float) -> float:
    return math.log(p) if p > 0.0 else float("-inf")


def normalize_embedding(v: np.ndarray, mode: int) -> np.ndarray:
    """llama-server's embd_normalize: -1 none, 0 max-abs (int16 range), 1 taxicab, 2 euclidean, >2 p-norm."""
    v = np.asarray(v, dtype=np.float64)
    if mode < 0:
        return v
    if mode == 0:
        s = np.abs(v).max() / 32760.0 if v.size else 0.0
    elif mode == 1:
        s = np.abs(v).sum()
    elif mode == 2:
        s = np.sqrt((v * v).sum())
    else:
        s = (np.abs(v) ** mode).sum() ** (1.0 / mode)
    return v / s if s > 0 else v


class LlamaRunner:
    """The Runner of one Model and Context: n_slots sequences of n_ctx_slot positions each."""

    def __init__(self, model: "_core.Model", ctx: "_core.Context", n_slots: int, n_ctx_slot: int):
        self.model = model
        self.ctx = ctx
        self.vocab = model.vocab
        self.n_slots = n_slots
        self.n_ctx_slot = n_ctx_slot
        self.n_batch = ctx.n_batch
        self.n_ubatch = ctx.n_ubatch
        self.batch = _core.Batch(self.n_batch, 1)
        self._eog = frozenset(self.vocab.eog_tokens())
        self._pieces: Dict[int, bytes] = {}
        self.pooled = ctx.pooling_type not in (-1, 0)
        self.kv_unified = bool(ctx.params.kv_unified) or ctx.n_seq_max == 1
        self.can_shift = bool(ctx.memory_can_shift())     # KV positions can move (cache reuse)
        self.loras: List["_core.LoraAdapter"] = []
        self.lora_default: Tuple[float, ...] = ()   # the scales of a request whose lora is None
        self._lora_applied: Tuple[float, ...] = ()  # the scales the context has now

    # ---- LoRA adapters: one configuration per decode ----
    def set_loras(self, adapters: Sequence["_core.LoraAdapter"], default: Sequence[float]) -> None:
        """The adapters requests may scale (Request.lora: one scale per adapter, in this order),
        and the default scales. Applied lazily, by the next decode that needs them."""
        default = tuple(float(x) for x in default)
        if len(default) != len(adapters):
            raise ValueError(f"{len(adapters)} adapters but {len(default)} default scales")
        self.loras = list(adapters)
        self.lora_default = default
        self._set_lora(default)

    def set_lora_scales(self, scales: Sequence[float]) -> None:
        """New default scales (of requests whose lora is None); one per adapter of set_loras."""
        scales = tuple(float(x) for x in scales)
        if len(scales) != len(self.loras):
            raise ValueError(f"{len(self.loras)} adapters but {len(scales)} scales")
        self.lora_default = scales

    def _set_lora(self, scales: Tuple[float, ...]) -> None:
        # as llama-server's common_set_adapter_lora: an adapter at scale 0 is not applied at all
        self.ctx.set_lora_adapters([(a, x) for a, x in zip(self.loras, scales) if x != 0.0])
        self._lora_applied = scales

    def piece(self, token: int) -> bytes:
        p = self._pieces.get(token)
        if p is None:
            p = self._pieces[token] = self.vocab.token_to_piece(token, special=False)
        return p

    def is_eog(self, token: int) -> bool:
        return token in self._eog

    def new_sampler(self, request: Request) -> "_core.Sampler":
        sp: SamplingParams = request.sampling
        if request.ignore_eos and self._eog:
            bias = dict(sp.logit_bias)
            bias.update({t: float("-inf") for t in self._eog})
            sp = sp.replace(logit_bias=tuple(bias.items()))
        return _core.Sampler(self.model, sp, n_ctx=self.n_ctx_slot)    # penalty windows: at most a slot's context

    def free_sampler(self, sampler: Any) -> None:
        sampler.close()

    # ---- memory: the scheduler's ops (applied by EngineCore, in order) and the slot files ----
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        if not self.ctx.seq_rm(seq, p0, p1):
            self.ctx.seq_rm(seq, -1, -1)    # partial removal unsupported (recurrent): drop all

    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.ctx.seq_add(seq, p0, p1, delta)

    def save_seq(self, seq: int) -> bytes:
        """The sequence's state (the prompt cache keeps it in host memory)."""
        return self.ctx.seq_state_get(seq)

    def load_seq(self, seq: int, data: bytes) -> None:
        """The sequence becomes ``data`` (from save_seq). Raises StateError."""
        self.ctx.seq_rm(seq, -1, -1)
        if self.ctx.seq_state_set(data, seq) != len(data):
            self.ctx.seq_rm(seq, -1, -1)
            raise StateError(f"failed to restore a prompt cache entry into sequence {seq}")

    def save_seq_file(self, seq: int, path: str, tokens: Sequence[int]) -> int:
        """Write the sequence's KV and ``tokens`` to a file; the bytes written. Raises StateError."""
        return self.ctx.seq_state_save_file(path, seq, tokens)

    def load_seq_file(self, seq: int, path: str, n_max: int) -> Tuple[List[int], int]:
        """Replace the sequence with a file from save_seq_file: (its tokens, at most ``n_max``; the
        bytes read). Raises StateError."""
        self.ctx.seq_rm(seq, -1, -1)
        tokens = self.ctx.seq_state_load_file(path, seq, n_max)
        # llama_state_seq_load_file reads the whole file (it asserts so) and returns that size
        return tokens, os.path.getsize(path)

    def decode(self, items: Sequence[BatchItem]) -> List[int]:
        if items:   # the scheduler batches only requests sharing one LoRA configuration
            lora = items[0].state.request.lora or ()   # EngineCore.add fixed None to the default
            if lora is not self._lora_applied and lora != self._lora_applied:
                self._set_lora(lora)
        b = self.batch
        b.clear()
        rows = []
        for it in items:
            if it.state.request.kind is RequestKind.EMBED and not self.pooled:
                first = b.n_tokens
                for i, t in enumerate(it.tokens):
                    b.add(t, it.pos0 + i, it.slot.id, True)
                rows.append(first)
            else:
                rows.append(b.add_sequence(it.tokens, it.pos0, it.slot.id, it.logits))
        self.ctx.decode(b)
        return rows

    def sample(self, sampler: "_core.Sampler", row: int) -> int:
        return sampler.sample(self.ctx, row)

    def reasoning_end(self, sampler: "_core.Sampler") -> bool:
        return sampler.force_reasoning_end()

    def logprob(self, row: int, token: int, n_top: int) -> TokenLogprob:
        top = self.ctx.top_logprobs(row, n_top) if n_top > 0 else []
        return TokenLogprob(token, self.ctx.logprob_of(row, token), top)

    def post_sampling_probs(self, sampler: "_core.Sampler", token: int, n_top: int) -> TokenLogprob:
        """The candidates the sampler's chain left for the row it just sampled (probability space)."""
        p, top = sampler.post_sampling_probs(n_top)
        return TokenLogprob(token, _log(p), [(t, _log(q)) for t, q in top], prob=p, top_probs=top)

    def embedding(self, item: BatchItem, row: int, pooled: bool) -> Any:
        mode = item.state.request.embd_normalize
        if self.pooled:
            v = normalize_embedding(self.ctx.embeddings_seq(item.slot.id), mode)
            return v.tolist() if pooled else [v.tolist()]
        rows = [normalize_embedding(self.ctx.embeddings(row + i), mode) for i in range(len(item.tokens))]
        if pooled:  # the model has no pooling: mean of the token embeddings
            return normalize_embedding(np.mean([self.ctx.embeddings(row + i) for i in range(len(item.tokens))],
                                               axis=0), mode).tolist()
        return [r.tolist() for r in rows]
