"""``python -m pyllama.rpc_server``: a ggml RPC worker, as llama.cpp's ``rpc-server``.

It lends this machine's devices to a model loaded elsewhere (``--rpc host:port`` on the server,
``Llama(rpc_servers=...)`` in the library). Same options as upstream: ``-H/--host`` (default
127.0.0.1), ``-p/--port`` (50052), ``-t/--threads`` (CPU threads), ``-d/--device`` (devices to
serve, comma separated; default: the GPUs, else the CPU), ``-c/--cache`` (keep received tensors in
a local file cache, ``$LLAMA_CACHE/rpc`` or ``~/.cache/llama.cpp/rpc``).

The protocol has no authentication or encryption: anyone who can connect can read and write the
worker's memory. Bind to loopback or a private network only.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .rpc import DEFAULT_PORT

WARNING = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
WARNING: Host ('{host}') is != '127.0.0.1'
         Never expose the RPC server to an open network!
         This is an experimental feature and is not secure!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""


def _cache_dir() -> Path:
    base = os.environ.get("LLAMA_CACHE")
    if base:
        return Path(base) / "rpc"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg or Path.home() / ".cache") / "llama.cpp" / "rpc"


def _positive(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {s}")
    return v


def _port(s: str) -> int:
    v = int(s)
    if not 0 < v < 65536:
        raise argparse.ArgumentTypeError(f"not a port: {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pyllama.rpc_server",
                                 description="Serve this machine's ggml devices to remote pyllama/llama.cpp "
                                             "processes over ggml's RPC protocol (unauthenticated: "
                                             "loopback or a private network only).")
    ap.add_argument("-t", "--threads", type=_positive, default=max(1, (os.cpu_count() or 2) // 2),
                    help="number of threads for the CPU device (default: %(default)s)")
    ap.add_argument("-d", "--device", default=None,
                    help="comma-separated list of devices (default: the GPUs, else the CPU)")
    ap.add_argument("-H", "--host", default="127.0.0.1", help="host to bind to (default: %(default)s)")
    ap.add_argument("-p", "--port", type=_port, default=DEFAULT_PORT, help="port to bind to (default: %(default)s)")
    ap.add_argument("-c", "--cache", action="store_true", help="enable local file cache")
    return ap


def pick_devices(spec: Optional[str]) -> List[str]:
    """Upstream's choice: the named devices, else every GPU-like device, else the CPU."""
    from . import _core

    devs = [d for d in _core.list_devices(memory=False) if d["backend"] != "RPC"]
    names = [d["name"] for d in devs]
    if spec:
        wanted = [n for n in spec.replace("/", ",").split(",") if n]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise SystemExit(f"error: unknown device: {', '.join(unknown)}; available: {', '.join(names)}")
        return wanted
    gpus = [d["name"] for d in devs if d["type"] not in ("cpu", "accel")]
    return gpus or [d["name"] for d in devs if d["type"] == "cpu"][:1]


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from . import _core

    if args.host != "127.0.0.1":
        print(WARNING.format(host=args.host), file=sys.stderr, flush=True)
    devices = pick_devices(args.device)
    if not devices:
        print("No devices found", file=sys.stderr)
        return 1
    cache = ""
    if args.cache:
        path = _cache_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            print(f"Failed to create cache directory: {path}: {e}", file=sys.stderr)
            return 1
        cache = str(path)
    host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host
    endpoint = f"{host}:{args.port}"

    failure: List[BaseException] = []

    def serve() -> None:
        try:
            _core._rpc_start_server(endpoint, cache, args.threads, devices)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failure.append(e)

    # the server blocks in C without the GIL; the main thread stays free for signals
    t = threading.Thread(target=serve, name="rpc-server", daemon=True)
    t.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while t.is_alive() and not stop.is_set():
        stop.wait(0.5)
    if stop.is_set():
        sys.stdout.flush()
        os._exit(0)  # the serving thread sits in accept(); nothing to clean up on our side
    msg = f": {failure[0]}" if failure else " (see above)"
    print(f"rpc_server: could not serve on {endpoint}{msg}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
