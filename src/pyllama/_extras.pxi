# LoRA adapters, quantization, devices, chat templates (through the C++ shim).

cdef class LoraAdapter:
    """A LoRA adapter loaded for a model (the model owns it; close() frees it early)."""
    cdef llama_adapter_lora * ptr
    cdef readonly Model model
    cdef readonly str path
    cdef object __weakref__

    def __cinit__(self):
        self.ptr = NULL

    def __init__(self, Model model not None, path):
        model._check()
        spath = _os.fspath(path)
        if not _os.path.isfile(spath):
            raise ModelLoadError(f"LoRA adapter file not found: {spath}")
        cdef bytes b = _fs(spath)
        cdef const char * c = b
        with nogil:
            self.ptr = llama_adapter_lora_init(model.ptr, c)
        if self.ptr == NULL:
            raise ModelLoadError(f"failed to load LoRA adapter {spath} (see the pyllama.llama_cpp log)")
        self.model = model
        self.path = str(spath)
        model._adapters.add(self)

    cdef int _check(self) except -1:
        if self.ptr == NULL:
            raise ClosedError("the LoRA adapter is closed")
        self.model._check()
        return 0

    cdef void _owner_closed(self) noexcept:
        self.ptr = NULL  # freed by llama_model_free

    def close(self):
        if self.ptr != NULL and self.model is not None and self.model.ptr != NULL:
            llama_adapter_lora_free(self.ptr)
        self.ptr = NULL

    @property
    def closed(self):
        return self.ptr == NULL

    @property
    def metadata(self):
        self._check()
        cdef int32_t i, n, count = llama_adapter_meta_count(self.ptr)
        cdef char buf[1024]
        out = {}
        for i in range(count):
            n = llama_adapter_meta_key_by_index(self.ptr, i, buf, sizeof(buf))
            if n < 0:
                continue
            key = buf[:min(n, 1023)].decode("utf-8", "replace")
            n = llama_adapter_meta_val_str_by_index(self.ptr, i, buf, sizeof(buf))
            if n >= 0:
                out[key] = buf[:min(n, 1023)].decode("utf-8", "replace")
        return out


FTYPES = {
    "f32": LLAMA_FTYPE_ALL_F32, "f16": LLAMA_FTYPE_MOSTLY_F16, "bf16": LLAMA_FTYPE_MOSTLY_BF16,
    "q4_0": LLAMA_FTYPE_MOSTLY_Q4_0, "q4_1": LLAMA_FTYPE_MOSTLY_Q4_1, "q5_0": LLAMA_FTYPE_MOSTLY_Q5_0,
    "q5_1": LLAMA_FTYPE_MOSTLY_Q5_1, "q8_0": LLAMA_FTYPE_MOSTLY_Q8_0, "q2_k": LLAMA_FTYPE_MOSTLY_Q2_K,
    "q3_k_m": LLAMA_FTYPE_MOSTLY_Q3_K_M, "q4_k_s": LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "q4_k_m": LLAMA_FTYPE_MOSTLY_Q4_K_M, "q5_k_s": LLAMA_FTYPE_MOSTLY_Q5_K_S,
    "q5_k_m": LLAMA_FTYPE_MOSTLY_Q5_K_M, "q6_k": LLAMA_FTYPE_MOSTLY_Q6_K,
    "iq4_nl": LLAMA_FTYPE_MOSTLY_IQ4_NL, "iq4_xs": LLAMA_FTYPE_MOSTLY_IQ4_XS,
}


def quantize(src, dst, ftype="q8_0", *, int nthread=0, bint allow_requantize=False,
             bint quantize_output_tensor=True, bint pure=False, bint only_copy=False):
    """Quantize the GGUF model ``src`` into ``dst`` (ftype: a name from FTYPES)."""
    key = ftype.lower() if isinstance(ftype, str) else ftype
    if key not in FTYPES:
        raise ValueError(f"unknown ftype {ftype!r}; expected one of {sorted(FTYPES)}")
    if not _os.path.isfile(_os.fspath(src)):
        raise ModelLoadError(f"model file not found: {src}")
    cdef llama_model_quantize_params qp = llama_model_quantize_default_params()
    qp.nthread = nthread
    qp.ftype = <llama_ftype>FTYPES[key]
    qp.allow_requantize = allow_requantize
    qp.quantize_output_tensor = quantize_output_tensor
    qp.pure = pure
    qp.only_copy = only_copy
    cdef bytes bs = _fs(src), bd = _fs(dst)
    cdef const char * cs = bs
    cdef const char * cd = bd
    cdef uint32_t rc
    with nogil:
        rc = llama_model_quantize(cs, cd, &qp)
    if rc != 0:
        raise PyllamaError(f"quantize {src} -> {dst} ({ftype}) failed (code {rc}; see the pyllama.llama_cpp log)")


_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}


