"""OpenAI-shaped errors with llama-server's status codes and types."""
from __future__ import annotations

import json
from typing import Any, Dict, Optional

from aiohttp import web

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
         501: "not_supported_error", 503: "unavailable_error"}


def error_body(status: int, message: str, type_: Optional[str] = None, **extra: Any) -> Dict[str, Any]:
    err = {"code": status, "message": message, "type": type_ or TYPES.get(status, "server_error")}
    err.update(extra)
    return {"error": err}


def error_response(status: int, message: str, type_: Optional[str] = None, **extra: Any) -> web.Response:
    return web.json_response(error_body(status, message, type_, **extra), status=status,
                             dumps=lambda o: json.dumps(o, ensure_ascii=False))


class APIError(Exception):
    """Raised by handlers; the error middleware turns it into the JSON error."""

    def __init__(self, status: int, message: str, type_: Optional[str] = None, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.extra = extra

    def body(self) -> Dict[str, Any]:
        return error_body(self.status, self.message, self.type, **self.extra)


def require_enabled(enabled: object, what: str, flag: str) -> None:
    """501 with llama-server's wording when an endpoint's feature was not switched on."""
    if not enabled:
        raise APIError(501, f"This server does not support {what}. Start it with `{flag}`", "not_supported_error")
