"""AsyncEngine: the engine thread and the asyncio side.

One thread owns the llama Context and runs EngineCore.step() while there is work. Callers talk
to it through one thread-safe queue of typed messages (Add, Abort, Call, Stop); each request gets
its outputs through its own asyncio.Queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from .. import _core
from ..threads import start_thread
from ..errors import PyllamaError, QueueFullError
from ..params import ContextParams
from .core import EngineCore, SlotErased, SlotRestored, SlotSaved
from .request import Request, RequestKind, RequestOutput
from .runner import LlamaRunner

logger = logging.getLogger("pyllama.engine")


# ---- the engine thread's inbox ----
@dataclass(frozen=True)
class Add:
    """Queue a request; ``sampler``: built for it in the caller's thread (None: not a GENERATE)."""
    request: Request
    sampler: Any = None


@dataclass(frozen=True)
class Abort:
    request_id: str


@dataclass(frozen=True)
class Call:
    """Run ``fn(core)`` between two steps; its result or exception goes to ``future``."""
    fn: Callable[[EngineCore], Any]
    future: "concurrent.futures.Future[Any]"


@dataclass(frozen=True)
class Stop:
    """Stop the thread once in-flight work is done (``drain``) or aborted; a second Stop without
    drain turns a draining stop into an aborting one."""
    drain: bool


Message = Union[Add, Abort, Call, Stop]


@dataclass(frozen=True)
class EngineParams:
    """The engine's knobs, one frozen group (the server's config holds one; its flags spell
    llama-server's defaults where they differ: -np auto, -cram 8192)."""

    n_parallel: int = 4
    kv_unified: bool = True
    context_shift: bool = False
    n_keep: int = 0                             # tokens kept at the start on a context shift
    slot_prompt_similarity: float = 0.1
    cont_batching: bool = True
    cache_ram_mib: int = 0                      # host-RAM prompt cache: -1 no limit, 0 off
    cache_idle_slots: bool = True               # save idle slots to it on a new task (needs cache_ram_mib)
    max_queued: int = 4096                      # requests waiting for a slot, beyond: QueueFullError (0: no bound)

    def __post_init__(self) -> None:
        if self.n_parallel < 1:
            raise ValueError(f"n_parallel must be >= 1, got {self.n_parallel}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {self.max_queued}")


class EngineStoppedError(PyllamaError):
    """The engine is not running."""


