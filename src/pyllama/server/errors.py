"""Errors: the one table from exception to HTTP status and error type, and the OpenAI-shaped
body (llama-server's ``{"error": {"code", "message", "type"}}``) every API renders from it.
Anthropic's body is the same with ``"type": "error"`` on top."""
from __future__ import annotations

import json
import logging
from typing import Any, Dict, Optional, Tuple, Type

from aiohttp import web

from ..engine import EngineStoppedError
from ..errors import (ChatTemplateError, ContextLimitError, GrammarError, InvalidRequestError, KVCacheFullError,
                      NotSupportedError, PyllamaError, QueueFullError, StateError, TokenizeError)

logger = logging.getLogger("pyllama.server")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
         413: "invalid_request_error", 500: "server_error", 501: "not_supported_error", 503: "unavailable_error"}


class APIError(Exception):
    """An HTTP error a handler raises on purpose; the error middleware renders it."""

    def __init__(self, status: int, message: str, type_: Optional[str] = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        return error_body(self.status, self.message, self.type, **self.extra)


# exception -> (status, type); the first class that matches wins, so the specific come first.
# Errors of the caller's making are 4xx; the server's own (and unknown) ones are 5xx.
STATUS: Tuple[Tuple[Type[BaseException], int, Optional[str]], ...] = (
    (ContextLimitError, 400, "exceed_context_size_error"),
    (InvalidRequestError, 400, None),
    (GrammarError, 400, None),
    (ChatTemplateError, 400, None),
    (TokenizeError, 400, None),
    (StateError, 400, None),                                # a slot file that cannot be restored
    (NotSupportedError, 501, "not_supported_error"),
    (KVCacheFullError, 503, None),                          # no room in the KV cache now: retry later
    (QueueFullError, 503, None),                            # the admission queue is full: retry later
    (EngineStoppedError, 503, None),
    (PyllamaError, 500, None),
    (ValueError, 400, None),
    (Exception, 500, None),
)


def api_error(exc: BaseException) -> APIError:
    """The APIError an exception is answered with (see STATUS)."""
    if isinstance(exc, APIError):
        return exc
    for cls, status, type_ in STATUS:
        if isinstance(exc, cls):
            break
    else:  # pragma: no cover - Exception matches everything but BaseException
        status, type_ = 500, None
    extra: Dict[str, Any] = {}
    if isinstance(exc, ContextLimitError):
        extra = {"n_prompt_tokens": exc.n_tokens, "n_ctx": exc.n_ctx}
    if isinstance(exc, EngineStoppedError):
        message = "the server is shutting down"
    elif status == 500 and not isinstance(exc, PyllamaError):
        message = f"internal error: {type(exc).__name__}: {exc}"
    else:
        message = str(exc) or type(exc).__name__
    return APIError(status, message, type_, **extra)


def handled(exc: BaseException) -> APIError:
    """What a handler's exception is answered with; a server error is logged with its traceback
    (call from the ``except`` block)."""
    err = api_error(exc)
    if err.status >= 500 and not isinstance(exc, (APIError, KVCacheFullError, EngineStoppedError, QueueFullError)):
        logger.exception("request failed")
    return err


def error_body(status: int, message: str, type_: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    err = {"code": status, "message": message, "type": type_ or TYPES.get(status, "server_error")}
    err.update(extra)
    return {"error": err}


def error_of(exc: Optional[BaseException]) -> Dict[str, Any]:
    """The error body of an exception (e.g. a request that failed mid-stream)."""
    return api_error(exc if exc is not None else PyllamaError("request failed")).body()


RETRY_AFTER_S = 1      # a 503 (busy, loading, shutting down) says when to try again


def error_response(status: int, message: str, type_: Optional[str] = None, **extra: Any) -> web.Response:
    return web.json_response(error_body(status, message, type_, **extra), status=status,
                             headers={"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


def require_enabled(enabled: object, what: str, flag: str) -> None:
    """501 with llama-server's wording when an endpoint's feature was not switched on."""
    if not enabled:
        raise APIError(501, f"This server does not support {what}. Start it with `{flag}`", "not_supported_error")
