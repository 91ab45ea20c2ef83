"""Error shaping, API keys, CORS and request logging."""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from typing import Awaitable, Callable

from aiohttp import web

from .errors import error_response, handled
from .state import CONFIG, UI_FILES

logger = logging.getLogger("pyllama.server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = {"/health", "/v1/health"}       # as llama-server: these, and the web UI's own files


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        msg = {404: "File Not Found", 405: "Method Not Allowed", 413: "request body too large"}.get(e.status, e.reason)
        return error_response(e.status, msg)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - never crash the server on one request
        err = handled(e)
        return error_response(err.status, err.message, err.type, **err.extra)


def _strip_prefix(request: web.Request) -> str:
    prefix = request.app[CONFIG].http.api_prefix
    path = request.path
    return path[len(prefix):] or "/" if prefix and path.startswith(prefix) else path


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[CONFIG].http.api_keys
    if not keys or request.method == "OPTIONS":
        return await handler(request)
    path = _strip_prefix(request)
    if path in PUBLIC_PATHS or (request.method in ("GET", "HEAD") and path in request.app[UI_FILES]):
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    ok = False
    for k in keys:  # constant time for each key; check all of them
        ok |= hmac.compare_digest(token.encode(), k.encode())
    if not ok:
        return error_response(401, "Invalid API Key")
    return await handler(request)


def _allowed_origin(request: web.Request) -> str:
    cfg = request.app[CONFIG].http
    origin = request.headers.get("Origin", "")
    allowed = [o.strip() for o in cfg.cors_origins.split(",") if o.strip()]
    if "*" in allowed:
        return origin or "*"
    if "localhost" in allowed and origin:
        host = origin.split("://", 1)[-1].split(":", 1)[0]
        if host in ("localhost", "127.0.0.1", "[::1]"):
            return origin
    return origin if origin in allowed else ""


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        origin = _allowed_origin(request)
        if not origin:
            return web.Response(status=403)
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get("Access-Control-Request-Headers", "*"),
            "Access-Control-Max-Age": "86400", "Vary": "Origin"})
    return await handler(request)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers on every response, streams included."""
    if "Origin" not in request.headers or request.method == "OPTIONS":
        return
    origin = _allowed_origin(request)
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Vary"] = "Origin"


@web.middleware
async def log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        if request.path not in ("/health", "/v1/health"):
            logger.info("request", extra={"http": {"method": request.method, "path": request.path, "status": status,
                                                   "ms": round((time.perf_counter() - t0) * 1e3, 2),
                                                   "remote": request.remote}})