def list_devices(memory=True):
    """The backend devices llama.cpp can use, with their memory in bytes (``memory=False``
    skips the memory query, which for an RPC device is a round trip to its server; a device
    that cannot answer has ``None`` and an ``error``)."""
    cdef size_t i, free_mem, total_mem
    cdef ggml_backend_dev_t d
    out = []
    for i in range(ggml_backend_dev_count()):
        d = ggml_backend_dev_get(i)
        free_mem = 0
        total_mem = 0
        info = {
            "name": ggml_backend_dev_name(d).decode(),
            "description": ggml_backend_dev_description(d).decode(),
            "type": _DEV_TYPES.get(<int>ggml_backend_dev_type_of(d), "unknown"),
            "backend": ggml_backend_reg_name(ggml_backend_dev_backend_reg(d)).decode(),
            "memory_free": None,
            "memory_total": None,
        }
        if memory:
            try:
                ggml_backend_dev_memory(d, &free_mem, &total_mem)
                info["memory_free"] = free_mem
                info["memory_total"] = total_mem
            except RuntimeError as e:
                # an RPC device whose server is gone aborts in there
                info["error"] = str(e)
        out.append(info)
    return out


def local_devices():
    """The names of this machine's GPUs (integrated ones when there is no discrete one): the
    devices llama.cpp picks by default, without the RPC devices registered in this process."""
    devs = [d for d in list_devices(memory=False) if d["backend"] != "RPC"]
    gpus = [d["name"] for d in devs if d["type"] == "gpu"]
    return tuple(gpus or [d["name"] for d in devs if d["type"] == "igpu"])


def _rpc_registered():
    cdef size_t i
    for i in range(ggml_backend_dev_count()):
        if ggml_backend_reg_name(ggml_backend_dev_backend_reg(ggml_backend_dev_get(i))) == b"RPC":
            return True
    return False


def list_backends():
    """Names of the backends compiled in (CPU, CUDA, Vulkan, RPC...)."""
    cdef size_t i
    return [ggml_backend_reg_name(ggml_backend_reg_get(i)).decode() for i in range(ggml_backend_reg_count())]


def system_info():
    return llama_print_system_info().decode()


def llama_cpp_version():
    return llama_version().decode() if llama_version() != NULL else ""


def supports_gpu_offload():
    return llama_supports_gpu_offload()


def supports_mmap():
    return llama_supports_mmap()


def supports_rpc():
    return llama_supports_rpc()


def max_devices():
    return llama_max_devices()


def max_parallel_sequences():
    return llama_max_parallel_sequences()


def time_us():
    return llama_time_us()


# ---- chat (llama.cpp's common library through _chat_shim) ----

cdef class ChatTemplates:
    """The chat templates of a model (or an override), rendered by llama.cpp's Jinja engine."""
    cdef shim.ChatTemplates * ptr
    cdef readonly Model model

    def __cinit__(self):
        self.ptr = NULL

    def __init__(self, Model model=None, template_override=None):
        cdef string tmpl = (template_override or "").encode()
        cdef const llama_model * mp = NULL
        if model is not None:
            model._check()
            mp = model.ptr
        try:
            self.ptr = new shim.ChatTemplates(mp, tmpl)
        except (ValueError, RuntimeError) as e:
            raise ChatTemplateError(f"chat template: {e}") from None
        self.model = model

    def __dealloc__(self):
        if self.ptr != NULL:
            del self.ptr
            self.ptr = NULL

    def close(self):
        if self.ptr != NULL:
            del self.ptr
            self.ptr = NULL

    cdef int _check(self) except -1:
        if self.ptr == NULL:
            raise ClosedError("the chat templates are closed")
        return 0

    def source(self, variant=None):
        """The Jinja source of the default template (or of ``variant``, e.g. "tool_use"); None if absent."""
        self._check()
        cdef string v = (variant or "").encode()
        s = self.ptr.source(v).decode("utf-8", "replace")
        return s or None

    @property
    def caps(self):
        self._check()
        return _json.loads(self.ptr.caps_json().decode())

    def render(self, request):
        """Render messages (+ tools, ...) to a prompt. ``request`` is a dict; see _chat_shim.h."""
        self._check()
        cdef string req = _json.dumps(request, ensure_ascii=False).encode()
        cdef string out
        try:
            with nogil:
                out = self.ptr.render(req)
        except (ValueError, RuntimeError) as e:
            raise ChatTemplateError(str(e)) from None
        return _json.loads(out.decode("utf-8", "replace"))


def chat_parse(text, syntax, bint is_partial=False):
    """Parse model output into {content, reasoning_content, tool_calls} (``syntax`` from render())."""
    cdef string t = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    cdef string s = (syntax if isinstance(syntax, str) else _json.dumps(syntax)).encode()
    cdef string out
    try:
        with nogil:
            out = shim.chat_parse(t, is_partial, s)
    except (ValueError, RuntimeError) as e:
        raise ChatTemplateError(f"chat parse: {e}") from None
    return _json.loads(out.decode("utf-8", "replace"))


def json_schema_to_grammar(schema):
    """A JSON schema (dict or JSON text) as a GBNF grammar."""
    cdef string s = (schema if isinstance(schema, str) else _json.dumps(schema)).encode()
    cdef string out
    try:
        with nogil:
            out = shim.json_schema_to_gbnf(s)
    except (ValueError, RuntimeError) as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None
    return out.decode()
