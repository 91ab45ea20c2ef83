# Context: decode/encode, logits and embeddings, memory (KV) API, state, perf, abort.

cdef cppbool _abort_flag_cb(void * data) noexcept nogil:
    return (<int *>data)[0] != 0


cdef extern from "llama.h":
    # llama.cpp aborts become C++ exceptions (see _abort_shim.h): catch them here
    int32_t _llama_decode_cpp "llama_decode"(llama_context * ctx, llama_batch batch) except + nogil
    int32_t _llama_encode_cpp "llama_encode"(llama_context * ctx, llama_batch batch) except + nogil
    # outputs are fetched asynchronously: a failure there (a lost RPC server) shows up when
    # waiting for them, so decode/encode wait here, where an abort can still be caught
    void _llama_synchronize_cpp "llama_synchronize"(llama_context * ctx) except + nogil


cdef class Context:
    """An inference context over a Model (owns a llama_context, keeps the Model alive).

    Only one thread may use a Context at a time (pyllama's engine gives it one owner).
    """
    cdef llama_context * ptr
    cdef llama_memory_t mem
    cdef readonly Model model
    cdef readonly object params
    cdef readonly int32_t n_vocab
    cdef int _abort
    cdef list _loras
    cdef object __weakref__

    def __cinit__(self):
        self.ptr = NULL
        self._abort = 0

    def __init__(self, Model model not None, params=None):
        model._check()
        if params is None:
            params = ContextParams()
        elif not isinstance(params, ContextParams):
            raise TypeError("params must be a ContextParams")
        cdef llama_context_params cp = llama_context_default_params()
        cp.n_ctx = params.n_ctx
        cp.n_batch = params.n_batch
        cp.n_ubatch = min(params.n_ubatch, params.n_batch)
        cp.n_seq_max = params.n_seq_max
        cp.n_threads = params.n_threads
        cp.n_threads_batch = params.n_threads_batch
        cp.flash_attn_type = <llama_flash_attn_type>params.flash_attn
        cp.type_k = <ggml_type>params.type_k
        cp.type_v = <ggml_type>params.type_v
        cp.offload_kqv = params.offload_kqv
        cp.embeddings = params.embeddings
        cp.pooling_type = <llama_pooling_type>params.pooling_type
        cp.rope_scaling_type = <llama_rope_scaling_type>params.rope_scaling_type
        cp.rope_freq_base = params.rope_freq_base
        cp.rope_freq_scale = params.rope_freq_scale
        cp.yarn_ext_factor = params.yarn_ext_factor
        cp.yarn_attn_factor = params.yarn_attn_factor
        cp.yarn_beta_fast = params.yarn_beta_fast
        cp.yarn_beta_slow = params.yarn_beta_slow
        cp.yarn_orig_ctx = params.yarn_orig_ctx
        cp.kv_unified = params.kv_unified
        cp.swa_full = params.swa_full
        cp.no_perf = params.no_perf
        cp.abort_callback = _abort_flag_cb
        cp.abort_callback_data = <void *>&self._abort
        if params.n_seq_max > llama_max_parallel_sequences():
            raise ValueError(f"n_seq_max must be <= {llama_max_parallel_sequences()}")
        pooling = params.pooling_type
        if pooling == -1:
            pooling = int(model.meta_get(f"{model.architecture}.pooling_type", "0") or 0)
        if params.embeddings and pooling == 1 and cp.n_ubatch % params.n_seq_max:
            # llama.cpp aborts the process (GGML_ASSERT in the mean-pooling graph) otherwise
            raise ContextError(f"mean pooling needs n_ubatch ({cp.n_ubatch}) to be a multiple of "
                               f"n_seq_max ({params.n_seq_max})")
        with nogil:
            self.ptr = llama_init_from_model(model.ptr, cp)
        if self.ptr == NULL:
            raise ContextError("failed to create the context (see the pyllama.llama_cpp log); "
                               f"n_ctx={params.n_ctx}, n_batch={params.n_batch}, n_seq_max={params.n_seq_max}")
        self.model = model
        self.params = params
        self.mem = llama_get_memory(self.ptr)
        self.n_vocab = model.vocab.n_vocab
        self._loras = []

    def __dealloc__(self):
        if self.ptr != NULL:
            llama_free(self.ptr)
            self.ptr = NULL

    def close(self):
        """Free the context. Idempotent."""
        if self.ptr != NULL:
            llama_free(self.ptr)
            self.ptr = NULL
            self.mem = NULL
            self._loras = []

    @property
    def closed(self):
        return self.ptr == NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef inline int _check(self) except -1:
        if self.ptr == NULL:
            raise ClosedError("the context is closed")
        if self.model.ptr == NULL:
            raise ClosedError("the context's model is closed")
        return 0

    # ---- sizes ----
    @property
    def n_ctx(self):
        self._check()
        return llama_n_ctx(self.ptr)

    @property
    def n_ctx_seq(self):
        self._check()
        return llama_n_ctx_seq(self.ptr)

    @property
    def n_batch(self):
        self._check()
        return llama_n_batch(self.ptr)

    @property
    def n_ubatch(self):
        self._check()
        return llama_n_ubatch(self.ptr)

    @property
    def n_seq_max(self):
        self._check()
        return llama_n_seq_max(self.ptr)

    @property
    def pooling_type(self):
        self._check()
        return <int>llama_pooling_type_of(self.ptr)

    @property
    def n_embd_out(self):
        return self.model.n_embd_out

    def set_n_threads(self, int32_t n_threads, int32_t n_threads_batch=0):
        self._check()
        if n_threads < 1 or n_threads_batch < 0:
            raise ValueError("thread counts must be positive")
        llama_set_n_threads(self.ptr, n_threads, n_threads_batch or n_threads)

    def set_embeddings(self, bint on):
        self._check()
        llama_set_embeddings(self.ptr, on)

    def set_causal_attn(self, bint on):
        self._check()
        llama_set_causal_attn(self.ptr, on)

    # ---- decode / encode ----
    cpdef decode(self, Batch batch):
        """Run the model on a batch (GIL released). Raises KVCacheFullError, DecodeAbortedError..."""
        self._check()
        if batch.b.n_tokens <= 0:
            raise BatchError("empty batch")
        cdef int32_t rc
        try:
            with nogil:
                rc = _llama_decode_cpp(self.ptr, batch.b)
                if rc == 0:
                    _llama_synchronize_cpp(self.ptr)
        except RuntimeError as e:
            raise DecodeError(f"llama_decode: {e}", -100) from None
        if rc != 0:
            raise decode_error(rc, "llama_decode")

    cpdef encode(self, Batch batch):
        self._check()
        if batch.b.n_tokens <= 0:
            raise BatchError("empty batch")
        cdef int32_t rc
        try:
            with nogil:
                rc = _llama_encode_cpp(self.ptr, batch.b)
                if rc == 0:
                    _llama_synchronize_cpp(self.ptr)
        except RuntimeError as e:
            raise DecodeError(f"llama_encode: {e}", -100) from None
        if rc != 0:
            raise decode_error(rc, "llama_encode")

    def request_abort(self, bint on=True):
        """Make the running (or next) decode stop early with DecodeAbortedError; thread safe."""
        self._abort = 1 if on else 0

    def synchronize(self):
        self._check()
        with nogil:
            llama_synchronize(self.ptr)

    # ---- outputs ----
    def logits(self, int32_t i=-1, bint copy=False):
        """Logits of output row ``i`` of the last batch (-1 = last) as a float32 numpy array.

        Without copy it is a view into llama.cpp's buffer, valid until the next decode.
        """
        self._check()
        cdef float * p = llama_get_logits_ith(self.ptr, i)
        if p == NULL:
            raise IndexError(f"no logits for batch row {i} (was logits requested for it?)")
        arr = _np.asarray(<float[:self.n_vocab]> p)
        return arr.copy() if copy else arr

    def embeddings(self, int32_t i=-1, bint copy=True):
        """Embedding of output row ``i`` (per-token, pooling none)."""
        self._check()
        cdef float * p = llama_get_embeddings_ith(self.ptr, i)
        if p == NULL:
            raise IndexError(f"no embeddings for batch row {i} (embeddings enabled? output requested?)")
        arr = _np.asarray(<float[:self.model.n_embd_out]> p)
        return arr.copy() if copy else arr

    def embeddings_seq(self, llama_seq_id seq_id, bint copy=True):
        """Pooled embedding of a sequence (pooling mean/cls/last; rank gives n_cls_out scores)."""
        self._check()
        cdef float * p = llama_get_embeddings_seq(self.ptr, seq_id)
        if p == NULL:
            raise IndexError(f"no pooled embeddings for sequence {seq_id} (pooling type none?)")
        cdef int n = self.model.n_embd_out
        if llama_pooling_type_of(self.ptr) == LLAMA_POOLING_TYPE_RANK:
            n = max(1, self.model.n_cls_out)
        arr = _np.asarray(<float[:n]> p)
        return arr.copy() if copy else arr

    def top_logprobs(self, int32_t i, int n):
        """The ``n`` most likely tokens of row ``i`` with log-probabilities (softmax of the raw logits)."""
        x = self.logits(i)
        m = float(x.max())
        lse = m + float(_np.log(_np.exp(x - m, dtype=_np.float64).sum()))
        n = max(0, min(n, self.n_vocab))
        if n == 0:
            return []
        idx = _np.argpartition(-x, n - 1)[:n]
        idx = idx[_np.argsort(-x[idx], kind="stable")]
        return [(int(t), float(x[t]) - lse) for t in idx]

    def logprob_of(self, int32_t i, llama_token token):
        """Log-probability of one token under row ``i``'s raw logits."""
        if token < 0 or token >= self.n_vocab:
            raise TokenizeError(f"token id {token} out of range")
        x = self.logits(i)
        m = float(x.max())
        return float(x[token]) - (m + float(_np.log(_np.exp(x - m, dtype=_np.float64).sum())))

    # ---- memory (KV cache) ----
    def memory_clear(self, bint data=True):
        self._check()
        llama_memory_clear(self.mem, data)

    def seq_rm(self, llama_seq_id seq_id, llama_pos p0=-1, llama_pos p1=-1):
        """Remove positions [p0, p1) of a sequence (-1: all). seq_id -1 = every sequence."""
        self._check()
        return llama_memory_seq_rm(self.mem, seq_id, p0, p1)

    def seq_cp(self, llama_seq_id src, llama_seq_id dst, llama_pos p0=-1, llama_pos p1=-1):
        self._check()
        self._seq_ok(src)
        self._seq_ok(dst)
        llama_memory_seq_cp(self.mem, src, dst, p0, p1)

    def seq_keep(self, llama_seq_id seq_id):
        self._check()
        self._seq_ok(seq_id)
        llama_memory_seq_keep(self.mem, seq_id)

    def memory_can_shift(self):
        """Whether this context's memory can shift positions (seq_add): False e.g. for recurrent models."""
        self._check()
        return bool(llama_memory_can_shift(self.mem))

    def seq_add(self, llama_seq_id seq_id, llama_pos p0, llama_pos p1, llama_pos delta):
        """Shift positions [p0, p1) of a sequence by delta (context shift)."""
        self._check()
        self._seq_ok(seq_id)
        if not llama_memory_can_shift(self.mem):
            raise StateError("this model's memory cannot shift positions")
        llama_memory_seq_add(self.mem, seq_id, p0, p1, delta)

    def seq_div(self, llama_seq_id seq_id, llama_pos p0, llama_pos p1, int d):
        self._check()
        self._seq_ok(seq_id)
        if d <= 0:
            raise ValueError("d must be > 0")
        llama_memory_seq_div(self.mem, seq_id, p0, p1, d)

    def seq_pos_min(self, llama_seq_id seq_id):
        self._check()
        self._seq_ok(seq_id)
        return llama_memory_seq_pos_min(self.mem, seq_id)

    def seq_pos_max(self, llama_seq_id seq_id):
        """Largest position held for the sequence, -1 if empty."""
        self._check()
        self._seq_ok(seq_id)
        return llama_memory_seq_pos_max(self.mem, seq_id)

    @property
    def can_shift(self):
        self._check()
        return llama_memory_can_shift(self.mem)

    cdef inline int _seq_ok(self, llama_seq_id s) except -1:
        if s < 0 or <uint32_t>s >= llama_n_seq_max(self.ptr):
            raise ValueError(f"seq_id {s} out of range [0, {llama_n_seq_max(self.ptr)})")
        return 0

    # ---- state ----
    def seq_state_get(self, llama_seq_id seq_id):
        """A sequence's state (its KV) as bytes."""
        self._check()
        self._seq_ok(seq_id)
        cdef size_t n, got
        with nogil:
            n = llama_state_seq_get_size(self.ptr, seq_id)
        out = PyBytes_FromStringAndSize(NULL, n)
        cdef uint8_t * dst = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            got = llama_state_seq_get_data(self.ptr, dst, n, seq_id)
        if got != n:
            raise StateError(f"state of sequence {seq_id}: wrote {got} of {n} bytes")
        return out

    def seq_state_set(self, const uint8_t[::1] data, llama_seq_id seq_id):
        """Restore a state from seq_state_get() into ``seq_id``. Returns the bytes read."""
        self._check()
        self._seq_ok(seq_id)
        cdef size_t got
        if data.shape[0] == 0:
            raise StateError("empty state")
        with nogil:
            got = llama_state_seq_set_data(self.ptr, &data[0], data.shape[0], seq_id)
        if got == 0:
            raise StateError(f"failed to restore the state into sequence {seq_id}")
        return got

    def seq_state_save_file(self, path, llama_seq_id seq_id, tokens):
        """Save a sequence's KV and its tokens to a file. Returns the bytes written."""
        self._check()
        self._seq_ok(seq_id)
        cdef vector[llama_token] toks = list(tokens)
        cdef bytes b = _fs(path)
        cdef const char * c = b
        cdef size_t n
        with nogil:
            n = llama_state_seq_save_file(self.ptr, c, seq_id, toks.data(), toks.size())
        if n == 0:
            raise StateError(f"failed to save sequence {seq_id} to {path}")
        return n

    def seq_state_load_file(self, path, llama_seq_id seq_id, size_t max_tokens=0):
        """Load a file from seq_state_save_file() into ``seq_id``. Returns its tokens."""
        self._check()
        self._seq_ok(seq_id)
        if not _os.path.isfile(_os.fspath(path)):
            raise StateError(f"no such state file: {path}")
        cdef vector[llama_token] toks
        toks.resize(max_tokens or llama_n_ctx(self.ptr))
        cdef size_t count = 0, n
        cdef bytes b = _fs(path)
        cdef const char * c = b
        with nogil:
            n = llama_state_seq_load_file(self.ptr, c, seq_id, toks.data(), toks.size(), &count)
        if n == 0:
            raise StateError(f"failed to load sequence state from {path}")
        return [toks[i] for i in range(count)]

    def state_get(self):
        """The whole context state as bytes."""
        self._check()
        cdef size_t n, got
        with nogil:
            n = llama_state_get_size(self.ptr)
        out = PyBytes_FromStringAndSize(NULL, n)
        cdef uint8_t * dst = <uint8_t *>PyBytes_AS_STRING(out)
        with nogil:
            got = llama_state_get_data(self.ptr, dst, n)
        if got != n:
            raise StateError(f"context state: wrote {got} of {n} bytes")
        return out

    def state_set(self, const uint8_t[::1] data):
        self._check()
        cdef size_t got
        if data.shape[0] == 0:
            raise StateError("empty state")
        with nogil:
            got = llama_state_set_data(self.ptr, &data[0], data.shape[0])
        if got == 0:
            raise StateError("failed to restore the context state")
        return got

    # ---- perf ----
    def perf(self):
        self._check()
        cdef llama_perf_context_data d = llama_perf_context(self.ptr)
        return {"t_start_ms": d.t_start_ms, "t_load_ms": d.t_load_ms, "t_p_eval_ms": d.t_p_eval_ms,
                "t_eval_ms": d.t_eval_ms, "n_p_eval": d.n_p_eval, "n_eval": d.n_eval, "n_reused": d.n_reused}

    def perf_reset(self):
        self._check()
        llama_perf_context_reset(self.ptr)

    # ---- LoRA ----
    def set_lora_adapters(self, adapters):
        """Apply LoRA adapters: an iterable of (LoraAdapter, scale). An empty list removes all."""
        self._check()
        cdef vector[llama_adapter_lora *] ptrs
        cdef vector[float] scales
        keep = []
        for item in adapters:
            a, s = item
            if not isinstance(a, LoraAdapter):
                raise TypeError("expected (LoraAdapter, scale) pairs")
            (<LoraAdapter>a)._check()
            if (<LoraAdapter>a).model is not self.model:
                raise ValueError("the adapter was loaded for another model")
            ptrs.push_back((<LoraAdapter>a).ptr)
            scales.push_back(float(s))
            keep.append(a)
        cdef int32_t rc = llama_set_adapters_lora(self.ptr, ptrs.data(), ptrs.size(), scales.data())
        if rc != 0:
            raise PyllamaError(f"failed to apply LoRA adapters (code {rc})")
        self._loras = keep

    @property
    def lora_adapters(self):
        return list(self._loras)

