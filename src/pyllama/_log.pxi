# llama.cpp / ggml log -> Python logging (logger "pyllama.llama_cpp").

_llama_logger = _logging.getLogger("pyllama.llama_cpp")
# ggml_log_level: NONE=0, DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5
_LEVELS = (_logging.DEBUG, _logging.DEBUG, _logging.INFO, _logging.WARNING, _logging.ERROR)

cdef list _log_parts = []      # pieces of the line being assembled (llama.cpp logs in fragments)
cdef int _log_level = _logging.INFO


cdef void _log_callback(ggml_log_level level, const char * text, void * user_data) noexcept with gil:
    global _log_level
    try:
        if text == NULL:
            return
        if <int>level != 5:  # GGML_LOG_LEVEL_CONT continues the previous line
            _log_level = _LEVELS[<int>level] if <int>level < 5 else _logging.INFO
        if not _llama_logger.isEnabledFor(_log_level):
            return
        s = text.decode("utf-8", "replace")
        if not s.endswith("\n"):
            _log_parts.append(s)
            return
        if _log_parts:
            s = "".join(_log_parts) + s
            _log_parts.clear()
        _llama_logger.log(_log_level, s.rstrip("\n"))
    except BaseException:
        pass  # never raise into C


cdef void _install_log_bridge():
    llama_log_set(_log_callback, NULL)


def _set_log_bridge(bint enabled):
    """Route llama.cpp logs to Python logging (True) or silence them (False)."""
    if enabled:
        llama_log_set(_log_callback, NULL)
    else:
        llama_log_set(_log_silent, NULL)


cdef void _log_silent(ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    pass