class AsyncEngine:
    """Slots and continuous batching over one model, usable from asyncio.

    >>> engine = AsyncEngine(model, ContextParams(n_ctx=4096), n_parallel=4)
    >>> engine.start()
    >>> async for out in engine.generate(Request(prompt=tokens, max_tokens=32)): ...
    >>> await engine.stop()

    ``kv_unified`` (the default, as llama-server's when the slot count is automatic) lets every slot
    use the whole context; otherwise each slot gets ``n_ctx / n_parallel``.

    ``cache_ram_mib`` enables llama-server's host-RAM prompt cache (--cache-ram; 0 off, -1 no size
    limit): a slot's tokens and KV state are kept in memory when the slot is taken over, and
    loaded back for a later prompt they serve. ``cache_idle_slots`` (with it) saves idle slots
    there whenever a request starts, clearing them when the KV is unified.
    """

    def __init__(self, model: "_core.Model", context_params: Optional[ContextParams] = None,
                 params: Optional[EngineParams] = None, **knobs: Any):
        """``params``: the engine's knobs (EngineParams); ``knobs``: EngineParams fields to change,
        e.g. ``AsyncEngine(model, cp, n_parallel=2, cache_ram_mib=256)``."""
        params = replace(params or EngineParams(), **knobs)
        self.params = params
        self.context_params = replace(context_params or ContextParams(), n_seq_max=params.n_parallel,
                                      kv_unified=params.kv_unified)
        self.model = model
        self.n_parallel = params.n_parallel
        self._core_kw = {k: v for k, v in asdict(params).items()
                         if k not in ("n_parallel", "kv_unified", "max_queued")}
        self.n_rejected = 0         # requests refused because the queue was full
        self._ctx: Optional[_core.Context] = None
        self._core: Optional[EngineCore] = None
        self._thread: Optional[threading.Thread] = None
        self._inbox: "queue.SimpleQueue[Message]" = queue.SimpleQueue()
        self._queues: Dict[str, asyncio.Queue] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._running = False

    # ---- lifecycle ----
    @property
    def running(self) -> bool:
        return self._running

    @property
    def core(self) -> EngineCore:
        """The EngineCore (engine thread only; kept for tests: callers use the methods below)."""
        if self._core is None:
            raise EngineStoppedError("the engine is not started")
        return self._core

    @property
    def n_ctx_slot(self) -> int:
        """Context positions per slot (raises EngineStoppedError before start())."""
        return self.core.n_ctx_slot

    @property
    def can_shift(self) -> bool:
        """Whether the context's memory can shift positions: without it cache reuse (and context
        shift) are off. Raises EngineStoppedError before start()."""
        return self.core.can_shift

    @property
    def fatal_error(self) -> Optional[str]:
        """The last decode's fatal llama.cpp abort (e.g. a lost RPC worker); None when the last
        decode went well, or when the engine is not running."""
        core = self._core
        return core.fatal_error if core is not None else None

    def start(self, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        """Create the context and the engine thread. Call from the event loop's thread (or pass it)."""
        if self._running:
            return
        self._loop = loop or asyncio.get_event_loop()
        ctx = _core.Context(self.model, self.context_params)
        n_ctx = ctx.n_ctx
        n_ctx_slot = n_ctx if self.context_params.kv_unified else ctx.n_ctx_seq
        self._ctx = ctx
        self._core = EngineCore(LlamaRunner(self.model, ctx, self.n_parallel, n_ctx_slot), **self._core_kw)
        self._inbox = queue.SimpleQueue()
        self._running = True
        # a deep stack: grammars are parsed and advanced here, recursively (pyllama.threads)
        self._thread = start_thread(self._run, "pyllama-engine")

    async def stop(self, drain: bool = False, timeout: Optional[float] = None) -> None:
        """Stop the thread: finish in-flight work first when ``drain``, else abort it; free the context."""
        if not self._running or self._thread is None:
            return
        self._inbox.put(Stop(drain))
        thread = self._thread
        await asyncio.get_running_loop().run_in_executor(None, thread.join, timeout)
        if thread.is_alive():
            logger.warning("engine thread did not stop within %s s; aborting everything", timeout)
            self._inbox.put(Stop(False))
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
        self._finalize()

    def stop_sync(self, drain: bool = False) -> None:
        if not self._running or self._thread is None:
            return
        self._inbox.put(Stop(drain))
        self._thread.join()
        self._finalize()

    def _finalize(self) -> None:
        self._running = False
        self._thread = None
        self._core = None
        if self._ctx is not None:
            self._ctx.close()
            self._ctx = None

    # ---- the engine thread ----
    def _run(self) -> None:
        core = self._core
        assert core is not None
        stopping = False
        drain = False
        while True:
            block = not core.has_work() and not stopping
            try:
                msg = self._inbox.get(block=block)
            except queue.Empty:
                msg = None
            while msg is not None:
                if isinstance(msg, Add):
                    try:
                        core.add(msg.request, msg.sampler)
                    except BaseException as e:  # noqa: BLE001 - the caller gets it
                        core.free_sampler(msg.sampler)
                        self._send([RequestOutput(msg.request.id, finished=True, finish_reason="error", error=e)])
                elif isinstance(msg, Abort):
                    core.abort(msg.request_id)
                elif isinstance(msg, Call):
                    if msg.future.set_running_or_notify_cancel():
                        try:
                            msg.future.set_result(msg.fn(core))
                        except BaseException as e:  # noqa: BLE001
                            msg.future.set_exception(e)
                elif stopping and not msg.drain:    # Stop: a second one, aborting
                    drain = False
                else:                                  # Stop
                    stopping, drain = True, msg.drain
                try:
                    msg = self._inbox.get_nowait()
                except queue.Empty:
                    msg = None
            if stopping:
                if not drain:
                    for st in list(core.scheduler.by_id.values()):
                        core.abort(st.id)
                if not core.has_work():
                    break
            if core.has_work():
                try:
                    outs = core.step()
                except BaseException as e:  # noqa: BLE001 - keep serving the next requests
                    # the core fails one request for what is its own (sampling, embedding...): what
                    # arrives here broke the shared batch or KV, so every request in flight fails
                    logger.exception("engine step failed")
                    outs = self._fail_all(core, e)
                if outs:
                    self._send(outs)
        # anything still queued at exit gets a final answer
        self._send([RequestOutput(rid, finished=True, finish_reason="abort") for rid in list(self._queues)])

    def _fail_all(self, core: EngineCore, error: BaseException) -> List[RequestOutput]:
        outs = []
        for st in list(core.scheduler.by_id.values()):
            core.scheduler.fail(st, error)
        outs.extend(core.step())
        return outs

    def _send(self, outs: List[RequestOutput]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver, outs)
        except RuntimeError:
            pass  # the loop is closing

    def _deliver(self, outs: List[RequestOutput]) -> None:
        for o in outs:
            q = self._queues.get(o.request_id)
            if q is not None:
                q.put_nowait(o)

    # ---- the asyncio side ----
    def _check_running(self) -> EngineCore:
        if not self._running or self._core is None:
            raise EngineStoppedError("the engine is not running")
        return self._core

    def generate(self, request: Request) -> "RequestStream":
        """Submit a request now and return the stream of its outputs (``async for``).

        Everything that can be checked up front is checked here, before the first output: a prompt
        over the context (ContextLimitError), a grammar that does not compile (GrammarError), a bad
        id_slot. A request that fails later ends with an output whose ``error`` is set and
        finish_reason "error". Closing the stream, cancelling its reader or dropping it aborts the
        request.

        Safe to call from any thread (the server submits from its worker pool, so that building a
        large grammar or DRY sampler never runs on the event loop); the stream is read on the
        engine's loop.
        """
        core = self._check_running()
        limit = self.params.max_queued
        if limit and len(self._queues) >= self.n_parallel + limit:    # in flight: slots + waiting
            self.n_rejected += 1
            raise QueueFullError(f"the server is busy: {limit} requests are waiting for a slot; retry later")
        core.validate(request)
        sampler = core.new_sampler(request)
        q: asyncio.Queue = asyncio.Queue()
        self._queues[request.id] = q
        self._inbox.put(Add(request, sampler))
        return RequestStream(self, request.id, q)


    async def complete(self, request: Request) -> RequestOutput:
        """Run a request to the end; returns one output with all text, tokens and logprobs."""
        return await fold(self.generate(request))

    async def embed(self, inputs: Sequence[Sequence[int]], *, pooled: bool = True,
                    normalize: int = 2) -> List[Any]:
        """Embeddings of token lists, batched across the engine's slots."""
        reqs = [Request(prompt=tuple(toks), kind=RequestKind.EMBED, pooled=pooled, embd_normalize=normalize,
                        cache_prompt=False) for toks in inputs]
        streams = [self.generate(r) for r in reqs]
        outs = await asyncio.gather(*(fold(st) for st in streams))
        for o in outs:
            if o.error is not None:
                raise o.error
        return [o.embedding for o in outs]

    def abort(self, request_id: str) -> None:
        """Cancel a request; thread safe, idempotent."""
        if self._running:
            self._inbox.put(Abort(request_id))

    async def reasoning_end(self, request_id: str) -> bool:
        """End a running request's reasoning block now (see EngineCore.reasoning_end)."""
        return await self.call(lambda core: core.reasoning_end(request_id))

    async def call(self, fn: Callable[[EngineCore], Any]) -> Any:
        """Run ``fn(core)`` on the engine thread between two steps (the methods below use it)."""
        self._check_running()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put(Call(fn, fut))
        return await asyncio.wrap_future(fut)

    async def set_loras(self, adapters: Sequence["_core.LoraAdapter"], scales: Sequence[float]) -> None:
        """The adapters requests may scale (Request.lora: one scale per adapter, in this order) and
        the default scales of requests without lora. Raises ValueError on a length mismatch."""
        await self.call(lambda core: core.set_loras(adapters, scales))

    async def set_lora_scales(self, scales: Sequence[float]) -> None:
        """New default (global) scales, one per adapter: for requests submitted from now on."""
        await self.call(lambda core: core.set_lora_scales(scales))

    async def slots(self) -> List[dict]:
        return await self.call(lambda core: core.slots())

    async def metrics(self) -> Dict[str, Any]:
        m = await self.call(lambda core: core.metrics_dict())
        m["requests_rejected_total"] = self.n_rejected
        return m

    async def save_slot(self, id_slot: int, path: str) -> SlotSaved:
        """Write an idle slot's tokens and KV to ``path``. Raises ValueError (no such slot),
        PyllamaError (busy), StateError."""
        return await self.call(lambda core: core.save_slot(id_slot, path))

    async def restore_slot(self, id_slot: int, path: str) -> SlotRestored:
        """Load a save_slot file into an idle slot (errors as save_slot; on failure the slot is empty)."""
        return await self.call(lambda core: core.restore_slot(id_slot, path))

    async def erase_slot(self, id_slot: int) -> SlotErased:
        """Forget an idle slot's tokens and KV (errors as save_slot)."""
        return await self.call(lambda core: core.erase_slot(id_slot))


class RequestStream:
    """The outputs of one submitted request, in order; the last has ``finished`` set.

    A request that fails before producing anything raises its error from the iteration.
    """

    def __init__(self, engine: AsyncEngine, request_id: str, queue: asyncio.Queue):
        self.engine = engine
        self.request_id = request_id
        self._queue = queue
        self._done = False
        self._produced = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            out: RequestOutput = await self._queue.get()
        except BaseException:       # the reader was cancelled (a client went away): abort
            self.close()
            raise
        if out.finished:
            self._done = True
            self.engine._queues.pop(self.request_id, None)
            if out.error is not None and not self._produced and not out.token_ids and out.embedding is None:
                raise out.error
        self._produced = True
        return out

    def close(self) -> None:
        """Abort the request unless it finished. Idempotent."""
        if not self._done:
            self._done = True
            self.engine._queues.pop(self.request_id, None)
            self.engine.abort(self.request_id)

    async def aclose(self) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


async def fold(stream: "RequestStream") -> RequestOutput:
    """Read a stream to the end: one output with all text, tokens and logprobs and the final fields."""
    total = RequestOutput(stream.request_id)
    async for o in stream:
        total.text += o.text
        total.token_ids.extend(o.token_ids)
        total.logprobs.extend(o.logprobs)
        if o.finished:
            for k in ("finished", "finish_reason", "stop_word", "error", "usage", "timings", "embedding", "id_slot"):
                setattr(total, k, getattr(o, k))
    return total

