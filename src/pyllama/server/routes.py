"""The one endpoint table: (method, path, handler), under the API prefix."""
from __future__ import annotations

from typing import Awaitable, Callable, List, Tuple

from aiohttp import web

from . import anthropic, extra, native, openai, responses
from .schemas import openapi_document

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def openapi_json(request: web.Request) -> web.Response:
    from .. import __version__
    return web.json_response(openapi_document("pyllama server", __version__))


ROUTES: List[Tuple[str, str, Handler]] = [
    ("GET", "/health", native.health), ("GET", "/v1/health", native.health),
    ("GET", "/v1/models", openai.models), ("GET", "/models", openai.models),
    ("POST", "/v1/completions", openai.completions), ("POST", "/completions", native.completion),
    ("POST", "/completion", native.completion),
    ("POST", "/v1/chat/completions", openai.chat_completions), ("POST", "/chat/completions", openai.chat_completions),
    ("POST", "/v1/chat/completions/control", openai.chat_control),
    ("POST", "/v1/chat/completions/input_tokens", openai.chat_input_tokens),
    ("POST", "/chat/completions/input_tokens", openai.chat_input_tokens),
    ("POST", "/v1/responses", responses.responses), ("POST", "/responses", responses.responses),
    ("POST", "/v1/responses/input_tokens", responses.input_tokens),
    ("POST", "/responses/input_tokens", responses.input_tokens),
    ("POST", "/v1/messages", anthropic.messages),
    ("POST", "/v1/messages/count_tokens", anthropic.count_tokens),
    ("POST", "/v1/embeddings", openai.embeddings),
    ("POST", "/embedding", native.embedding_native), ("POST", "/embeddings", native.embedding_native),
    ("POST", "/tokenize", native.tokenize), ("POST", "/detokenize", native.detokenize),
    ("POST", "/apply-template", native.apply_template),
    ("GET", "/props", native.props), ("POST", "/props", native.props_post),
    ("GET", "/slots", native.slots), ("POST", "/slots/{id_slot}", native.slot_action),
    ("GET", "/metrics", native.metrics),
    ("POST", "/infill", extra.infill),
    ("POST", "/reranking", extra.rerank), ("POST", "/rerank", extra.rerank), ("POST", "/v1/rerank", extra.rerank),
    ("GET", "/lora-adapters", extra.lora_get), ("POST", "/lora-adapters", extra.lora_post),
    ("GET", "/openapi.json", openapi_json),
]
