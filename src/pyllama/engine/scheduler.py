"""The scheduler: pure logic, no llama calls.

Each step it admits waiting requests into free slots (longest cached prefix first, then least
recently used), and builds one batch: one decode token for every generating slot, then prompt
chunks of slots still reading their prompt, within ``n_batch`` tokens (chunked prefill). The
runner executes the batch; ``on_decoded`` advances the slots. KV-full is handled by halving the
batch and, when a single token cannot fit, failing only that request.

With a host-RAM prompt cache (``cache_ram_mib``, llama-server's --cache-ram), admission also
decides what goes to it and what comes back (SeqSave/SeqLoad memory ops, see prompt_cache.py);
this happens only when a request is admitted, never in a step that admits nothing.

Cache reuse (``Request.n_cache_reuse``, llama-server's --cache-reuse): at admission, after the
common prefix, chunks of at least that many cached tokens that the new prompt has right there
(the prompt dropped what preceded them) are moved into place by SeqRm + SeqShift memory ops, as
llama-server does; only with cache_prompt, under the same LoRA scales, and when the runner's
memory can shift (``SchedulerConfig.can_shift``).

LoRA: llama.cpp applies adapters per context, so one decode serves one adapter configuration
(``Request.lora``). When running requests use more than one, each step serves the configuration
that has waited longest (every configuration is served within as many steps as there are
configurations); the runner applies it before the decode. A slot's cache counts for prefix reuse
only under the configuration it was computed with. With one configuration nothing changes.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple, Union

from ..errors import ContextLimitError, KVCacheFullError
from .prompt_cache import CacheEntry, PromptCache
from .request import Request, RequestKind, RequestState, RequestStatus
from .slot import Slot, common_prefix


_ALL = object()     # _pick_lora: every running request shares one LoRA configuration


@dataclass
class BatchItem:
    slot: Slot
    state: RequestState
    tokens: List[int]
    pos0: int
    logits: bool                    # logits wanted for the last token of the item
    prefill: bool


# ---- memory ops: what the scheduler decided about the KV, applied by the core (in order) before the decode
@dataclass(frozen=True)
class SeqRm:
    """Remove positions [p0, p1) of sequence ``seq`` (-1: open end; both -1: all of it)."""
    seq: int
    p0: int = -1
    p1: int = -1


@dataclass(frozen=True)
class SeqShift:
    """Move positions [p0, p1) of sequence ``seq`` by ``delta`` (context shift, cache reuse)."""
    seq: int
    p0: int
    p1: int
    delta: int


@dataclass(frozen=True)
class SeqSave:
    """Copy the sequence's state to host memory: the core stores the runner's bytes in ``entry``."""
    seq: int
    entry: CacheEntry


@dataclass(frozen=True)
class SeqLoad:
    """Replace the sequence with ``entry``'s state (the entry has left the prompt cache)."""
    seq: int
    entry: CacheEntry


MemOp = Union[SeqRm, SeqShift, SeqSave, SeqLoad]


@dataclass
class SchedulerOutput:
    items: List[BatchItem] = field(default_factory=list)
    mem_ops: List[MemOp] = field(default_factory=list)
    finished: List[RequestState] = field(default_factory=list)   # ended without decoding (abort...)

    @property
    def n_tokens(self) -> int:
        return sum(len(i.tokens) for i in self.items)


