"""Server fixtures: real ``python -m pyllama.server`` processes and in-process apps.

- ``start_server(model, *flags)`` (module scope) starts a server subprocess on a free port and
  waits for ``/health`` to answer 200; every server a module starts is stopped at the module's
  end. Its stdout and stderr go to a log file, which is attached to the report of a failed test
  (and to the error when the server does not come up).
- ``inproc(argv, scenario, **config)`` runs ``scenario(client)`` against ``create_app`` under
  aiohttp's TestServer/TestClient in a fresh event loop (plain ``asyncio.run``: no pytest plugin);
  ``config`` overrides fields of the parsed ServerConfig (``ServerConfig.with_``: by name or path).

Servers run with one thread (``-t 1 -tb 1``): the models are tiny, and on a busy machine
ggml's spinning worker threads slow decoding down by an order of magnitude.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from pyllama.testing import write_random_model
from tool_support import QWEN25, TEMPLATES_DIR  # noqa: E402  (tests/server is on sys.path)

ONE_THREAD = ["-t", "1", "-tb", "1"]
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Response:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:300]!r}>"


def sse_data(lines: Iterator[bytes]) -> Iterator[str]:
    """The ``data:`` payloads of a server-sent event stream (comments and blank lines skipped)."""
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data: "):
            yield line[len("data: "):]
        elif line.startswith("error: "):
            raise AssertionError(f"error event in the stream: {line}")


class ServerProcess:
    """One ``python -m pyllama.server`` subprocess."""

    def __init__(self, model: os.PathLike, flags: Tuple[str, ...], workdir: Path, env: Optional[dict] = None):
        self.model = str(model)
        self.flags = list(flags)
        self.workdir = workdir
        self.port = free_port()
        self.log_path = workdir / "server.log"
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> List[str]:
        return [sys.executable, "-m", "pyllama.server", "-m", self.model, "--port", str(self.port), *self.flags]

    def start(self, timeout: float = START_TIMEOUT) -> "ServerProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(self.env or {}))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = self.request("GET", "/health", timeout=2)
                if r.status == 200:
                    return self
                last = repr(r)
            except OSError as e:
                last = repr(e)
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the server did not become healthy in {timeout}s ({last}):\n{self.log()}")

    def log(self, tail: int = 20000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                timeout: float = 60, raw: Optional[bytes] = None) -> Response:
        conn = self.connection(timeout)
        try:
            hdrs = dict(headers or {})
            data = raw
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def stream(self, path: str, body: Any, headers: Optional[Dict[str, str]] = None,
               timeout: float = 60) -> List[str]:
        """POST a streaming request; the list of its ``data:`` payloads."""
        conn = self.connection(timeout)
        try:
            conn.request("POST", path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            assert r.status == 200, (r.status, r.read())
            assert r.getheader("Content-Type", "").startswith("text/event-stream")
            return list(sse_data(iter(r.readline, b"")))
        finally:
            conn.close()

    def slots(self) -> List[dict]:
        r = self.get("/slots")
        assert r.status == 200, r
        return r.json()

    def wait_idle(self, timeout: float = 10.0) -> List[dict]:
        deadline = time.monotonic() + timeout
        while True:
            info = self.slots()
            if not any(s["is_processing"] for s in info):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"slots still busy after {timeout}s: {info}")
            time.sleep(0.05)

    def metrics(self) -> Dict[str, float]:
        """GET /metrics parsed with prometheus_client: {sample name: value}."""
        from prometheus_client.parser import text_string_to_metric_families
        r = self.get("/metrics")
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("text/plain")
        out: Dict[str, float] = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                out[s.name] = s.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> Optional[int]:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report carries the logs of the servers it used."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        seen = set()
        for name, val in getattr(item, "funcargs", {}).items():
            servers = [val] if isinstance(val, ServerProcess) else getattr(val, "servers", [])
            for s in servers:
                if isinstance(s, ServerProcess) and id(s) not in seen:
                    seen.add(id(s))
                    rep.sections.append((f"server log ({name}, port {s.port})", s.log()))


class ServerFactory:
    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.servers: List[ServerProcess] = []

    def __call__(self, model: os.PathLike, *flags: str, env: Optional[dict] = None,
                 slot_save: bool = True) -> ServerProcess:
        workdir = self.tmp_path_factory.mktemp("server")
        extra: List[str] = []
        if slot_save:
            (workdir / "slots").mkdir()
            extra = ["--slot-save-path", str(workdir / "slots")]
        s = ServerProcess(model, (*ONE_THREAD, *extra, *flags), workdir, env)
        self.servers.append(s)
        s.start()
        return s

    def stop_all(self) -> None:
        for s in self.servers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - killed instead
                s.kill()


@pytest.fixture(scope="module")
def start_server(tmp_path_factory):
    """Start a server subprocess: ``start_server(model_path, *flags)``; all stop at the module's end."""
    factory = ServerFactory(tmp_path_factory)
    yield factory
    factory.stop_all()


STANDARD = ("-np", "4", "-c", "2048", "--metrics")


@pytest.fixture(scope="module")
def chat_server(start_server, chat_model_path) -> ServerProcess:
    """The chat model (qwen2 vocab, Qwen 2.5 tool template): 4 slots of 512 tokens, metrics, slot files."""
    return start_server(chat_model_path, *STANDARD)


@pytest.fixture(scope="session")
def template_model(models_dir, request):
    """``template_model(vocab, template file)``: a random-weights model carrying that chat template."""
    cache: Dict[Tuple[str, str], Path] = {}

    def make(vocab: str, template: str) -> Path:
        if (vocab, template) == ("qwen2", QWEN25):
            return request.getfixturevalue("chat_model_path")
        if (vocab, template) not in cache:
            cache[vocab, template] = write_random_model(
                models_dir / f"tools-{vocab}-{Path(template).stem}.gguf", vocab=vocab, n_embd=64, n_layer=2,
                n_head=4, n_ff=128, ftype="f32", seed=2, chat_template=(TEMPLATES_DIR / template).read_text())
        return cache[vocab, template]

    return make


@pytest.fixture(scope="session")
def fim_model_path(models_dir) -> Path:
    """deepseek-coder vocab: it has FIM_PRE/FIM_SUF/FIM_MID tokens (for /infill)."""
    return write_random_model(models_dir / "fim-f32.gguf", vocab="deepseek-coder", n_embd=64, n_layer=2,
                              n_head=4, n_ff=128, ftype="f32", seed=3)


def run_inproc(argv: List[str], scenario: Callable[[Any], Awaitable[Any]], **config: Any) -> Any:
    """Run ``await scenario(client)`` against an in-process app (aiohttp TestServer + TestClient)."""
    from aiohttp.test_utils import TestClient, TestServer

    from pyllama.server import create_app, parse_args, wait_ready

    async def main() -> Any:
        cfg = parse_args([*ONE_THREAD, *argv], environ={}).with_(**config)
        app = create_app(cfg)
        async with TestClient(TestServer(app)) as client:
            await wait_ready(app, timeout=START_TIMEOUT)
            return await scenario(client)

    return asyncio.run(main())


@pytest.fixture()
def inproc():
    """``inproc(argv, scenario, **config_overrides)``: see run_inproc."""
    return run_inproc
