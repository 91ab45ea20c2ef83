"""pyllama: serve and use GGUF language models from Python.

llama.cpp is compiled from source into ``pyllama._core``; ``Llama`` is the synchronous
high-level API.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    BatchError, ChatTemplateError, ClosedError, ContextError, ContextLimitError, DecodeAbortedError,
    DecodeError, GrammarError, KVCacheFullError, ModelLoadError, PyllamaError, RPCError, StateError,
    TokenizeError,
)
from .params import ContextParams, ModelParams, SamplingParams  # noqa: E402
from ._core import (  # noqa: E402
    Batch, ChatTemplates, Context, LoraAdapter, Model, Sampler, Vocab, chat_parse, json_schema_to_grammar,
    list_backends, list_devices, quantize, system_info,
)
from .llama import Llama  # noqa: E402

__all__ = [
    "__version__", "Llama", "Model", "Vocab", "Context", "Batch", "Sampler", "LoraAdapter", "ChatTemplates",
    "ModelParams", "ContextParams", "SamplingParams", "chat_parse", "json_schema_to_grammar", "quantize",
    "list_devices", "list_backends", "system_info",
    "PyllamaError", "ClosedError", "ModelLoadError", "ContextError", "TokenizeError", "GrammarError",
    "ChatTemplateError", "BatchError", "DecodeError", "KVCacheFullError", "DecodeAbortedError", "StateError",
    "ContextLimitError", "RPCError",
]
