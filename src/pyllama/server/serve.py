"""The command line server's serve loop: listening sockets, connection bounds, signals.

``serve(app, http, ssl_ctx)`` replaces ``web.run_app``. It listens with ``loop.create_server``
itself (one listener per ``--host`` address), with a protocol of its own around each of aiohttp's
``RequestHandler``s, so that the transport side has bounds aiohttp does not give:

- ``--max-connections``: a connection accepted past the cap gets a fixed 503 (``Retry-After: 1``)
  and is closed; it never reaches aiohttp.
- ``--timeout-headers``: a connection must deliver a complete request head within that many
  seconds of connecting, or of the end of its previous response; else it is closed. The timer is
  armed by the protocol and held off while a handler runs (``transport_middleware``, first in the
  app's chain, finds the protocol through ``request.transport.get_protocol()``).
- SIGTERM/SIGINT: graceful shutdown (stop listening, let in-flight requests finish for
  ``--shutdown-timeout`` seconds, then the app's cleanup: engine drain, model freed), and a
  watchdog that ends the process ``shutdown_timeout + 5`` s after the signal whatever it is doing
  (a worker thread stuck in a long C call cannot keep it alive). A second signal exits at once.

``TransportStats`` (``app[TRANSPORT]``) counts open and refused connections for /metrics.
"""
from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set

from aiohttp import web

from .config import HttpGroup
from .errors import error_body

logger = logging.getLogger("pyllama.server")

WATCHDOG_SLACK = 5.0            # s after the shutdown timeout before the watchdog ends the process
REJECT_LINGER = 1.0             # s a refused connection is held to read what the client sends


@dataclass
class TransportStats:
    """Connection counters (the serve loop updates them; /metrics reads them)."""

    open_connections: int = 0               # now open (accepted within the cap)
    http_rejected_connections: int = 0      # refused with a 503: over --max-connections
    http_header_timeouts: int = 0           # closed: no complete request head within --timeout-headers
    http_body_timeouts: int = 0             # answered 408: the body did not arrive within --timeout
    http_write_timeouts: int = 0            # aborted: the client did not read a response for --timeout s


TRANSPORT = web.AppKey("transport", TransportStats)


def _reject_response(cap: int) -> bytes:
    import json
    body = json.dumps(error_body(503, f"too many connections: this server holds at most {cap} open connections; "
                                      "retry later")).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Listener:
    """What the protocols of one serve loop share: the limits, the counters, the open protocols."""

    def __init__(self, server: web.Server, http: HttpGroup, stats: TransportStats, loop: asyncio.AbstractEventLoop):
        self.server = server
        self.cap = http.max_connections
        self.timeout_headers = float(http.timeout_headers)
        self.write_timeout = float(http.timeout) if http.timeout > 0 else float("inf")
        self.stats = stats
        self.loop = loop
        self.protocols: Set[asyncio.Protocol] = set()
        # made by the factory and not connected yet (accepted in one batch, or in the TLS handshake)
        self.pending: Dict["Connection", float] = {}
        self.pending_expiry = self.timeout_headers + 1.0        # the TLS handshake's timeout, and a margin
        self.reject_bytes = _reject_response(self.cap)
        self._last_reject_log = -1e9

    def __call__(self) -> asyncio.Protocol:
        """The protocol factory ``loop.create_server`` calls for each accepted connection."""
        if self.cap and self.stats.open_connections + len(self.pending) >= self.cap:
            self._expire_pending()
        if self.cap and self.stats.open_connections + len(self.pending) >= self.cap:
            self.stats.http_rejected_connections += 1
            now = time.monotonic()
            if now - self._last_reject_log > 10:
                self._last_reject_log = now
                logger.warning("refusing connections: %d open (--max-connections %d); %d refused so far",
                               self.stats.open_connections, self.cap, self.stats.http_rejected_connections)
            return _Rejected(self)
        conn = Connection(self.server(), self)
        if self.cap:
            self.pending[conn] = self.loop.time()
        return conn

    def _expire_pending(self) -> None:
        """Forget the connections whose TLS handshake failed (their protocol never hears of it)."""
        old = self.loop.time() - self.pending_expiry
        for conn in [c for c, t in self.pending.items() if t < old]:
            del self.pending[conn]

    def cancel_handlers(self) -> None:
        """The shutdown timeout is over: cancel the handlers still running (aiohttp would wait as
        long again for them after cancelling their requests' bodies)."""
        n = 0
        for p in list(self.protocols):
            for task in list(getattr(p, "handlers", ())):
                if not task.done():
                    task.cancel()
                    n += 1
        if n:
            logger.warning("shutdown timeout: cancelled %d request(s) still running", n)

    def close_all(self) -> None:
        for p in list(self.protocols):
            t = getattr(p, "transport", None)
            if t is not None and not t.is_closing():
                t.close()


