"""The connection side of the server (``pyllama.server.serve``): the connection cap, the header and
body read timeouts, and a SIGTERM that ends the process within its grace period even while a
worker thread is busy in a long C call (a tokenization of tens of MiB)."""
from __future__ import annotations

import json
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from pyllama.server import ConfigError, parse_args

MIB = 1024 * 1024


def connect(server, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_response(sock: socket.socket) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP/1.1 response (with a Content-Length) from a raw socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(body) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes the connection within ``timeout`` s (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


# ---------------------------------------------------------------- flags

def test_transport_flags_defaults_env_and_errors():
    http = parse_args(["-m", "x.gguf"], environ={}).http
    assert (http.max_connections, http.timeout_headers, http.shutdown_timeout) == (1024, 30.0, 30.0)
    env = {"LLAMA_ARG_MAX_CONNECTIONS": "7", "LLAMA_ARG_TIMEOUT_HEADERS": "2.5", "LLAMA_ARG_SHUTDOWN_TIMEOUT": "4"}
    http = parse_args(["-m", "x.gguf"], environ=env).http
    assert (http.max_connections, http.timeout_headers, http.shutdown_timeout) == (7, 2.5, 4.0)
    http = parse_args(["-m", "x.gguf", "--max-connections", "0", "--timeout-headers", "1", "--shutdown-timeout",
                       "0"], environ=env).http
    assert (http.max_connections, http.timeout_headers, http.shutdown_timeout) == (0, 1.0, 0.0)
    for bad in (["--max-connections", "-1"], ["--timeout-headers", "0"], ["--shutdown-timeout", "-2"]):
        with pytest.raises(ConfigError, match=bad[0]):
            parse_args(["-m", "x.gguf", *bad], environ={})


# ---------------------------------------------------------------- the connection cap

def test_connection_cap_refuses_with_503(start_server, tiny_model_path):
    server = start_server(tiny_model_path, "-np", "1", "-c", "256", "--max-connections", "4",
                          "--timeout-headers", "60", slot_save=False)
    idle: List[socket.socket] = [connect(server) for _ in range(4)]    # they send nothing
    try:
        time.sleep(0.3)
        extra = connect(server)
        with extra:
            extra.sendall(GET_HEALTH)
            status, headers, body = read_response(extra)
            assert status == 503, body
            assert headers["retry-after"] == "1" and headers["connection"].lower() == "close"
            err = json.loads(body)["error"]
            assert err["code"] == 503 and err["type"] == "unavailable_error"
            assert "too many connections" in err["message"]
            assert closed_by_peer(extra, 5)
        # the four were accepted: each can still make a request
        idle[0].sendall(GET_HEALTH)
        assert read_response(idle[0])[0] == 200
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while True:     # the server sees the four close a moment later
        r = server.get("/health", timeout=5)
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert r.status == 200, r


# ---------------------------------------------------------------- header and body timeouts

@pytest.fixture(scope="module")
def quick_server(start_server, tiny_model_path):
    """Header timeout 1 s, body (read) timeout 1 s."""
    return start_server(tiny_model_path, "-np", "1", "-c", "256", "--timeout-headers", "1", "--timeout", "1",
                        slot_save=False)


def test_incomplete_head_and_silent_connection_are_closed(quick_server):
    partial, silent = connect(quick_server), connect(quick_server)
    with partial, silent:
        t0 = time.monotonic()
        partial.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")     # and never the blank line
        assert closed_by_peer(partial, 5)
        assert closed_by_peer(silent, 5)
        elapsed = time.monotonic() - t0
    assert 0.7 < elapsed < 3.5, elapsed
    assert quick_server.get("/health").status == 200


def test_slowloris_is_closed(quick_server):
    with connect(quick_server) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 8:
            try:
                s.sendall(b"a")                     # one header byte every 0.3 s
            except OSError:
                closed = True
                break
            r, _, _ = select.select([s], [], [], 0.3)
            if r:
                try:
                    closed = s.recv(65536) == b""
                except ConnectionResetError:
                    closed = True
                if closed:
                    break
        elapsed = time.monotonic() - t0
    assert closed and elapsed < 3.5, elapsed


def test_keepalive_requests_and_a_long_request_are_not_cut(quick_server):
    conn = quick_server.connection(timeout=30)
    try:
        for _ in range(2):
            conn.request("GET", "/health")
            r = conn.getresponse()
            assert r.status == 200 and r.read()
            time.sleep(0.5)
        # a request whose handler runs longer than the header timeout, on the same connection
        text = "hello world " * 300_000
        t0 = time.monotonic()
        conn.request("POST", "/tokenize", body=json.dumps({"content": text}).encode(),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200
        assert len(json.loads(r.read())["tokens"]) >= 600_000
        assert time.monotonic() - t0 > 1.2          # it outlived the 1 s header timeout
        # idle after its response: closed by the header timeout
        assert closed_by_peer(conn.sock, 4)
    finally:
        conn.close()


def test_client_that_does_not_read_its_response_is_dropped(quick_server):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    with s:
        s.connect(("127.0.0.1", quick_server.port))
        body = json.dumps({"content": "hello world " * 150_000, "with_pieces": True}).encode()
        s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        r, _, _ = select.select([s], [], [], 30)        # the response starts (about 10 MB of JSON)
        assert r
        time.sleep(3.5)                                 # and is not read for longer than --timeout (1 s)
        s.settimeout(5)
        data = b""
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    n = int(next(ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length:")).split(b":")[1])
    assert len(rest) < n                                # cut off: the server gave up on this client


def test_slow_body_gets_408(quick_server):
    with connect(quick_server) as s:
        s.sendall(b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n" + b'{"content"')   # 10 of the 100 bytes, then silence
        t0 = time.monotonic()
        status, _, body = read_response(s)
        elapsed = time.monotonic() - t0
    assert status == 408, body
    err = json.loads(body)["error"]
    assert err["code"] == 408 and err["type"] == "invalid_request_error" and "--timeout" in err["message"]
    assert 0.7 < elapsed < 4, elapsed
    assert quick_server.get("/health").status == 200


# ---------------------------------------------------------------- SIGTERM

class BusyWorker:
    """POST /tokenize with ``mib`` MiB of text in a thread: seconds of work inside llama_tokenize
    (on a worker thread, the GIL released) before any answer."""

    def __init__(self, server, mib: int = 32):
        self.body = json.dumps({"content": "hello world, the quick brown fox. " * (mib * MIB // 34)}).encode()
        self.server = server
        self.result: Optional[object] = None
        self.sent = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conn = self.server.connection(timeout=120)
        try:
            conn.request("POST", "/tokenize", body=self.body, headers={"Content-Type": "application/json"})
            self.sent.set()
            self.result = conn.getresponse().status
        except Exception as e:  # noqa: BLE001 - the server went away: expected
            self.result = e
        finally:
            conn.close()


def wait_exit(server, timeout: float) -> Tuple[Optional[int], float]:
    t0 = time.monotonic()
    try:
        rc = server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        rc = None
    return rc, time.monotonic() - t0


def test_sigterm_exits_within_grace_while_a_worker_is_busy(start_server, chat_model_path):
    server = start_server(chat_model_path, "-np", "1", "-c", "256", "--shutdown-timeout", "2", slot_save=False)
    busy = BusyWorker(server)
    assert busy.sent.wait(30)
    time.sleep(1.5)                                 # the body is read and decoded; tokenizing it takes >10 s
    assert busy.result is None                      # no answer yet
    server.proc.send_signal(signal.SIGTERM)
    rc, elapsed = wait_exit(server, 2 + 5 + 5)
    assert rc is not None, f"still running {elapsed:.1f} s after SIGTERM:\n{server.log()}"
    busy.thread.join(10)
    log = server.log()
    assert elapsed < 2 + 5, (elapsed, log)
    assert rc == 0, log
    # it exited while the worker was still tokenizing: the request never got an answer
    assert isinstance(busy.result, Exception), busy.result
    assert "busy thread" in log and "pyllama-frontend" in log, log


def test_second_sigterm_exits_at_once(start_server, chat_model_path):
    server = start_server(chat_model_path, "-np", "1", "-c", "256", "--shutdown-timeout", "60", slot_save=False)
    busy = BusyWorker(server)
    assert busy.sent.wait(30)
    time.sleep(1.0)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert server.proc.poll() is None               # the first one waits for the request (60 s)
    server.proc.send_signal(signal.SIGTERM)
    rc, elapsed = wait_exit(server, 10)
    assert rc == 1 and elapsed < 3, (rc, elapsed, server.log())
    assert "second SIGTERM" in server.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_idle_server_exits_0(start_server, tiny_model_path, sig):
    server = start_server(tiny_model_path, "-np", "1", "-c", "256", slot_save=False)
    assert server.get("/health").status == 200
    server.proc.send_signal(sig)
    rc, elapsed = wait_exit(server, 15)
    assert rc == 0 and elapsed < 5, (rc, elapsed, server.log())


WATCHDOG = """
import threading
from pyllama.server.serve import _Exit
_Exit(0.2).start_watchdog()
threading.Event().wait()      # a shutdown that never ends
"""


def test_watchdog_forces_the_exit():
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", WATCHDOG], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert "forcing the exit" in r.stderr
    assert 5 < elapsed < 12, elapsed
