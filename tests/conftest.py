"""Shared fixtures: small GGUF models the suite generates itself (seeded random weights, real vocab)."""
from __future__ import annotations

from pathlib import Path

import pytest

import pyllama
from pyllama.testing import write_random_model

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "vendor" / "llama.cpp" / "models"
TEMPLATES_DIR = MODELS_DIR / "templates"

# A template with tools (Qwen 2.5's), used for the chat model.
CHAT_TEMPLATE = "Qwen-Qwen2.5-7B-Instruct.jinja"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_model_path(models_dir) -> Path:
    """f32, llama-spm vocab (32000 tokens), 2 layers of 64: deterministic under batching."""
    return write_random_model(models_dir / "tiny-f32.gguf", vocab="llama-spm", n_embd=64, n_layer=2,
                              n_head=4, n_ff=128, ftype="f32", seed=1)


@pytest.fixture(scope="session")
def chat_model_path(models_dir) -> Path:
    """qwen2 vocab with Qwen 2.5's tool-capable chat template."""
    tmpl = (TEMPLATES_DIR / CHAT_TEMPLATE).read_text()
    return write_random_model(models_dir / "chat-f32.gguf", vocab="qwen2", n_embd=64, n_layer=2, n_head=4,
                              n_ff=128, ftype="f32", seed=2, chat_template=tmpl)


# Thinking templates for the reasoning budget, on the deepseek-llm vocab: there "<think>" and
# "</think>" are plain multi-token text, tokenized the same inside and outside the prompt.
THINKING_TEMPLATES = {
    "opens": "Qwen3.5-4B.jinja",            # the generation prompt opens <think>: the reply starts inside
    "self": "Qwen-Qwen3-0.6B.jinja",        # the model opens <think> itself
}


@pytest.fixture(scope="session")
def thinking_model_path(models_dir):
    """``thinking_model_path("opens" | "self")``: a random-weights model with that thinking template."""
    cache = {}

    def make(kind: str) -> Path:
        if kind not in cache:
            tmpl = (TEMPLATES_DIR / THINKING_TEMPLATES[kind]).read_text()
            cache[kind] = write_random_model(models_dir / f"thinking-{kind}.gguf", vocab="deepseek-llm", n_embd=64,
                                             n_layer=2, n_head=4, n_ff=128, ftype="f32", seed=2, chat_template=tmpl)
        return cache[kind]

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    m = pyllama.Model(tiny_model_path)
    yield m
    m.close()


@pytest.fixture()
def llm(tiny_model_path):
    with pyllama.Llama(tiny_model_path, n_ctx=512, n_batch=128, seed=42) as llm:
        yield llm


@pytest.fixture(scope="session")
def chat_llm(chat_model_path):
    with pyllama.Llama(chat_model_path, n_ctx=2048, n_batch=256, seed=7) as llm:
        yield llm


class RPCWorker:
    """One ``python -m pyllama.rpc_server`` subprocess on a free loopback port."""

    def __init__(self, workdir: Path, *flags: str, host: str = "127.0.0.1"):
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]
        self.host = host
        self.endpoint = f"{host}:{self.port}"
        self.log_path = workdir / f"rpc-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyllama.rpc_server", "-H", host, "-p", str(self.port), "-t", "1", *flags],
                stdout=log, stderr=subprocess.STDOUT)

    def wait_listening(self, timeout: float = 30.0) -> "RPCWorker":
        import socket
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpc_server exited with {self.proc.returncode}:\n{self.log()}")
            # the server prints its banner before it listens: wait for the port itself
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"rpc_server is not listening after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture()
def rpc_workers(tmp_path):
    """``rpc_workers(n)``: n RPC workers listening on loopback; all killed after the test."""
    started = []

    def start(n: int = 2, *flags: str, host: str = "127.0.0.1"):
        ws = [RPCWorker(tmp_path, *flags, host=host) for _ in range(n)]
        started.extend(ws)
        return [w.wait_listening() for w in ws]

    yield start
    for w in started:
        w.kill()