@dataclass(frozen=True)
class SchedulerConfig:
    n_slots: int
    n_ctx_slot: int
    n_batch: int
    n_ubatch: int = 512
    context_shift: bool = False
    n_keep: int = 0                 # tokens kept at the start on a context shift
    slot_prompt_similarity: float = 0.1
    kv_unified: bool = True         # False: each slot has its own KV stream
    cont_batching: bool = True      # False: new requests start only when every slot is idle
    cache_ram_mib: int = 0          # host-RAM prompt cache (llama-server's --cache-ram): 0 off, -1 no limit
    cache_ram_tokens: int = 0       # its token limit (llama-server: the context size), 0 = none
    cache_idle_slots: bool = False  # on every admission, save idle slots to it (and clear them if kv_unified)
    can_shift: bool = True          # the runner's memory can shift positions (cache reuse, context shift)


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.slots = [Slot(i, config.n_ctx_slot) for i in range(config.n_slots)]
        self.waiting: Deque[RequestState] = deque()
        self.by_id: Dict[str, RequestState] = {}
        self._clock = 0
        self._budget_cap = config.n_batch
        self._step = 0
        self._lora_waiting: Dict[Any, int] = {}    # configuration -> step since which it waits
        self.prompt_cache: Optional[PromptCache] = (
            PromptCache(config.cache_ram_mib, config.cache_ram_tokens) if config.cache_ram_mib != 0 else None)

    # ---- intake ----
    def validate(self, req: Request) -> None:
        """Reject what can never run, with both numbers in the message."""
        cfg = self.config
        n = len(req.prompt)
        if req.kind is RequestKind.EMBED:
            limit = min(cfg.n_batch, cfg.n_ubatch, cfg.n_ctx_slot)
            if n > limit:
                raise ContextLimitError(
                    f"input is too large to process: {n} tokens, the limit is {limit} "
                    f"(n_ubatch={cfg.n_ubatch}, n_batch={cfg.n_batch})", n_tokens=n, n_ctx=limit)
        elif n >= cfg.n_ctx_slot:
            raise ContextLimitError(
                f"the request exceeds the available context size: the prompt has {n} tokens and a slot "
                f"holds {cfg.n_ctx_slot}", n_tokens=n, n_ctx=cfg.n_ctx_slot)
        if req.id_slot >= cfg.n_slots:
            raise ValueError(f"id_slot {req.id_slot} out of range [0, {cfg.n_slots})")
        if req.id in self.by_id:
            raise ValueError(f"duplicate request id {req.id!r}")

    def add(self, state: RequestState) -> None:
        self.validate(state.request)
        self.waiting.append(state)
        self.by_id[state.id] = state

    def abort(self, request_id: str) -> bool:
        """Mark a request aborted; it leaves at the next schedule()."""
        st = self.by_id.get(request_id)
        if st is None or st.status.finished:
            return False
        st.finish(RequestStatus.FINISHED_ABORTED)
        return True

    def fail(self, state: RequestState, error: BaseException) -> None:
        state.finish(RequestStatus.FINISHED_ERROR, error)

    def release(self, state: RequestState) -> None:
        """Forget a finished request and free its slot (its cache stays for prefix reuse)."""
        self.by_id.pop(state.id, None)
        if state.slot is not None:
            slot = self.slots[state.slot]
            if slot.state is state:
                slot.state = None
                self._clock += 1
                slot.last_used = self._clock        # LRU counts from the release, as llama-server's
                if state.request.kind is RequestKind.EMBED:
                    slot.cache = []     # embeddings are not kept for reuse
        try:
            self.waiting.remove(state)
        except ValueError:
            pass

    # ---- queries ----
    @property
    def n_running(self) -> int:
        return sum(1 for s in self.slots if s.state is not None)

    @property
    def n_waiting(self) -> int:
        return len(self.waiting)

    def has_work(self) -> bool:
        return bool(self.waiting) or any(s.state is not None for s in self.slots)

    # ---- one step ----
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        # requests finished outside a step (abort) leave now
        for slot in self.slots:
            st = slot.state
            if st is not None and st.status.finished:
                out.finished.append(st)
                self.release(st)
        for st in [w for w in self.waiting if w.status.finished]:
            out.finished.append(st)
            self.release(st)
        self._admit(out)

        budget = self._budget_cap
        lora = self._pick_lora()
        # 1. one token for every generating slot
        for slot in self.slots:
            st = slot.state
            if st is None or st.status is not RequestStatus.DECODING or budget <= 0:
                continue
            if lora is not _ALL and st.request.lora != lora:
                continue
            if len(slot.cache) >= slot.n_ctx:
                if not self._shift(slot, out):
                    st.finish(RequestStatus.FINISHED_LENGTH)
                    out.finished.append(st)
                    self.release(st)
                    continue
            out.items.append(BatchItem(slot, st, [st.generated[-1]], len(slot.cache), True, False))
            budget -= 1
        # 2. prompt chunks, oldest admission first
        prefill = sorted((s for s in self.slots if s.state is not None and s.state.status is RequestStatus.PREFILL
                          and (lora is _ALL or s.state.request.lora == lora)),
                         key=lambda s: s.state.t_start)
        n_embed = 0
        for slot in prefill:
            if budget <= 0:
                break
            st = slot.state
            prompt = st.request.prompt
            start = len(slot.cache)
            n = min(len(prompt) - start, budget)
            if st.request.kind is RequestKind.EMBED:
                if n < len(prompt) - start:
                    continue    # an embedding input is decoded in one piece
                if n_embed and not self.config.kv_unified:
                    # with per-slot KV streams llama.cpp splits unequal sequences across micro-batches
                    # and pools each part on its own: one pooled input per decode
                    continue
                n_embed += 1
            end = start + n
            out.items.append(BatchItem(slot, st, list(prompt[start:end]), start, end == len(prompt), True))
            budget -= n
        if not out.items and self._budget_cap < self.config.n_batch and self.n_running:
            # a lowered budget (after KV-full) must not starve an item that needs more: restore it
            self._budget_cap = self.config.n_batch
            more = self.schedule()
            more.finished[:0] = out.finished
            more.mem_ops[:0] = out.mem_ops
            return more
        return out

    def _pick_lora(self) -> Any:
        """The LoRA configuration this step serves: _ALL when every running request shares one
        (the common case: one pass over the slots, nothing else), else the one waiting longest."""
        first: Any = _ALL
        multi = False
        for slot in self.slots:
            st = slot.state
            if st is None:
                continue
            if first is _ALL:
                first = st.request.lora
            elif st.request.lora != first:
                multi = True
                break
        if not multi:
            if self._lora_waiting:
                self._lora_waiting.clear()
            return _ALL
        self._step += 1
        waiting = self._lora_waiting
        running = {}
        for slot in self.slots:
            st = slot.state
            if st is not None and not st.status.finished:
                running[st.request.lora] = waiting.get(st.request.lora, self._step)
        # the configuration waiting longest (ties: the first one seen, i.e. the lowest slot)
        pick = min(running, key=running.__getitem__)
        running[pick] = self._step + 1
        self._lora_waiting = running
        return pick

    def _admit(self, out: SchedulerOutput) -> None:
        if not self.waiting:
            return
        if not self.config.cont_batching and any(s.state is not None for s in self.slots):
            return      # static batching: wait until the running batch is done
        pc = self.prompt_cache
        still: Deque[RequestState] = deque()
        while self.waiting:
            st = self.waiting.popleft()
            slot, update_cache = self._pick_slot(st)
            if slot is None:
                still.append(st)
                continue
            slot.state = st
            st.slot = slot.id
            req = st.request
            if pc is not None and update_cache and req.kind is RequestKind.GENERATE:
                self._cache_update(pc, slot, req, out)
            keep = 0
            reused = False
            if req.cache_prompt and req.kind is RequestKind.GENERATE and slot.lora == req.lora:
                keep = common_prefix(slot.cache, req.prompt)
                if req.n_cache_reuse > 0 and self.config.can_shift:
                    keep, reused = self._reuse_chunks(slot, req, keep, out)
                keep = min(keep, len(req.prompt) - 1)
            slot.lora = req.lora
            if keep < len(slot.cache) or not slot.cache or reused:
                out.mem_ops.append(SeqRm(slot.id, keep, -1))
            del slot.cache[keep:]
            st.n_cached = keep
            st.status = RequestStatus.PREFILL
            st.t_start = time.perf_counter()
            if pc is not None and self.config.cache_idle_slots:
                self._save_idle_slots(pc, out)
        self.waiting = still

    def _reuse_chunks(self, slot: Slot, req: Request, n_past: int, out: SchedulerOutput) -> Tuple[int, bool]:
        """llama-server's --cache-reuse / n_cache_reuse: after the common prefix ``n_past``, walk
        the slot's cache and the prompt; a run of at least ``n_cache_reuse`` tokens of the cache
        that matches the prompt where the prompt is, is moved there by shifting its KV positions
        (what lies between is removed). ``slot.cache[:n_past']`` becomes the prompt's first n_past'
        tokens (its tail is stale: the caller removes it). Returns (n_past', whether a chunk moved)."""
        cache, prompt, n_min = slot.cache, req.prompt, req.n_cache_reuse
        head_c = head_p = n_past
        moved = False
        while head_c < len(cache) and head_p < len(prompt):
            n = 0
            while (head_c + n < len(cache) and head_p + n < len(prompt)
                   and cache[head_c + n] == prompt[head_p + n]):
                n += 1
            if n >= n_min:
                out.mem_ops.append(SeqRm(slot.id, head_p, head_c))
                out.mem_ops.append(SeqShift(slot.id, head_c, head_c + n, head_p - head_c))
                cache[head_p:head_p + n] = cache[head_c:head_c + n]
                n_past += n
                head_c += n
                head_p += n
                moved = True
            else:
                head_c += 1
        return n_past, moved

    def _cache_update(self, pc: PromptCache, slot: Slot, req: Request, out: SchedulerOutput) -> None:
        """llama-server's get_available_slot cache update: save what the slot holds, then load the
        entry that serves the new prompt better than the slot does (it leaves the cache)."""
        e = pc.alloc(slot.cache, slot.lora)
        if e is not None:
            out.mem_ops.append(SeqSave(slot.id, e))
        best = pc.find(slot.cache, req.prompt, req.lora, slot.lora)
        if best is None:
            return
        pc.take(best)
        if req.cache_prompt:
            out.mem_ops.append(SeqLoad(slot.id, best))
            slot.cache = list(best.tokens)
            slot.lora = best.lora
        # cache_prompt false: llama-server loads the entry and then re-evaluates the whole prompt
        # over it; the entry is gone from the cache either way, so the load itself is skipped

    def _save_idle_slots(self, pc: PromptCache, out: SchedulerOutput) -> None:
        """--cache-idle-slots: after a slot starts a task, every idle slot goes to the prompt cache
        and, with a unified KV cache (where its cells are reusable by others), is cleared."""
        for s in self.slots:
            if s.state is not None or not s.cache:
                continue
            e = pc.alloc(s.cache, s.lora)
            if e is not None:
                out.mem_ops.append(SeqSave(s.id, e))
            if self.config.kv_unified:
                out.mem_ops.append(SeqRm(s.id, -1, -1))
                s.cache = []

    def _pick_slot(self, st: RequestState) -> Tuple[Optional[Slot], bool]:
        """The slot for a request and whether the prompt cache is to be updated (llama-server: a
        slot taken by LRU, or one that would lose more than half of its tokens)."""
        req = st.request
        thr = self.config.slot_prompt_similarity
        if req.id_slot >= 0:
            s = self.slots[req.id_slot]
            if not s.free:
                return None, False
            if not s.cache or thr == 0:
                return s, False
            lcp = common_prefix(s.cache, req.prompt) if s.lora == req.lora else 0
            return s, not (lcp > thr * len(req.prompt) and lcp / len(s.cache) >= 0.5)
        free = [s for s in self.slots if s.free]
        if not free:
            return None, False
        if req.cache_prompt and req.kind is RequestKind.GENERATE:
            lcp, _, neg_id = max((common_prefix(s.cache, req.prompt) if s.lora == req.lora else 0,
                                  -s.last_used, -s.id) for s in free)
            best = self.slots[-neg_id]
            # reuse a cache only when it covers enough of the prompt (llama-server's --slot-prompt-similarity)
            if lcp > thr * len(req.prompt):
                return best, lcp / len(best.cache) < 0.5
        return min(free, key=lambda s: s.last_used), True

    def _shift(self, slot: Slot, out: SchedulerOutput) -> bool:
        """Context shift: drop half of what follows n_keep. False when disabled or impossible."""
        cfg = self.config
        if not cfg.context_shift or not cfg.can_shift:
            return False     # then the request ends at the context's end, as with shifting off
        n_keep = min(cfg.n_keep, len(slot.cache) - 1)
        n_discard = (len(slot.cache) - n_keep) // 2
        if n_discard <= 0:
            return False
        out.mem_ops.append(SeqRm(slot.id, n_keep, n_keep + n_discard))
        out.mem_ops.append(SeqShift(slot.id, n_keep + n_discard, -1, -n_discard))
        del slot.cache[n_keep:n_keep + n_discard]
        return True

    # ---- after the runner decoded (or failed) ----
    def on_decoded(self, out: SchedulerOutput) -> None:
        for item in out.items:
            item.slot.cache.extend(item.tokens)
            st = item.state
            if item.prefill:
                st.n_prompt_decoded += len(item.tokens)
                if item.logits:
                    st.status = RequestStatus.DECODING
        if self._budget_cap < self.config.n_batch:
            self._budget_cap = min(self.config.n_batch, self._budget_cap * 2)

    def on_kv_full(self, out: SchedulerOutput) -> List[RequestState]:
        """The batch did not fit in the KV cache. Shrink the next batch, or fail the lone request."""
        n = out.n_tokens
        lone_embed = len(out.items) == 1 and out.items[0].state.request.kind is RequestKind.EMBED
        if n > 1 and not lone_embed:
            self._budget_cap = max(1, min(self._budget_cap, n) // 2)
            return []
        for item in out.items:
            self.fail(item.state, KVCacheFullError(
                f"the KV cache is full: no room for request {item.state.id} "
                f"(slot {item.slot.id} holds {len(item.slot.cache)} tokens)", 1))
        return [item.state for item in out.items]

    def slots_info(self) -> List[dict]:
        return [s.info() for s in self.slots]
