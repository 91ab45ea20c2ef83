# ggml's RPC backend (see _rpc_shim.h); the Python side is pyllama.rpc and pyllama.rpc_server.

cdef extern from "_rpc_shim.h" namespace "pyllama":
    vector[string] _rpc_add_server_c "pyllama::rpc_add_server"(const string & endpoint) except + nogil
    void _rpc_start_server_c "pyllama::rpc_start_server"(
        const string & endpoint, const string & cache_dir, size_t n_threads,
        const vector[string] & devices) except + nogil


def _rpc_add_server(str endpoint):
    """Register the RPC server at ``host:port`` (once); the names of its devices."""
    cdef string ep = endpoint.encode()
    cdef vector[string] names
    with nogil:
        names = _rpc_add_server_c(ep)
    return [n.decode() for n in names]


def _rpc_start_server(str endpoint, cache_dir, size_t n_threads, devices):
    """Serve ggml RPC on ``host:port`` with the named devices; blocks (without the GIL)."""
    cdef string ep = endpoint.encode()
    cdef string cd = (cache_dir or "").encode()
    cdef vector[string] devs
    for d in devices:
        devs.push_back(d.encode())
    with nogil:
        _rpc_start_server_c(ep, cd, n_threads, devs)
