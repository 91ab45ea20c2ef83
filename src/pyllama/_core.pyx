# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# distutils: language = c++
"""pyllama._core: Cython bindings over llama.cpp.

One owner per C handle: Model owns llama_model, Context owns llama_context (and
holds a reference to its Model), Sampler owns a sampler chain, Batch owns a
llama_batch, LoraAdapter is owned by its Model. close() is idempotent; use after
close raises ClosedError. Long calls release the GIL.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int32_t, uint32_t, int64_t, uint64_t, uint8_t, int8_t, INT32_MAX
from libc.string cimport memset, strncpy, memcpy
from libc.math cimport INFINITY, expf, logf
from libcpp.vector cimport vector
from libcpp.string cimport string

from pyllama._llama cimport *
from pyllama cimport _chat_shim as shim
from pyllama._reasoning_budget cimport *

cdef extern from "_abort_shim.h" namespace "pyllama":
    void install_abort_handler()
    void ggml_abort_for_test(const char * message) except +

import json as _json
import logging as _logging
import operator as _operator
import os as _os
import weakref as _weakref

import numpy as _np

from pyllama.errors import (
    BatchError, ChatTemplateError, ClosedError, ContextError, DecodeError, GrammarError,
    ModelLoadError, PyllamaError, StateError, TokenizeError, decode_error,
)
from pyllama.params import ContextParams, ModelParams, SamplingParams

include "_log.pxi"
include "_model.pxi"
include "_context.pxi"
include "_batch.pxi"
include "_sampler.pxi"
include "_extras.pxi"
include "_rpc.pxi"

install_abort_handler()
llama_backend_init()
_install_log_bridge()


def _test_ggml_abort(message="test"):
    """Trigger GGML_ABORT on purpose: with pyllama's handler it raises RuntimeError."""
    cdef bytes b = message.encode()
    ggml_abort_for_test(b)
