"""Server-sent events: one writer per streaming response, with pings while silent."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

from aiohttp import web


class SSEWriter:
    def __init__(self, request: web.Request, ping_interval: float = 30.0):
        self.request = request
        self.ping_interval = ping_interval
        self.response = web.StreamResponse(status=200, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "Connection": "keep-alive",
            "X-Accel-Buffering": "no"})
        self._ping_task: Optional[asyncio.Task] = None
        self._last = 0.0

    async def __aenter__(self) -> "SSEWriter":
        await self.response.prepare(self.request)
        self._last = asyncio.get_running_loop().time()
        if self.ping_interval and self.ping_interval > 0:
            self._ping_task = asyncio.create_task(self._pings())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._ping_task is not None:
            self._ping_task.cancel()
        try:
            await self.response.write_eof()
        except (ConnectionError, RuntimeError):
            pass

    async def _pings(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(self.ping_interval)
                if loop.time() - self._last >= self.ping_interval * 0.9:
                    await self._write(b": ping\n\n")
        except (asyncio.CancelledError, ConnectionError, RuntimeError):
            pass

    async def _write(self, data: bytes) -> None:
        self._last = asyncio.get_running_loop().time()
        await self.response.write(data)

    async def send(self, obj: Any) -> None:
        """One ``data: {json}`` event. Raises ConnectionResetError when the client went away."""
        await self._write(b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
                          + b"\n\n")

    async def send_event(self, event: str, obj: Any) -> None:
        """One typed event: ``event: {name}`` then ``data: {json}`` (the Responses and Anthropic APIs)."""
        await self._write(b"event: " + event.encode() + b"\ndata: "
                          + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n")

    async def done(self) -> None:
        await self._write(b"data: [DONE]\n\n")
