"""Running engine requests for a handler: build them on the worker pool (the front end), submit
them before a response starts, and read several streams (n > 1, several prompts) as one."""
from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Callable, List, Sequence, Tuple

from ..engine import AsyncEngine, Request, RequestOutput, RequestStream, fold
from ..errors import GrammarError
from ..frontend import Prepared
from .errors import api_error
from .state import ServerState

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
        raise GrammarError(f"invalid grammar: {e}") from None
    except BaseException:
        for st in streams:
            st.close()
        raise
    return streams


async def start(st: ServerState, build: Callable[[], Prepared]) -> Tuple[Prepared, List[RequestStream]]:
    """``build()`` (a front end call) and the submission, on the worker pool: tokenizing,
    rendering and compiling grammars and samplers never run on the event loop."""
    engine = st.engine
    assert engine is not None

    def work() -> Tuple[Prepared, List[RequestStream]]:
        prepared = build()
        return prepared, submit_all(engine, prepared.requests)

    return await st.workers.run(work)


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
    """Read streams to the end; one folded output each, in order. A failed one raises its error."""
    try:
        outs = await asyncio.gather(*(fold(st) for st in streams))
    finally:
        for st in streams:
            st.close()
    for o in outs:
        log_final(o)
    for o in outs:
        if o.error is not None:
            raise api_error(o.error)
    return list(outs)
