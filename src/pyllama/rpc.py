"""Offload a model's layers to other machines with ggml's RPC backend.

Start a worker on each machine with ``python -m pyllama.rpc_server --host 0.0.0.0 --port 50052``
(see :mod:`pyllama.rpc_server`), then load with ``Llama(path, rpc_servers="host1:50052,host2:50052")``
or ``python -m pyllama.server -m model.gguf --rpc host1:50052,host2:50052``: the layers that
``n_gpu_layers`` offloads go to the workers' devices (``RPC0``, ``RPC1``, ...), split by their
memory, as llama.cpp's ``--rpc`` does.

A worker that is lost while a model uses it fails the decode that needed it with a
:class:`~pyllama.errors.DecodeError`; the model cannot be used again (its weights lived there).
"""
from __future__ import annotations

import socket
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from .errors import RPCError

DEFAULT_PORT = 50052


def parse_endpoints(servers: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    """``"h1:p1,h2:p2"`` (or a list of them) -> ``("h1:p1", "h2:p2")``, checked."""
    items = servers.split(",") if isinstance(servers, str) else list(servers)
    out = []
    for item in items:
        ep = str(item).strip()
        host, sep, port = ep.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"RPC server {ep!r}: expected host:port")
        out.append(ep)
    if not out:
        raise ValueError("no RPC servers given")
    return tuple(out)


def supported() -> bool:
    """Whether this build has ggml's RPC backend (GGML_RPC)."""
    from . import _core
    return bool(_core.supports_rpc())


def check_reachable(endpoint: str, timeout: float = 5.0) -> None:
    """Raise RPCError if nothing accepts TCP connections at ``endpoint``. (llama.cpp aborts on an
    unreachable server; this gives the reason first.)"""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise RPCError(f"cannot reach RPC server {endpoint}: {e.strerror or e}") from None


def add_servers(endpoints: Union[str, Iterable[str]], timeout: float = 5.0) -> List[str]:
    """Register the RPC servers (each once per process) and return their devices' names."""
    from . import _core

    names: List[str] = []
    for ep in parse_endpoints(endpoints):
        check_reachable(ep, timeout)
        try:
            names += _core._rpc_add_server(ep)
        except RuntimeError as e:
            raise RPCError(f"RPC server {ep}: {e}") from None
    return names


def model_devices(devices: Optional[Sequence[str]],
                  rpc_servers: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """The devices a model loads onto. Explicit ``devices`` win. With ``rpc_servers``: those
    servers' devices first, then the local GPUs (llama.cpp's default order). Without them: None,
    _core.Model's default (llama.cpp's, less the RPC devices another model registered)."""
    from . import _core

    rpc_names = add_servers(rpc_servers) if rpc_servers else []
    if devices is not None:
        return tuple(devices)
    if not rpc_names:
        return None
    return tuple(rpc_names) + tuple(_core.local_devices())
