# Model and Vocab

cdef class _Progress:
    """Carries a Python progress callback (and the exception it may raise) through C."""
    cdef object fn
    cdef object exc


cdef cppbool _progress_trampoline(float progress, void * user_data) noexcept with gil:
    cdef _Progress p = <_Progress>user_data
    try:
        r = p.fn(progress)
        return r is None or bool(r)
    except BaseException as e:
        p.exc = e
        return False


cdef inline bytes _fs(path):
    return _os.fsencode(_os.fspath(path))


cdef ggml_backend_dev_t _find_device(str name) except? NULL:
    cdef size_t i
    cdef ggml_backend_dev_t dev
    for i in range(ggml_backend_dev_count()):
        dev = ggml_backend_dev_get(i)
        if ggml_backend_dev_name(dev).decode() == name:
            return dev
    raise ValueError(f"no device named {name!r}; available: {[d['name'] for d in list_devices(memory=False)]}")


cdef class Model:
    """A loaded GGUF model (owns a llama_model).

    ``Model(path, params=ModelParams(), progress_callback=None)``. The callback gets a float
    in [0, 1]; returning False cancels the load.
    """
    cdef llama_model * ptr
    cdef const llama_vocab * vptr
    cdef readonly str path
    cdef object _adapters      # WeakSet of LoraAdapter owned by this model
    cdef object __weakref__

    def __cinit__(self):
        self.ptr = NULL
        self.vptr = NULL

    def __init__(self, path, params=None, progress_callback=None):
        if params is None:
            params = ModelParams()
        elif not isinstance(params, ModelParams):
            raise TypeError("params must be a ModelParams")
        spath = _os.fspath(path)
        if not _os.path.isfile(spath):
            raise ModelLoadError(f"model file not found: {spath}")
        self.path = str(spath)
        self._adapters = _weakref.WeakSet()

        cdef llama_model_params mp = llama_model_default_params()
        cdef vector[float] tsplit
        cdef vector[llama_model_kv_override] overrides
        cdef llama_model_kv_override ov
        cdef vector[ggml_backend_dev_t] devs
        cdef _Progress prog = None
        cdef bytes bpath = _fs(spath)
        cdef const char * cpath = bpath
        cdef size_t i, ndev

        mp.n_gpu_layers = params.n_gpu_layers
        mp.split_mode = <llama_split_mode>params.split_mode
        mp.main_gpu = params.main_gpu
        mp.vocab_only = params.vocab_only
        mp.check_tensors = params.check_tensors
        if params.use_mmap:
            mp.load_mode = LLAMA_LOAD_MODE_MMAP_MLOCK if params.use_mlock else LLAMA_LOAD_MODE_AUTO
        else:
            mp.load_mode = LLAMA_LOAD_MODE_MLOCK if params.use_mlock else LLAMA_LOAD_MODE_NONE
        if params.tensor_split:
            ndev = llama_max_devices()
            if len(params.tensor_split) > ndev:
                raise ValueError(f"tensor_split has {len(params.tensor_split)} values, at most {ndev} devices")
            tsplit.resize(ndev, 0.0)
            for i, v in enumerate(params.tensor_split):
                tsplit[i] = v
            mp.tensor_split = tsplit.data()
        if params.kv_overrides:
            for key, val in params.kv_overrides.items():
                memset(&ov, 0, sizeof(ov))
                bkey = key.encode()
                strncpy(ov.key, bkey, 127)
                if isinstance(val, bool):
                    ov.tag = LLAMA_KV_OVERRIDE_TYPE_BOOL
                    ov.val_bool = val
                elif isinstance(val, int):
                    ov.tag = LLAMA_KV_OVERRIDE_TYPE_INT
                    ov.val_i64 = val
                elif isinstance(val, float):
                    ov.tag = LLAMA_KV_OVERRIDE_TYPE_FLOAT
                    ov.val_f64 = val
                else:
                    ov.tag = LLAMA_KV_OVERRIDE_TYPE_STR
                    bval = val.encode()
                    strncpy(ov.val_str, bval, 127)
                overrides.push_back(ov)
            memset(&ov, 0, sizeof(ov))  # terminator: empty key
            overrides.push_back(ov)
            mp.kv_overrides = overrides.data()
        if params.rpc_servers and params.devices is None:
            raise ValueError("rpc_servers must be resolved to devices before the model loads "
                             "(pyllama.frontend.load_model does it)")
        device_names = params.devices
        if device_names is None and _rpc_registered():
            device_names = local_devices()      # RPC devices only for the models that ask for them
        if device_names is not None:
            for name in device_names:
                devs.push_back(_find_device(name))
            devs.push_back(NULL)
            mp.devices = devs.data()
        if progress_callback is not None:
            prog = _Progress()
            prog.fn = progress_callback
            mp.progress_callback = _progress_trampoline
            mp.progress_callback_user_data = <void *>prog

        with nogil:
            self.ptr = llama_model_load_from_file(cpath, mp)
        if self.ptr == NULL:
            if prog is not None and prog.exc is not None:
                raise prog.exc
            raise ModelLoadError(f"failed to load model from {spath} (see the pyllama.llama_cpp log)")
        self.vptr = llama_model_get_vocab(self.ptr)

    def __dealloc__(self):
        if self.ptr != NULL:
            llama_model_free(self.ptr)
            self.ptr = NULL

    cdef inline int _check(self) except -1:
        if self.ptr == NULL:
            raise ClosedError("the model is closed")
        return 0

    @property
    def vocab(self):
        """The vocabulary (a new handle each time; it keeps this model alive, without a cycle)."""
        self._check()
        return Vocab._create(self)

    def close(self):
        """Free the model. Idempotent; contexts that still use it keep it alive until they close."""
        if self.ptr != NULL:
            for a in list(self._adapters):
                (<LoraAdapter>a)._owner_closed()
            llama_model_free(self.ptr)
            self.ptr = NULL
            self.vptr = NULL

    @property
    def closed(self):
        return self.ptr == NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self.ptr == NULL else f"{self.n_params} params"
        return f"<pyllama._core.Model {self.path!r} {state}>"

    # ---- metadata ----
    @property
    def description(self):
        self._check()
        cdef char buf[256]
        n = llama_model_desc(self.ptr, buf, sizeof(buf))
        return buf[:max(0, min(n, 255))].decode("utf-8", "replace")

    @property
    def size(self):
        """Total size of the tensors in bytes."""
        self._check()
        return llama_model_size(self.ptr)

    @property
    def n_params(self):
        self._check()
        return llama_model_n_params(self.ptr)

    @property
    def n_ctx_train(self):
        self._check()
        return llama_model_n_ctx_train(self.ptr)

    @property
    def n_embd(self):
        self._check()
        return llama_model_n_embd(self.ptr)

    @property
    def n_embd_out(self):
        self._check()
        return llama_model_n_embd_out(self.ptr)

    @property
    def n_layer(self):
        self._check()
        return llama_model_n_layer(self.ptr)

    @property
    def n_head(self):
        self._check()
        return llama_model_n_head(self.ptr)

    @property
    def n_head_kv(self):
        self._check()
        return llama_model_n_head_kv(self.ptr)

    @property
    def n_swa(self):
        self._check()
        return llama_model_n_swa(self.ptr)

    @property
    def n_cls_out(self):
        self._check()
        return llama_model_n_cls_out(self.ptr)

    @property
    def has_encoder(self):
        self._check()
        return llama_model_has_encoder(self.ptr)

    @property
    def has_decoder(self):
        self._check()
        return llama_model_has_decoder(self.ptr)

    @property
    def is_recurrent(self):
        self._check()
        return llama_model_is_recurrent(self.ptr)

    @property
    def ftype(self):
        self._check()
        return llama_ftype_name(llama_model_ftype(self.ptr)).decode()

    @property
    def architecture(self):
        return self.meta_get("general.architecture")

    @property
    def name(self):
        return self.meta_get("general.name")

    def meta_get(self, key, default=None):
        """One GGUF metadata value as a string (arrays are summarised by llama.cpp)."""
        self._check()
        cdef bytes bkey = key.encode()
        cdef int32_t n
        cdef vector[char] buf
        buf.resize(256)
        n = llama_model_meta_val_str(self.ptr, bkey, buf.data(), buf.size())
        if n < 0:
            return default
        if <size_t>n >= buf.size():
            buf.resize(n + 1)
            n = llama_model_meta_val_str(self.ptr, bkey, buf.data(), buf.size())
        return buf.data()[:n].decode("utf-8", "replace")

    @property
    def metadata(self):
        """All GGUF key/values as a dict of strings."""
        self._check()
        cdef int32_t i, n, count = llama_model_meta_count(self.ptr)
        cdef vector[char] buf
        out = {}
        for i in range(count):
            buf.resize(256)
            n = llama_model_meta_key_by_index(self.ptr, i, buf.data(), buf.size())
            if n < 0:
                continue
            if <size_t>n >= buf.size():
                buf.resize(n + 1)
                n = llama_model_meta_key_by_index(self.ptr, i, buf.data(), buf.size())
            key = buf.data()[:n].decode("utf-8", "replace")
            buf.resize(256)
            n = llama_model_meta_val_str_by_index(self.ptr, i, buf.data(), buf.size())
            if n < 0:
                continue
            if <size_t>n >= buf.size():
                buf.resize(n + 1)
                n = llama_model_meta_val_str_by_index(self.ptr, i, buf.data(), buf.size())
            out[key] = buf.data()[:n].decode("utf-8", "replace")
        return out

    def chat_template(self, name=None):
        """The model's chat template (None if it has none). ``name`` picks a named variant."""
        self._check()
        cdef bytes bname
        cdef const char * res
        if name is None:
            res = llama_model_chat_template(self.ptr, NULL)
        else:
            bname = name.encode()
            res = llama_model_chat_template(self.ptr, bname)
        return None if res == NULL else res.decode("utf-8", "replace")

    def save(self, path):
        self._check()
        cdef bytes b = _fs(path)
        cdef const char * c = b
        with nogil:
            llama_model_save_to_file(self.ptr, c)


