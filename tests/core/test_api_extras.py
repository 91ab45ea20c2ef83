"""The example script, from_pretrained (with a stand-in hub), chat_format overrides, repeated load/free."""
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import pyllama

ROOT = Path(__file__).resolve().parents[2]


def test_example_generates_text(tiny_model_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), str(tiny_model_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("model:") and "parameters" in lines[0]
    assert len(lines) >= 2 and lines[1].strip(), out.stdout


def test_from_pretrained_uses_hf_hub_download(monkeypatch, tiny_model_path):
    calls = {}

    def fake_download(repo_id, filename, local_dir=None, cache_dir=None, revision=None):
        calls.update(repo_id=repo_id, filename=filename, revision=revision)
        return str(tiny_model_path)

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(hf_hub_download=fake_download))
    with pyllama.Llama.from_pretrained("org/repo", "model.gguf", revision="main", n_ctx=128) as llm:
        assert llm.n_ctx() >= 128
    assert calls == {"repo_id": "org/repo", "filename": "model.gguf", "revision": "main"}


def test_from_pretrained_without_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match="huggingface_hub"):
        pyllama.Llama.from_pretrained("org/repo", "model.gguf")


def test_chat_format_override_and_fallback(tiny_model_path):
    # the llama-spm test model has no template: chatml is the fallback
    with pyllama.Llama(tiny_model_path, n_ctx=256) as llm:
        p = llm.apply_chat_template([{"role": "user", "content": "hi"}]).prompt
        assert "<|im_start|>user\nhi<|im_end|>" in p
    with pyllama.Llama(tiny_model_path, n_ctx=256, chat_format="llama3") as llm:
        p = llm.apply_chat_template([{"role": "user", "content": "hi"}]).prompt
        assert "<|start_header_id|>user<|end_header_id|>" in p
        r = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
        assert r["choices"][0]["message"]["role"] == "assistant"


def _rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_repeated_load_free_does_not_grow(tiny_model_path):
    def cycle():
        m = pyllama.Model(tiny_model_path)
        c = pyllama.Context(m, pyllama.ContextParams(n_ctx=256, n_batch=64))
        b = pyllama.Batch(8)
        b.add(1, 0, 0, True)
        c.decode(b)
        del m, c, b  # no close(): the garbage collector frees them

    for _ in range(3):
        cycle()
    before = _rss_kib()
    for _ in range(15):
        cycle()
    grown = _rss_kib() - before
    # one model + context is several MB; 15 leaked cycles would be far above this bound
    assert grown < 20 * 1024, f"RSS grew by {grown} KiB over 15 load/free cycles"
