"""Exceptions raised by pyllama.

Every llama.cpp return code is mapped to a named exception here and nowhere else.
"""
from __future__ import annotations


class PyllamaError(Exception):
    """Base class of every pyllama error."""


class ClosedError(PyllamaError, ValueError):
    """An object (model, context, sampler...) was used after close()."""


class ModelLoadError(PyllamaError, OSError):
    """llama.cpp could not load a model or an adapter file."""


class ContextError(PyllamaError):
    """llama.cpp could not create a context."""


class TokenizeError(PyllamaError, ValueError):
    """Text could not be tokenized, or a token id is out of range."""


class GrammarError(PyllamaError, ValueError):
    """A GBNF grammar or a JSON schema could not be compiled."""


class ChatTemplateError(PyllamaError, ValueError):
    """A chat template could not be parsed or rendered."""


class BatchError(PyllamaError, ValueError):
    """A batch is over capacity or holds invalid values."""


class DecodeError(PyllamaError):
    """llama_decode / llama_encode failed."""

    def __init__(self, message: str, code: int = -1):
        super().__init__(message)
        self.code = code


class KVCacheFullError(DecodeError):
    """No KV cache slot is free for the batch (llama_decode returned 1)."""


class QueueFullError(PyllamaError):
    """The engine's admission queue is full (EngineParams.max_queued): retry later."""


class DecodeAbortedError(DecodeError):
    """The abort callback stopped llama_decode (return code 2)."""


class RPCError(PyllamaError, ConnectionError):
    """An RPC server (``python -m pyllama.rpc_server``) cannot be reached or used."""


class StateError(PyllamaError):
    """A sequence or context state could not be saved or restored."""


class ContextLimitError(PyllamaError, ValueError):
    """A prompt does not fit in the context."""

    def __init__(self, message: str, n_tokens: int = 0, n_ctx: int = 0):
        super().__init__(message)
        self.n_tokens = n_tokens
        self.n_ctx = n_ctx


class InvalidRequestError(PyllamaError, ValueError):
    """A request's fields are invalid (a bad prompt shape, an out-of-range token id, a bad
    logit_bias or LoRA entry...): the caller's mistake, reported as is (HTTP 400)."""


class NotSupportedError(PyllamaError):
    """The request asks for something this model or build cannot do (HTTP 501)."""


def decode_error(code: int, what: str = "llama_decode") -> DecodeError:
    """Map a llama_decode/llama_encode return code to an exception."""
    if code == 1:
        return KVCacheFullError(f"{what}: no KV cache slot for the batch (code 1); "
                                "reduce the batch or free sequences", code)
    if code == 2:
        return DecodeAbortedError(f"{what}: aborted (code 2)", code)
    if code == -1:
        return DecodeError(f"{what}: invalid input batch (code -1)", code)
    if code < 0:
        return DecodeError(f"{what}: fatal error (code {code}); the memory of the context "
                           "may be in an inconsistent state", code)
    return DecodeError(f"{what}: failed (code {code})", code)


__all__ = [
    "PyllamaError", "ClosedError", "ModelLoadError", "ContextError", "TokenizeError",
    "GrammarError", "ChatTemplateError", "BatchError", "DecodeError", "KVCacheFullError",
    "DecodeAbortedError", "RPCError", "StateError", "ContextLimitError", "InvalidRequestError",
    "NotSupportedError", "QueueFullError", "decode_error",
]
