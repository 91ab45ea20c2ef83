"""EngineCore: one step = schedule, one llama_decode for every slot, sample, emit deltas.

The core is generic over a *runner* (the only part that calls llama.cpp), so the whole loop is
tested with a fake runner. ``LlamaRunner`` is the real one. Only one thread may call step().
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Protocol, Sequence

from ..errors import DecodeError, KVCacheFullError, PyllamaError
from .request import Request, RequestKind, RequestOutput, RequestState, RequestStatus, TokenLogprob
from .scheduler import BatchItem, MemOp, Scheduler, SchedulerConfig, SchedulerOutput


class Runner(Protocol):
    """What the engine needs from a model + context."""

    n_slots: int
    n_ctx_slot: int
    n_batch: int
    n_ubatch: int

    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def new_sampler(self, request: Request) -> Any: ...
    def free_sampler(self, sampler: Any) -> None: ...
    def apply(self, op: MemOp) -> None: ...
    def decode(self, items: Sequence[BatchItem]) -> List[int]: ...
    def sample(self, sampler: Any, row: int) -> int: ...
    def reasoning_end(self, sampler: Any) -> bool: ...
    def logprob(self, row: int, token: int, n_top: int) -> TokenLogprob: ...
    def post_sampling_probs(self, sampler: Any, token: int, n_top: int) -> TokenLogprob: ...
    def embedding(self, item: BatchItem, row: int, pooled: bool) -> Any: ...


@dataclass
class EngineMetrics:
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


class EngineCore:
    def __init__(self, runner: Runner, *, context_shift: bool = False, n_keep: int = 0,
                 slot_prompt_similarity: float = 0.1, cont_batching: bool = True,
                 cache_ram_mib: int = 0, cache_ram_tokens: Optional[int] = None, cache_idle_slots: bool = True):
        """``cache_ram_mib``: the host-RAM prompt cache (llama-server's --cache-ram; 0 off, -1 no
        size limit); its token limit ``cache_ram_tokens`` defaults to the context size.
        ``cache_idle_slots`` (needs the cache) saves idle slots to it whenever a request starts."""
        self.runner = runner
        kv_unified = getattr(runner, "kv_unified", True)
        if cache_ram_tokens is None:
            cache_ram_tokens = runner.n_ctx_slot if kv_unified else runner.n_ctx_slot * runner.n_slots
        self.scheduler = Scheduler(SchedulerConfig(
            n_slots=runner.n_slots, n_ctx_slot=runner.n_ctx_slot, n_batch=runner.n_batch,
            n_ubatch=runner.n_ubatch, context_shift=context_shift, n_keep=n_keep,
            slot_prompt_similarity=slot_prompt_similarity, kv_unified=kv_unified,
            cont_batching=cont_batching, cache_ram_mib=cache_ram_mib, cache_ram_tokens=cache_ram_tokens,
            cache_idle_slots=cache_idle_slots and cache_ram_mib != 0,
            can_shift=bool(getattr(runner, "can_shift", True))))
        self.metrics = EngineMetrics()
        self._samplers: Dict[str, Any] = {}
        # set when llama.cpp aborted inside a decode (e.g. a lost RPC worker); cleared by the next good one
        self.fatal_error: Optional[str] = None

    # ---- intake (engine thread) ----
    def add(self, request: Request, sampler: Any = None) -> RequestState:
        """Queue a request (validated here: raises ContextLimitError, ValueError...).

        ``sampler``: one already built for it (AsyncEngine builds it in the caller's thread)."""
        self.validate(request)
        if request.lora is None and getattr(self.runner, "loras", None):
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
            n = len(getattr(self.runner, "loras", ()))
            if len(request.lora) != n:
                raise ValueError(f"the request has {len(request.lora)} LoRA scales, the engine has {n} adapters")

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

    # ---- the step ----
    def step(self) -> List[RequestOutput]:
        t0 = time.perf_counter()
        sched = self.scheduler
        out = sched.schedule()
        emitted: List[RequestOutput] = []
        for st in out.finished:
            emitted.append(self._final(st))
        if out.mem_ops:
            emitted += self._apply_mem_ops(out)
        if not out.items:
            self.metrics.t_step_python_total += time.perf_counter() - t0
            return emitted
        t1 = time.perf_counter()
        try:
            rows = self.runner.decode(out.items)
        except KVCacheFullError:
            # shrink the next batch; a lone token that cannot fit fails its request only
            t2 = time.perf_counter()
            emitted += [self._evict(st) for st in sched.on_kv_full(out)]
            self.metrics.t_decode_total += t2 - t1
            self.metrics.t_step_python_total += (t1 - t0) + (time.perf_counter() - t2)
            return emitted
        except DecodeError as e:
            # a failed batch: the requests in it fail, the engine goes on
            if e.code <= -100:
                self.fatal_error = str(e)
            for item in out.items:
                sched.fail(item.state, e)
                emitted.append(self._evict(item.state))
            return emitted
        t2 = time.perf_counter()
        self.fatal_error = None
        m = self.metrics
        m.n_decode_total += 1
        m.n_busy_slots_total += len(out.items)
        m.t_decode_total += t2 - t1
        sched.on_decoded(out)
        now = time.perf_counter()
        for item, row in zip(out.items, rows):
            st = item.state
            if not item.logits or st.status.finished:
                continue
            req = st.request
            if req.kind is RequestKind.EMBED:
                try:
                    st.out().embedding = self.runner.embedding(item, row, req.pooled)
                    st.finish(RequestStatus.FINISHED_STOPPED)
                except PyllamaError as e:
                    st.finish(RequestStatus.FINISHED_ERROR, e)
                continue
            if not st.t_prompt_done:
                st.t_prompt_done = now
                if req.max_tokens == 0:     # evaluate the prompt into the cache, generate nothing
                    st.finish(RequestStatus.FINISHED_LENGTH)
                    continue
            try:
                smp = self._samplers[req.id]
                tok = self.runner.sample(smp, row)
                lp = None
                if req.logprobs or req.n_probs:
                    lp = (self.runner.post_sampling_probs(smp, tok, req.n_probs) if req.post_sampling_probs
                          else self.runner.logprob(row, tok, req.n_probs))
            except PyllamaError as e:
                st.finish(RequestStatus.FINISHED_ERROR, e)
                continue
            st.add_token(tok, lp)
        for item in out.items:
            m.n_tokens_max = max(m.n_tokens_max, len(item.slot.cache))
            st = item.state
            if st.status.finished:
                if st.id in sched.by_id:
                    sched.release(st)
                    emitted.append(self._final(st))
            elif st.pending is not None:
                emitted.append(st.take_output())
        m.t_step_python_total += (t1 - t0) + (time.perf_counter() - t2)
        return emitted

    def _apply_mem_ops(self, out: SchedulerOutput) -> List[RequestOutput]:
        """Run the step's memory ops in order. Prompt-cache saves that fail are dropped; a failed
        load fails its request (its slot is cleared). Then the cache enforces its limits."""
        emitted: List[RequestOutput] = []
        cache_ops = False
        failed = set()
        for op in out.mem_ops:
            if op.op == "save" or op.op == "load":
                cache_ops = True
                if op.seq in failed:
                    continue
                try:
                    self.runner.apply(op)
                except (MemoryError, PyllamaError) as e:
                    if op.op == "save":     # the entry is dropped at commit
                        op.entry.data = None    # type: ignore[union-attr]
                        pc = self.scheduler.prompt_cache
                        if isinstance(e, MemoryError) and pc is not None:
                            # as llama-server on bad_alloc: lower the limit to 40% of the use
                            pc.limit_size = max(1, int(0.4 * pc.size()))
                        continue
                    if isinstance(e, MemoryError):
                        raise
                    failed.add(op.seq)
                    st = self.scheduler.slots[op.seq].state
                    if st is not None:
                        self.scheduler.fail(st, e)
                        emitted.append(self._evict(st))
            elif op.seq not in failed:
                self.runner.apply(op)
        if failed:
            out.items = [it for it in out.items if it.slot.id not in failed]
        if cache_ops and self.scheduler.prompt_cache is not None:
            self.scheduler.prompt_cache.commit()
        return emitted

    def _evict(self, st: RequestState) -> RequestOutput:
        """A failed request leaves: its slot's KV is dropped (it may be inconsistent), its final output."""
        slot = self.scheduler.slots[st.slot]
        slot.cache.clear()
        self.runner.apply(MemOp("rm", slot.id, 0, -1))
        self.scheduler.release(st)
        return self._final(st)

    def _final(self, st: RequestState) -> RequestOutput:
        o = st.final_output()
        st.pending = None
        self._drop_sampler(st.id)
        m = self.metrics
        if st.error is not None:
            m.n_requests_failed += 1
        if o.timings:
            m.n_prompt_tokens_processed_total += o.timings["prompt_n"]
            m.t_prompt_processing_total += o.timings["prompt_ms"]
            m.n_tokens_predicted_total += o.timings["predicted_n"]
            m.t_tokens_generation_total += o.timings["predicted_ms"]
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
                self.runner.apply(MemOp("rm", slot.id, -1, -1))
                slot.cache = []

    # ---- introspection ----
    def slots(self) -> List[dict]:
        return self.scheduler.slots_info()

    def metrics_dict(self) -> Dict[str, Any]:
        m = self.metrics
        d = dict(m.__dict__)
        d["requests_processing"] = self.scheduler.n_running
        d["requests_deferred"] = self.scheduler.n_waiting
        d["n_busy_slots_per_decode"] = m.n_busy_slots_total / m.n_decode_total if m.n_decode_total else 0.0
        pc = self.scheduler.prompt_cache
        d["prompt_cache"] = pc.info() if pc is not None else None
        d["python_ms_per_step"] = 1e3 * m.t_step_python_total / m.n_decode_total if m.n_decode_total else 0.0
        return d
