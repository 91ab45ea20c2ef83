"""Helpers every handler uses: read the body, then decode and validate it on the worker pool."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Callable, Type, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from .errors import APIError
from .serve import TRANSPORT
from .state import CONFIG, STATE

M = TypeVar("M", bound=BaseModel)


async def read_body(request: web.Request) -> bytes:
    """The whole body, read within ``--timeout`` seconds (else a 408)."""
    timeout = request.app[CONFIG].http.timeout
    try:
        raw = await asyncio.wait_for(request.read(), timeout if timeout > 0 else None)
    except web.HTTPRequestEntityTooLarge:
        raise APIError(413, "request body too large") from None
    except asyncio.TimeoutError:
        stats = request.app.get(TRANSPORT)
        if stats is not None:
            stats.http_body_timeouts += 1
        raise APIError(408, f"the request body did not arrive within {timeout} s (--timeout)") from None
    if not raw:
        raise APIError(400, "the request body is empty; expected JSON")
    return raw


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"invalid JSON: {e}") from None
    except RecursionError:
        raise APIError(400, "invalid JSON: nested too deeply") from None


def validate(model: Type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise APIError(400, f"invalid request: {errs}") from None
    except RecursionError:
        raise APIError(400, "invalid request: nested too deeply") from None


def _decode_validate(model: Type[M], raw: bytes) -> M:
    return validate(model, decode_json(raw))


async def read_json(request: web.Request) -> Any:
    """The body as JSON, decoded on the worker pool."""
    raw = await read_body(request)
    return await request.app[STATE].workers.run(decode_json, raw)


async def parse(request: web.Request, model: Type[M]) -> M:
    """The body validated as ``model``, decoded and validated on the worker pool."""
    raw = await read_body(request)
    return await request.app[STATE].workers.run(_decode_validate, model, raw)


async def json_response(request: web.Request, build: Callable[[], Any]) -> web.Response:
    """A JSON answer built and serialized on the worker pool: ``build()`` returns the object (or
    its encoded body, when it writes large ones itself)."""
    def work() -> bytes:
        obj = build()
        return obj if isinstance(obj, bytes) else json.dumps(obj).encode()

    body = await request.app[STATE].workers.run(work)
    return web.Response(body=body, content_type="application/json", charset="utf-8")
