"""The front end: everything between an API (the server's, ``Llama``) and the engine.

- ``bundle``: loading a model with its devices (RPC), chat templates and LoRA adapters;
- ``prompts``: prompt shapes, embedding inputs, rerank and FIM prompts, logit bias -> tokens;
- ``chat``: chat rendering into a ``RenderedChat``, model text -> message deltas;
- ``requests``: the one request builder (defaults + fields -> SamplingParams + Requests);
- ``limits``: size limits that bound one request's CPU work;
- ``formatting``: OpenAI-shaped responses, chunks, logprobs, usage;
- ``service``: ``Frontend`` (one bundle + defaults) and ``Workers`` (the pool for CPU work).
"""
from .bundle import LoraSlot, ModelBundle, load_model, load_templates
from .limits import Limits
from .chat import ChatDefaults, ChatDeltaParser, ChatInput, RenderedChat, new_id, render_chat
from .requests import GenerationDefaults, GenerationOptions, RequestBuilder
from .service import Frontend, Prepared, Workers

__all__ = ["LoraSlot", "ModelBundle", "load_model", "load_templates", "ChatDefaults", "ChatDeltaParser",
           "ChatInput", "RenderedChat", "new_id", "render_chat", "GenerationDefaults", "GenerationOptions",
           "RequestBuilder", "Limits", "Frontend", "Prepared", "Workers"]