cdef class Vocab:
    """The model's vocabulary: tokenize, detokenize, special tokens. Keeps its Model alive."""
    cdef readonly Model model
    cdef readonly int32_t n_vocab

    @staticmethod
    cdef Vocab _create(Model model):
        cdef Vocab v = Vocab.__new__(Vocab)
        v.model = model
        v.n_vocab = llama_vocab_n_tokens(model.vptr)
        return v

    def __init__(self):
        raise TypeError("Vocab objects come from Model.vocab")

    cdef inline const llama_vocab * _v(self) except NULL:
        if self.model.ptr == NULL:
            raise ClosedError("the model is closed")
        return self.model.vptr

    cdef inline int _tok(self, object t) except -1:
        try:
            i = _operator.index(t)
        except TypeError:
            raise TokenizeError(f"token ids must be integers, not {type(t).__name__}") from None
        if i < 0 or i >= self.n_vocab:
            raise TokenizeError(f"token id {t} out of range [0, {self.n_vocab})")
        return 0

    cdef vector[llama_token] _tokenize(self, text, bint add_special, bint parse_special) except *:
        cdef const llama_vocab * v = self._v()
        cdef bytes b
        if isinstance(text, str):
            b = text.encode("utf-8")
        elif isinstance(text, (bytes, bytearray, memoryview)):
            b = bytes(text)
        else:
            raise TypeError(f"tokenize() takes str or bytes, not {type(text).__name__}")
        cdef const char * c = b
        cdef Py_ssize_t nbytes = len(b)
        if nbytes > 0x7FFFFFF0:
            raise TokenizeError("text too long to tokenize")
        cdef int32_t ln = <int32_t>nbytes
        cdef vector[llama_token] toks
        cdef int32_t n
        with nogil:
            toks.resize(ln + 4)     # zero-filling up to 4 bytes per input byte takes a while too
            n = llama_tokenize(v, c, ln, toks.data(), <int32_t>toks.size(), add_special, parse_special)
            if n < 0 and n != -2147483648:
                toks.resize(-n)
                n = llama_tokenize(v, c, ln, toks.data(), <int32_t>toks.size(), add_special, parse_special)
            if n >= 0:
                toks.resize(n)
        if n < 0:
            raise TokenizeError("tokenization failed (the result would overflow int32)")
        return toks

    def tokenize(self, text, bint add_special=True, bint parse_special=False):
        """Text (str or UTF-8 bytes) to a list of token ids."""
        cdef vector[llama_token] toks = self._tokenize(text, add_special, parse_special)
        return [toks[i] for i in range(toks.size())]

    def tokenize_array(self, text, bint add_special=True, bint parse_special=False):
        """Like tokenize(), as a numpy int32 array: no Python int per token, so a long text
        holds the GIL only for a copy (the caller can convert it in pieces)."""
        cdef vector[llama_token] toks = self._tokenize(text, add_special, parse_special)
        arr = _np.empty(toks.size(), dtype=_np.int32)
        cdef int32_t[::1] view = arr
        if toks.size():
            with nogil:
                memcpy(&view[0], toks.data(), toks.size() * sizeof(llama_token))
        return arr

    def token_to_piece(self, token, bint special=True, int32_t lstrip=0):
        """The raw bytes one token renders to (may be a partial UTF-8 character)."""
        cdef const llama_vocab * v = self._v()
        self._tok(token)
        token = _operator.index(token)
        cdef char buf[128]
        cdef int32_t n = llama_token_to_piece(v, token, buf, sizeof(buf), lstrip, special)
        cdef vector[char] big
        if n >= 0:
            return buf[:n]
        big.resize(-n)
        n = llama_token_to_piece(v, token, big.data(), <int32_t>big.size(), lstrip, special)
        return big.data()[:max(n, 0)]

    def detokenize(self, tokens, bint remove_special=False, bint unparse_special=False):
        """Token ids to text (str; invalid UTF-8 replaced)."""
        return self.detokenize_bytes(tokens, remove_special, unparse_special).decode("utf-8", "replace")

    def detokenize_bytes(self, tokens, bint remove_special=False, bint unparse_special=False):
        cdef const llama_vocab * v = self._v()
        cdef vector[llama_token] toks
        for t in tokens:
            self._tok(t)
            toks.push_back(_operator.index(t))
        cdef vector[char] buf
        buf.resize(toks.size() * 8 + 16)
        cdef int32_t n
        with nogil:
            n = llama_detokenize(v, toks.data(), <int32_t>toks.size(), buf.data(), <int32_t>buf.size(),
                                 remove_special, unparse_special)
            if n < 0:
                buf.resize(-n)
                n = llama_detokenize(v, toks.data(), <int32_t>toks.size(), buf.data(), <int32_t>buf.size(),
                                     remove_special, unparse_special)
        if n < 0:
            raise TokenizeError("detokenize failed")
        return buf.data()[:n]

    def text(self, token):
        """The token's text as stored in the vocab."""
        cdef const llama_vocab * v = self._v()
        self._tok(token)
        return llama_vocab_get_text(v, token).decode("utf-8", "replace")

    def score(self, token):
        self._tok(token)
        return llama_vocab_get_score(self._v(), token)

    def attr(self, token):
        self._tok(token)
        return <int>llama_vocab_get_attr(self._v(), token)

    def is_eog(self, llama_token token):
        """End of generation (EOS, EOT, ...)."""
        if token < 0 or token >= self.n_vocab:
            return False
        return llama_vocab_is_eog(self._v(), token)

    def is_control(self, llama_token token):
        if token < 0 or token >= self.n_vocab:
            return False
        return llama_vocab_is_control(self._v(), token)

    def eog_tokens(self):
        """All end-of-generation token ids."""
        cdef const llama_vocab * v = self._v()
        cdef int32_t i
        return [i for i in range(self.n_vocab) if llama_vocab_is_eog(v, i)]

    @property
    def type(self):
        return {0: "none", 1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2", 7: "test"}.get(
            <int>llama_vocab_type_of(self._v()), "unknown")

    @property
    def bos(self): return _tok_or_none(llama_vocab_bos(self._v()))
    @property
    def eos(self): return _tok_or_none(llama_vocab_eos(self._v()))
    @property
    def eot(self): return _tok_or_none(llama_vocab_eot(self._v()))
    @property
    def sep(self): return _tok_or_none(llama_vocab_sep(self._v()))
    @property
    def nl(self): return _tok_or_none(llama_vocab_nl(self._v()))
    @property
    def pad(self): return _tok_or_none(llama_vocab_pad(self._v()))
    @property
    def mask(self): return _tok_or_none(llama_vocab_mask(self._v()))
    @property
    def fim_pre(self): return _tok_or_none(llama_vocab_fim_pre(self._v()))
    @property
    def fim_suf(self): return _tok_or_none(llama_vocab_fim_suf(self._v()))
    @property
    def fim_mid(self): return _tok_or_none(llama_vocab_fim_mid(self._v()))
    @property
    def fim_pad(self): return _tok_or_none(llama_vocab_fim_pad(self._v()))
    @property
    def fim_rep(self): return _tok_or_none(llama_vocab_fim_rep(self._v()))
    @property
    def fim_sep(self): return _tok_or_none(llama_vocab_fim_sep(self._v()))
    @property
    def add_bos(self): return llama_vocab_get_add_bos(self._v())
    @property
    def add_eos(self): return llama_vocab_get_add_eos(self._v())
    @property
    def add_sep(self): return llama_vocab_get_add_sep(self._v())


cdef inline object _tok_or_none(llama_token t):
    return None if t < 0 else t
