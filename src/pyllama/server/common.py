"""Helpers every handler uses: read and validate the body, the model name, usage objects."""
from __future__ import annotations

import json
import time
from typing import Any, Dict, List, Type, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..engine import RequestOutput
from .errors import APIError

M = TypeVar("M", bound=BaseModel)


async def read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise APIError(413, "request body too large") from None
    if not raw:
        raise APIError(400, "the request body is empty; expected JSON")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"invalid JSON: {e}") from None


def validate(model: Type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'body'}: {err['msg']}" for err in e.errors())
        raise APIError(400, f"invalid request: {errs}") from None


async def parse(request: web.Request, model: Type[M]) -> M:
    return validate(model, await read_json(request))


def usage(outs: List[RequestOutput], n: int = 1) -> Dict[str, Any]:
    """OpenAI usage of outputs made ``n`` per prompt (in order): each prompt counts once."""
    firsts = [o.usage for o in outs[::max(1, n)] if o.usage]
    prompt = sum(u["prompt_tokens"] for u in firsts)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in firsts)
    completion = sum(o.usage["completion_tokens"] for o in outs if o.usage)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def now() -> int:
    return int(time.time())


def error_of(o: RequestOutput) -> Dict[str, Any]:
    from .errors import error_body
    from ..errors import ContextLimitError, KVCacheFullError
    err = o.error
    status = 400 if isinstance(err, (ContextLimitError, ValueError)) else 500
    if isinstance(err, KVCacheFullError):
        status = 503
    return error_body(status, str(err) if err else "request failed")
