"""EngineCore: one step = schedule, one llama_decode for every slot, sample, emit deltas.

The core is generic over a *runner* (the only part that calls llama.cpp), so the whole loop is
tested with a fake runner. ``LlamaRunner`` is the real one. Only one thread may call step().
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set, Tuple

from ..errors import DecodeError, KVCacheFullError, PyllamaError, StateError
from .request import Request, RequestKind, RequestOutput, RequestState, RequestStatus, TokenLogprob
from .scheduler import BatchItem, Scheduler, SchedulerConfig, SchedulerOutput, SeqLoad, SeqRm, SeqSave, SeqShift
from .slot import Slot

logger = logging.getLogger("pyllama.engine")


class Runner(Protocol):
    """Everything the engine calls and reads of a model + context (only from the engine thread,
    except ``new_sampler``, which AsyncEngine calls in the caller's thread)."""

    n_slots: int                    # sequences (slot i is seq_id i)
    n_ctx_slot: int                 # positions each may use
    n_batch: int
    n_ubatch: int
    kv_unified: bool                # one KV buffer for all sequences (False: one stream each)
    can_shift: bool                 # KV positions can move (context shift, cache reuse)
    lora_default: Tuple[float, ...]  # the scales of a request whose lora is None: one per adapter

    # vocab and samplers
    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def new_sampler(self, request: Request) -> Any: ...
    def free_sampler(self, sampler: Any) -> None: ...
    # LoRA: the adapters Request.lora scales (in this order) and the default scales
    def set_loras(self, adapters: Sequence[Any], default: Sequence[float]) -> None: ...
    def set_lora_scales(self, scales: Sequence[float]) -> None: ...
    # memory: the scheduler's ops, host-RAM states of the prompt cache, slot files
    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None: ...
    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None: ...
    def save_seq(self, seq: int) -> bytes: ...
    def load_seq(self, seq: int, data: bytes) -> None: ...
    def save_seq_file(self, seq: int, path: str, tokens: Sequence[int]) -> int: ...
    def load_seq_file(self, seq: int, path: str, n_max: int) -> Tuple[List[int], int]: ...
    # compute: one decode per step, then per row with logits
    def decode(self, items: Sequence[BatchItem]) -> List[int]: ...
    def sample(self, sampler: Any, row: int) -> int: ...
    def reasoning_end(self, sampler: Any) -> bool: ...
    def logprob(self, row: int, token: int, n_top: int) -> TokenLogprob: ...
    def post_sampling_probs(self, sampler: Any, token: int, n_top: int) -> TokenLogprob: ...
    def embedding(self, item: BatchItem, row: int, pooled: bool) -> Any: ...


@dataclass
class EngineMetrics:
    """The engine's counters (metrics_dict(), the server's /metrics) and the recorder that fills
    them: step_begin/step_end around a step, decode_begin/decode_end around its decode,
    request_finished for every final output."""

    n_prompt_tokens_processed_total: int = 0
    t_prompt_processing_total: float = 0.0      # ms
    n_tokens_predicted_total: int = 0
    t_tokens_generation_total: float = 0.0      # ms
    n_decode_total: int = 0
    n_busy_slots_total: int = 0
    n_tokens_max: int = 0
    n_requests_total: int = 0
    n_requests_failed: int = 0
    t_step_python_total: float = 0.0            # s spent in step() outside decode
    t_decode_total: float = 0.0                 # s spent in decode

    def __post_init__(self) -> None:
        self._t_step = 0.0          # the running step's start
        self._t_decode = 0.0        # the running decode's start
        self._t_in_decode = 0.0     # of the running step, s in decode

    def step_begin(self) -> None:
        self._t_step = time.perf_counter()
        self._t_in_decode = 0.0

    def step_end(self) -> None:
        self.t_step_python_total += time.perf_counter() - self._t_step - self._t_in_decode

    def decode_begin(self) -> None:
        self._t_decode = time.perf_counter()

    def decode_end(self, items: Optional[Sequence[BatchItem]] = None) -> None:
        """After runner.decode; ``items``: the batch, when the decode succeeded (then counted)."""
        dt = time.perf_counter() - self._t_decode
        self.t_decode_total += dt
        self._t_in_decode += dt
        if items is not None:
            self.n_decode_total += 1
            self.n_busy_slots_total += len(items)
            n = self.n_tokens_max
            for it in items:    # a slot's length once the batch is in it (pos0 is its length before)
                k = it.pos0 + len(it.tokens)
                if k > n:
                    n = k
            self.n_tokens_max = n

    def request_finished(self, o: RequestOutput) -> None:
        if o.error is not None:
            self.n_requests_failed += 1
        t = o.timings
        if t:
            self.n_prompt_tokens_processed_total += t["prompt_n"]
            self.t_prompt_processing_total += t["prompt_ms"]
            self.n_tokens_predicted_total += t["predicted_n"]
            self.t_tokens_generation_total += t["predicted_ms"]

    def as_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SlotSaved:
    id_slot: int
    n_saved: int        # tokens
    n_written: int      # bytes


@dataclass(frozen=True)
class SlotRestored:
    id_slot: int
    n_restored: int     # tokens
    n_read: int         # bytes


@dataclass(frozen=True)
class SlotErased:
    id_slot: int
    n_erased: int       # tokens


class EngineCore:
    def __init__(self, runner: Runner, *, context_shift: bool = False, n_keep: int = 0,
                 slot_prompt_similarity: float = 0.1, cont_batching: bool = True,
                 cache_ram_mib: int = 0, cache_ram_tokens: Optional[int] = None, cache_idle_slots: bool = True):
        """``cache_ram_mib``: the host-RAM prompt cache (llama-server's --cache-ram; 0 off, -1 no
        size limit); its token limit ``cache_ram_tokens`` defaults to the context size.
        ``cache_idle_slots`` (needs the cache) saves idle slots to it whenever a request starts."""
        self.runner = runner
        kv_unified = bool(runner.kv_unified)
        if cache_ram_tokens is None:
            cache_ram_tokens = runner.n_ctx_slot if kv_unified else runner.n_ctx_slot * runner.n_slots
        self.scheduler = Scheduler(SchedulerConfig(
            n_slots=runner.n_slots, n_ctx_slot=runner.n_ctx_slot, n_batch=runner.n_batch,
            n_ubatch=runner.n_ubatch, context_shift=context_shift, n_keep=n_keep,
            slot_prompt_similarity=slot_prompt_similarity, kv_unified=kv_unified,
            cont_batching=cont_batching, cache_ram_mib=cache_ram_mib, cache_ram_tokens=cache_ram_tokens,
            cache_idle_slots=cache_idle_slots and cache_ram_mib != 0, can_shift=bool(runner.can_shift)))
        self.metrics = EngineMetrics()
        self._samplers: Dict[str, Any] = {}
        # set when llama.cpp aborted inside a decode (e.g. a lost RPC worker); cleared by the next good one
        self.fatal_error: Optional[str] = None

    @property
    def n_ctx_slot(self) -> int:
        """Positions per slot."""
        return self.scheduler.config.n_ctx_slot

    @property
    def can_shift(self) -> bool:
        """Whether the memory can shift positions (else cache reuse and context shift are off)."""
        return self.scheduler.config.can_shift

    # ---- intake (engine thread) ----
    def add(self, request: Request, sampler: Any = None) -> RequestState:
        """Queue a request (validated here: raises ContextLimitError, ValueError...).

        ``sampler``: one already built for it (AsyncEngine builds it in the caller's thread)."""
        self.validate(request)
        if request.lora is None and self.runner.lora_default:
            # the default scales, fixed now: the scheduler then compares concrete scales, so a cache
            # built under an old default is never reused under a new one, and embeddings batch with
            # completions on the default
            request = replace(request, lora=self.runner.lora_default)
        if request.kind is RequestKind.GENERATE and sampler is None:
            sampler = self.runner.new_sampler(request)      # may raise GrammarError: nothing queued yet
        st = RequestState(request, self.runner.piece, self.runner.is_eog)
        self.scheduler.add(st)
        if sampler is not None:
            self._samplers[request.id] = sampler
        self.metrics.n_requests_total += 1
        return st

    def validate(self, request: Request) -> None:
        """Raise ContextLimitError/ValueError for what can never run (see Scheduler.validate); a
        request's LoRA scales must be one per adapter of the runner."""
        self.scheduler.validate(request)
        if request.lora is not None:
            n = len(self.runner.lora_default)
            if len(request.lora) != n:
                raise ValueError(f"the request has {len(request.lora)} LoRA scales, the engine has {n} adapters")

    def new_sampler(self, request: Request) -> Any:
        """A sampler for a GENERATE request, None for others (any thread: reads the model only)."""
        return self.runner.new_sampler(request) if request.kind is RequestKind.GENERATE else None

    def free_sampler(self, sampler: Any) -> None:
        """Free a sampler from new_sampler that never reached add()."""
        if sampler is not None:
            self.runner.free_sampler(sampler)

    def abort(self, request_id: str) -> bool:
        return self.scheduler.abort(request_id)

    def reasoning_end(self, request_id: str) -> bool:
        """End a running request's reasoning now: its next tokens are the budget message and the end
        tag (llama-server's reasoning control, POST /v1/chat/completions/control).

        Raises LookupError when no such request is running, ValueError when it was not submitted
        with ``reasoning_control`` (or has no thinking tags). Returns True if the request was inside
        a reasoning block, False if there was nothing to end (not started, ending, or done)."""
        st = self.scheduler.by_id.get(request_id)
        sampler = self._samplers.get(request_id)
        if st is None or st.status.finished or sampler is None:
            raise LookupError(f"no running request {request_id!r}")
        sp = st.request.sampling
        if not sp.reasoning_control:
            raise ValueError("reasoning control not enabled for this completion")
        return self.runner.reasoning_end(sampler)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # ---- LoRA adapters (engine thread) ----
    def set_loras(self, adapters: Sequence[Any], scales: Sequence[float]) -> None:
        """The adapters requests may scale (Request.lora: one scale per adapter, in this order) and
        the default scales (of requests without lora, fixed when they are added)."""
        self.runner.set_loras(adapters, scales)

    def set_lora_scales(self, scales: Sequence[float]) -> None:
        """New default scales, for requests added from now on."""
        self.runner.set_lora_scales(scales)

    # ---- the step ----
    def step(self) -> List[RequestOutput]:
        """schedule -> decode (one llama_decode for every slot) -> sample -> update; the outputs."""
        m = self.metrics
        m.step_begin()
        try:
            return self._step()
        finally:
            m.step_end()

    def _step(self) -> List[RequestOutput]:
        sched = self.scheduler
        out = sched.schedule()
        emitted = [self._final(st) for st in out.finished]
        if out.mem_ops:
            emitted += self._apply_mem_ops(out)
        if not out.items:
            return emitted
        m = self.metrics
        m.decode_begin()
        try:
            rows = self.runner.decode(out.items)
        except KVCacheFullError:
            m.decode_end()
            # shrink the next batch; a lone token that cannot fit fails its request only
            return emitted + [self._evict(st) for st in sched.on_kv_full(out)]
        except DecodeError as e:
            m.decode_end()
            # a failed batch: the requests in it fail, the engine goes on
            if e.code <= -100:
                self.fatal_error = str(e)
            for item in out.items:
                sched.fail(item.state, e)
                emitted.append(self._evict(item.state))
            return emitted
        m.decode_end(out.items)
        self.fatal_error = None
        sched.on_decoded(out)
        self._sample(out.items, rows)
        return self._update(out.items, emitted)

    def _sample(self, items: Sequence[BatchItem], rows: Sequence[int]) -> None:
        """Each request with logits in the batch gets its embedding, or its next token (and
        logprobs). What raises here is that request's failure alone: it finishes with the error,
        the others go on (Exception, not only PyllamaError: a bug in one request's sampling or
        post-processing must not fail the batch)."""
        runner = self.runner
        now = time.perf_counter()
        for item, row in zip(items, rows):
            st = item.state
            if not item.logits or st.status.finished:
                continue
            req = st.request
            try:
                if req.kind is RequestKind.EMBED:
                    st.out().embedding = runner.embedding(item, row, req.pooled)
                    st.finish(RequestStatus.FINISHED_STOPPED)
                    continue
                if not st.t_prompt_done:
                    st.t_prompt_done = now
                    if req.max_tokens == 0:     # evaluate the prompt into the cache, generate nothing
                        st.finish(RequestStatus.FINISHED_LENGTH)
                        continue
                smp = self._samplers[req.id]
                tok = runner.sample(smp, row)
                lp = None
                if req.logprobs or req.n_probs:
                    lp = (runner.post_sampling_probs(smp, tok, req.n_probs) if req.post_sampling_probs
                          else runner.logprob(row, tok, req.n_probs))
                st.add_token(tok, lp)
            except Exception as e:  # noqa: BLE001 - this request's failure
                if not isinstance(e, PyllamaError):
                    logger.exception("request %s failed on slot %s", st.id, item.slot.id)
                st.finish(RequestStatus.FINISHED_ERROR, e)

    def _update(self, items: Sequence[BatchItem], emitted: List[RequestOutput]) -> List[RequestOutput]:
        """Finished requests leave their slots (their final outputs), the others emit their deltas."""
        sched = self.scheduler
        for item in items:
            st = item.state
            if st.status.finished:
                if st.id in sched.by_id:
                    sched.release(st)
                    emitted.append(self._final(st))
            elif st.pending is not None:
                emitted.append(st.take_output())
        return emitted

    def _apply_mem_ops(self, out: SchedulerOutput) -> List[RequestOutput]:
        """Run the step's memory ops in order. Prompt-cache saves that fail are dropped; a failed
        load fails its request (its slot is cleared). Then the cache enforces its limits."""
        emitted: List[RequestOutput] = []
        runner = self.runner
        cache_ops = False
        failed: Set[int] = set()
        for op in out.mem_ops:
            if op.seq in failed:
                continue
            if isinstance(op, SeqRm):
                runner.seq_rm(op.seq, op.p0, op.p1)
            elif isinstance(op, SeqShift):
                runner.seq_shift(op.seq, op.p0, op.p1, op.delta)
            elif isinstance(op, SeqSave):
                cache_ops = True
                self._save(op)
            else:
                cache_ops = True
                err = self._load(op)
                if err is not None:
                    failed.add(op.seq)
                    st = self.scheduler.slots[op.seq].state
                    if st is not None:
                        self.scheduler.fail(st, err)
                        emitted.append(self._evict(st))
        if failed:
            out.items = [it for it in out.items if it.slot.id not in failed]
        if cache_ops and self.scheduler.prompt_cache is not None:
            self.scheduler.prompt_cache.commit()
        return emitted

    def _save(self, op: SeqSave) -> None:
        """A sequence's state into its prompt-cache entry; on failure the entry gets no data (the
        cache drops it at commit)."""
        try:
            data = self.runner.save_seq(op.seq)
        except (MemoryError, PyllamaError) as e:
            pc = self.scheduler.prompt_cache
            if isinstance(e, MemoryError) and pc is not None:
                # as llama-server on bad_alloc: lower the limit to 40% of the use
                pc.limit_size = max(1, int(0.4 * pc.size()))
            return
        op.entry.data, op.entry.size = data, len(data)

    def _load(self, op: SeqLoad) -> Optional[PyllamaError]:
        """A prompt-cache entry's state into its sequence (the entry has left the cache: its bytes
        go). The error, for the request it fails, or None; MemoryError propagates."""
        data, op.entry.data = op.entry.data, None
        try:
            if not data:
                raise StateError(f"prompt cache entry for sequence {op.seq} has no data")
            self.runner.load_seq(op.seq, data)
        except PyllamaError as e:
            return e
        return None

    def _evict(self, st: RequestState) -> RequestOutput:
        """A failed request leaves: its slot's KV is dropped (it may be inconsistent), its final output."""
        slot = self.scheduler.slots[st.slot]
        slot.cache.clear()
        self.runner.seq_rm(slot.id, 0, -1)
        self.scheduler.release(st)
        return self._final(st)

    def _final(self, st: RequestState) -> RequestOutput:
        o = st.final_output()
        st.pending = None
        self._drop_sampler(st.id)
        self.metrics.request_finished(o)
        return o

    def _drop_sampler(self, request_id: str) -> None:
        s = self._samplers.pop(request_id, None)
        if s is not None:
            self.runner.free_sampler(s)

    def run_until_done(self, request_ids: Optional[set] = None) -> List[RequestOutput]:
        """Step until the given requests (default: all) finish; returns every output in order."""
        outs: List[RequestOutput] = []
        pending = set(request_ids) if request_ids is not None else None
        while self.has_work() and (pending is None or pending):
            for o in self.step():
                outs.append(o)
                if pending is not None and o.finished:
                    pending.discard(o.request_id)
        return outs

    def reset_cache(self) -> None:
        """Forget the cached tokens of every idle slot (and their KV), and the host-RAM prompt cache."""
        if self.scheduler.prompt_cache is not None:
            self.scheduler.prompt_cache.clear()
        for slot in self.scheduler.slots:
            if slot.free:
                self.runner.seq_rm(slot.id, -1, -1)
                slot.cache = []

    # ---- slot files (llama-server's POST /slots/{id}?action=save|restore|erase; engine thread) ----
    def _idle_slot(self, id_slot: int) -> Slot:
        slots = self.scheduler.slots
        if not 0 <= id_slot < len(slots):
            raise ValueError(f"id_slot {id_slot} out of range [0, {len(slots)})")
        if not slots[id_slot].free:
            raise PyllamaError(f"slot {id_slot} is busy")
        return slots[id_slot]

    def save_slot(self, id_slot: int, path: str) -> SlotSaved:
        """Write an idle slot's tokens and KV to a file. Raises ValueError (no such slot),
        PyllamaError (busy), StateError."""
        slot = self._idle_slot(id_slot)
        n = self.runner.save_seq_file(id_slot, path, slot.cache)
        return SlotSaved(id_slot, len(slot.cache), n)

    def restore_slot(self, id_slot: int, path: str) -> SlotRestored:
        """Replace an idle slot's tokens and KV with a file's (errors as save_slot). A failed restore
        leaves the slot empty: tokens and KV both (its KV is dropped first)."""
        slot = self._idle_slot(id_slot)
        slot.cache = []
        try:
            tokens, n_read = self.runner.load_seq_file(id_slot, path, self.n_ctx_slot)
        except BaseException:
            self.runner.seq_rm(id_slot, -1, -1)     # nothing half-loaded stays behind
            raise
        slot.cache = list(tokens)
        return SlotRestored(id_slot, len(slot.cache), n_read)

    def erase_slot(self, id_slot: int) -> SlotErased:
        """Forget an idle slot's tokens and KV (errors as save_slot)."""
        slot = self._idle_slot(id_slot)
        n = len(slot.cache)
        self.runner.seq_rm(id_slot, -1, -1)
        slot.cache = []
        return SlotErased(id_slot, n)

    # ---- introspection ----
    def slots(self) -> List[dict]:
        return self.scheduler.slots_info()

    def metrics_dict(self) -> Dict[str, Any]:
        m = self.metrics
        d = m.as_dict()
        d["requests_processing"] = self.scheduler.n_running
        d["requests_deferred"] = self.scheduler.n_waiting
        d["n_busy_slots_per_decode"] = m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0
        pc = self.scheduler.prompt_cache
        d["prompt_cache"] = pc.info() if pc is not None else None
        d["python_ms_per_step"] = 1e3 * m.t_step_python_total / m.n_decode_total if m.n_decode_total else 0.0
        return d
