# cython: language_level=3
#
# Cython declarations for _chat_shim.h: a thin C++ shim over llama.cpp's `common`
# chat library (chat templates, tool-call grammars, output parsing, JSON schema -> GBNF).
# Everything crossing the boundary is a std::string (JSON text where structured).
# Errors: std::invalid_argument -> ValueError, anything else -> RuntimeError (`except +`).

from libcpp.string cimport string

from pyllama._llama cimport llama_model


cdef extern from "_chat_shim.h" namespace "pyllama" nogil:

    cdef cppclass ChatTemplates:
        # model may be NULL only when template_override is non-empty
        ChatTemplates(const llama_model * model, const string & template_override) except +
        # variant: "" (default) or "tool_use"; returns "" when absent
        string source(const string & variant) except +
        # JSON object of template capabilities
        string caps_json() except +
        # request JSON -> {"prompt", "grammar", ..., "syntax"} JSON
        string render(const string & request_json) except +

    # syntax_json: render()'s "syntax" value, verbatim
    string chat_parse(const string & text, bint is_partial, const string & syntax_json) except +
    string json_schema_to_gbnf(const string & schema_json) except +
