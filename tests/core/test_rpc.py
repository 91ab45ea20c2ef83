"""ggml's RPC backend: a model split over two ``python -m pyllama.rpc_server`` workers on loopback."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import pyllama
from pyllama import DecodeError, Llama, ModelParams, RPCError
from pyllama import rpc as pyrpc

pytestmark = pytest.mark.skipif(not pyllama._core.supports_rpc(), reason="built with -DGGML_RPC=OFF")

PROMPT = "The quick brown fox"


def greedy(llm: Llama, n: int = 32):
    out = llm.create_completion(PROMPT, max_tokens=n, temperature=0.0, logprobs=1)
    return out["choices"][0]["logprobs"]["tokens"]


def test_all_layers_on_two_workers_equal_the_cpu(tiny_model_path, rpc_workers, caplog):
    w1, w2 = rpc_workers(2)
    with Llama(tiny_model_path, n_ctx=256, seed=1) as local:
        want = greedy(local)
    caplog.set_level(logging.DEBUG, logger="pyllama.llama_cpp")
    with Llama(tiny_model_path, n_ctx=256, seed=1, n_gpu_layers=-1,
               rpc_servers=f"{w1.endpoint},{w2.endpoint}") as remote:
        got = greedy(remote)
    assert got == want
    log = caplog.text
    # every repeating layer and the output layer went to the workers, split between both
    assert "offloaded 3/3 layers to GPU" in log, log[-3000:]
    for w in (w1, w2):  # buffers are named RPC<device>[host:port]
        assert f"[{w.endpoint}] model buffer size" in log
    devs = {d["name"]: d for d in pyllama.list_devices()}
    assert devs["RPC0"]["backend"] == "RPC" and devs["RPC0"]["description"] in (w1.endpoint, w2.endpoint)
    assert "Accepted client connection" in w1.log() and "Accepted client connection" in w2.log()


def test_a_later_model_without_rpc_servers_stays_local(tiny_model_path, rpc_workers, caplog):
    (w,) = rpc_workers(1)
    with Llama(tiny_model_path, n_ctx=128, n_gpu_layers=-1, rpc_servers=[w.endpoint]) as remote:
        greedy(remote, 4)
    caplog.set_level(logging.DEBUG, logger="pyllama.llama_cpp")
    w.kill()  # a model that used it may not touch it any more
    with Llama(tiny_model_path, n_ctx=128, n_gpu_layers=-1) as local:
        assert len(greedy(local, 4)) == 4
    assert "RPC" not in "".join(r.getMessage() for r in caplog.records if "buffer size" in r.getMessage())


def test_worker_killed_mid_generation_fails_that_request(tiny_model_path, rpc_workers):
    w1, w2 = rpc_workers(2)
    llm = Llama(tiny_model_path, n_ctx=512, n_gpu_layers=-1, rpc_servers=[w1.endpoint, w2.endpoint])
    n = 0
    with pytest.raises(DecodeError, match=rf"RPC server ({w1.endpoint}|{w2.endpoint}): connection lost"):
        for _ in llm.create_completion(PROMPT, max_tokens=200, temperature=0.0, stream=True):
            n += 1
            if n == 5:
                w2.kill()
    assert n == 5  # the next decode after the loss failed: no token came from lost data
    # the model's weights lived on that worker: later requests fail the same way, promptly
    with pytest.raises(DecodeError, match="connection lost"):
        llm.create_completion(PROMPT, max_tokens=4)
    llm.close()  # freeing a model whose worker is gone works


def test_unreachable_and_malformed_servers(tiny_model_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RPCError, match=f"cannot reach RPC server 127.0.0.1:{port}"):
        Llama(tiny_model_path, n_gpu_layers=-1, rpc_servers=f"127.0.0.1:{port}")
    for bad in ("localhost", "h:0", "h:99999", ":1", ""):
        with pytest.raises(ValueError, match="rpc_servers"):
            ModelParams(rpc_servers=bad)
    assert pyrpc.parse_endpoints(" a:1 ,[::1]:2") == ("a:1", "[::1]:2")


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyllama.rpc_server", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_rpc_server_cli_errors(rpc_workers):
    r = run_cli("--help")
    assert r.returncode == 0 and "--threads" in r.stdout and "--device" in r.stdout and "--cache" in r.stdout
    r = run_cli("-d", "NoSuchDevice")
    assert r.returncode != 0 and "unknown device: NoSuchDevice" in r.stderr
    r = run_cli("-t", "0")
    assert r.returncode == 2 and "must be > 0" in r.stderr
    (w,) = rpc_workers(1)
    r = run_cli("-p", str(w.port))  # the port is taken
    assert r.returncode == 1 and "could not serve on 127.0.0.1:" in r.stderr, r.stderr


def test_rpc_server_warns_off_loopback_and_serves_cpu(rpc_workers):
    (w,) = rpc_workers(1, "-d", "CPU", host="127.0.0.2")  # any host but 127.0.0.1 gets the warning
    log = w.log()
    assert "Never expose the RPC server to an open network!" in log
    assert "CPU:" in log and f"endpoint       : {w.endpoint}" in log