class Connection(asyncio.Protocol):
    """aiohttp's RequestHandler, passed every callback, with the header timer around it."""

    def __init__(self, inner: asyncio.Protocol, listener: _Listener):
        self.inner = inner
        self.listener = listener
        self.transport: Optional[asyncio.Transport] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._active = 0                    # handlers running on this connection
        self._write_paused = False
        self._sending_since = 0.0
        self.handlers: Set["asyncio.Task[Any]"] = set()     # their tasks (cancelled past the shutdown timeout)

    # ---- the header timer
    def _arm(self) -> None:
        self._disarm()
        self._timer = self.listener.loop.call_later(self.listener.timeout_headers, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        t = self.transport
        if t is None or t.is_closing() or self._active:
            return
        if self._write_paused or t.get_write_buffer_size() or not t.is_reading():
            # the previous response is still being sent (a file: reading paused): no idling, unless
            # the client has not read it for --timeout s
            now = self.listener.loop.time()
            self._sending_since = self._sending_since or now
            if now - self._sending_since < self.listener.write_timeout:
                self._arm()
                return
            self.listener.stats.http_write_timeouts += 1
            logger.debug("aborting a connection: its client did not read the response for %.3g s",
                         self.listener.write_timeout)
            t.abort()                       # close() would wait for the unsent bytes
            return
        self.listener.stats.http_header_timeouts += 1
        logger.debug("closing a connection: no request head within %.3g s", self.listener.timeout_headers)
        t.close()

    def request_started(self, task: "Optional[asyncio.Task[Any]]") -> None:
        self._active += 1
        self._sending_since = 0.0
        self._disarm()
        if task is not None:
            self.handlers.add(task)

    def request_finished(self, task: "Optional[asyncio.Task[Any]]") -> None:
        self._active -= 1
        self.handlers.discard(task)     # type: ignore[arg-type]
        if self._active <= 0 and self.transport is not None and not self.transport.is_closing():
            self._arm()

    # ---- asyncio.Protocol, passed on
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.pending.pop(self, None)
        self.listener.protocols.add(self)
        self.listener.stats.open_connections += 1
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.inner.resume_writing()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        if self in self.listener.protocols:
            self.listener.protocols.discard(self)
            self.listener.stats.open_connections -= 1
        self.transport = None
        self.inner.connection_lost(exc)


class _Rejected(asyncio.Protocol):
    """A connection over the cap: the fixed 503, then closed once the client is done sending
    (or after REJECT_LINGER s), so that its request does not turn the close into a reset."""

    def __init__(self, listener: _Listener):
        self.listener = listener
        self.transport: Optional[asyncio.Transport] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.protocols.add(self)
        transport.write(self.listener.reject_bytes)  # type: ignore[attr-defined]
        if transport.can_write_eof():  # type: ignore[attr-defined]
            transport.write_eof()  # type: ignore[attr-defined]
        self._timer = self.listener.loop.call_later(REJECT_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> Optional[bool]:
        return False                        # the transport closes

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.listener.protocols.discard(self)
        self.transport = None


@web.middleware
async def transport_middleware(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Holds the connection's header timer off while a handler runs, and re-arms it after (the
    first middleware, so that it brackets all of the others). A no-op under other servers."""
    t = request.transport
    conn = t.get_protocol() if t is not None else None
    if not isinstance(conn, Connection):
        return await handler(request)
    task = asyncio.current_task()
    conn.request_started(task)
    try:
        return await handler(request)
    finally:
        conn.request_finished(task)


# ---------------------------------------------------------------- exit

class _Exit:
    """The shutdown's timing: when the first signal came, and the watchdog it started."""

    def __init__(self, shutdown_timeout: float):
        self.shutdown_timeout = shutdown_timeout
        self.signalled_at: Optional[float] = None

    def deadline(self) -> float:
        """When the grace period ends (monotonic): shutdown_timeout after the signal."""
        return (self.signalled_at or time.monotonic()) + self.shutdown_timeout

    def force(self, why: str) -> None:
        try:
            sys.stderr.write(f"pyllama: {why}; forcing the exit\n")
            sys.stderr.flush()
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)    # where the stuck threads are
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
        os._exit(1)

    def start_watchdog(self) -> None:
        delay = self.shutdown_timeout + WATCHDOG_SLACK

        def watch() -> None:
            time.sleep(delay)
            self.force(f"still running {delay:.3g} s after the shutdown signal")

        threading.Thread(target=watch, name="pyllama-shutdown-watchdog", daemon=True).start()
        try:    # the same from a C thread, should a thread hold the GIL and keep the one above from running
            faulthandler.dump_traceback_later(delay + 2, exit=True)
        except (ValueError, OSError, RuntimeError, AttributeError):
            pass

    def on_signal(self, signum: int, stop: asyncio.Event) -> None:
        name = signal.Signals(signum).name
        if self.signalled_at is not None:
            self.force(f"second {name}")
        self.signalled_at = time.monotonic()
        self.start_watchdog()
        logger.info("%s: shutting down (in-flight requests get %.3g s)", name, self.shutdown_timeout)
        stop.set()

    def leave(self, rc: int) -> int:
        """Return ``rc`` once the other threads have ended. The app's cleanup is over: what they
        still run was given up (a worker in a long C call, a model still loading), so after half a
        second exit with ``rc`` without them; the interpreter would wait for them at exit."""
        deadline = time.monotonic() + 0.5
        busy = [t for t in threading.enumerate()
                if t is not threading.current_thread() and not t.daemon and t.is_alive()]
        for t in busy:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = [t for t in busy if t.is_alive()]
        if not busy:
            return rc
        sys.stderr.write(f"pyllama: not waiting for {len(busy)} busy thread(s) "
                         f"({', '.join(t.name for t in busy)})\n")
        sys.stderr.flush()
        sys.stdout.flush()
        logging.shutdown()
        os._exit(rc)


# ---------------------------------------------------------------- the loop

def _raise_fd_limit(want: int) -> None:
    """Raise the soft open-file limit towards the hard one, so that the connection cap (and not
    EMFILE) is what bounds the connections."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < want:
            new = want if hard == resource.RLIM_INFINITY else min(hard, want)
            if new > soft:
                resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    except (ImportError, ValueError, OSError):
        pass


async def _serve(app: web.Application, http: HttpGroup, ssl_ctx: Optional[ssl.SSLContext], ex: _Exit) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ex.on_signal, sig, stop)
    if TRANSPORT not in app:
        app[TRANSPORT] = TransportStats()
    # the handlers still running at the end of the grace period are cancelled by listener.cancel_handlers;
    # aiohttp's own wait is the backstop (a second later, so that the two never race)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=float(http.shutdown_timeout) + 1.0,
                           keepalive_timeout=float(http.timeout), handler_cancellation=True, access_log=None)
    await runner.setup()
    assert runner.server is not None
    listener = _Listener(runner.server, http, app[TRANSPORT], loop)
    servers: List[asyncio.AbstractServer] = []
    rc = 0
    try:
        hosts = [h.strip() for h in http.host.split(",") if h.strip()]
        try:
            for host in hosts:
                servers.append(await loop.create_server(
                    listener, host, http.port, ssl=ssl_ctx, backlog=128,
                    ssl_handshake_timeout=http.timeout_headers if ssl_ctx else None))
        except OSError as e:
            print(f"error: cannot listen on {http.host}:{http.port}: {e}", file=sys.stderr, flush=True)
            rc = 1
        else:
            scheme = "https" if ssl_ctx else "http"
            print(f"pyllama: listening on {scheme}://{http.host}:{http.port}{http.api_prefix}/", file=sys.stderr,
                  flush=True)
            await stop.wait()
    finally:
        for s in servers:
            s.close()                       # no new connections
        overdue = loop.call_later(max(0.0, ex.deadline() - time.monotonic()), listener.cancel_handlers)
        try:
            # in-flight requests finish (for shutdown_timeout s), then the app's cleanup: engine, model
            # (create_app's cleanup leaves a model a worker still uses alone)
            await runner.cleanup()
        finally:
            overdue.cancel()
        listener.close_all()
        for s in servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 1.0)
            except (asyncio.TimeoutError, OSError):
                pass
    return rc


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in tasks:
        t.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def serve(app: web.Application, http: HttpGroup, ssl_ctx: Optional[ssl.SSLContext] = None,
          exit_code: Callable[[int], int] = lambda rc: rc) -> int:
    """Serve ``app`` until SIGTERM or SIGINT; the exit code (``exit_code(rc)``, rc 0 after a clean
    shutdown, 1 when it could not listen). The process does not outlive the shutdown's grace period."""
    _raise_fd_limit(http.max_connections + 256 if http.max_connections else 65536)
    ex = _Exit(float(http.shutdown_timeout))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        rc = loop.run_until_complete(_serve(app, http, ssl_ctx, ex))
        _cancel_all(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        asyncio.set_event_loop(None)
        loop.close()                        # the default executor: shut down without waiting
    return ex.leave(exit_code(rc))
