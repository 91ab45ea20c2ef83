"""Ownership of C handles: close twice, use after close, GC without close, Context keeps Model alive."""
import gc
import weakref

import pytest

import pyllama
from pyllama import ClosedError, Context, ContextParams, Model, Sampler


def test_version_and_system():
    assert pyllama.__version__ == "0.1.0"
    assert "CPU" in pyllama.list_backends()
    devs = pyllama.list_devices()
    assert any(d["type"] == "cpu" and d["memory_total"] > 0 for d in devs)
    assert "CPU" in pyllama.system_info()


def test_model_metadata(tiny_model):
    m = tiny_model
    assert m.architecture == "llama"
    assert m.n_layer == 2 and m.n_embd == 64 and m.n_head == 4
    assert m.n_ctx_train == 2048
    assert m.n_params > 32000 * 64  # at least the embeddings
    assert m.size > 0
    meta = m.metadata
    assert meta["general.architecture"] == "llama"
    assert "tokenizer.ggml.model" in meta
    assert m.meta_get("no.such.key") is None
    assert "llama" in m.description.lower() or m.description
    assert m.vocab.n_vocab == 32000


def test_close_twice_and_use_after_close(tiny_model_path):
    m = Model(tiny_model_path)
    ctx = Context(m, ContextParams(n_ctx=128, n_batch=32))
    ctx.close()
    ctx.close()
    assert ctx.closed
    with pytest.raises(ClosedError):
        ctx.n_ctx
    with pytest.raises(ClosedError):
        ctx.decode(pyllama.Batch(4))
    m.close()
    m.close()
    assert m.closed
    with pytest.raises(ClosedError):
        m.n_params
    with pytest.raises(ClosedError):
        m.vocab.tokenize("hi")
    with pytest.raises(ClosedError):
        Context(m)
    with pytest.raises(ClosedError):
        Sampler(m)


def test_context_keeps_model_alive(tiny_model_path):
    m = Model(tiny_model_path)
    ref = weakref.ref(m)
    ctx = Context(m, ContextParams(n_ctx=128, n_batch=32))
    del m
    gc.collect()
    assert ref() is not None, "the context must keep its model alive"
    b = pyllama.Batch(4)
    b.add(1, 0, 0, True)
    ctx.decode(b)
    assert ctx.logits().shape == (32000,)
    del ctx, b
    gc.collect()
    assert ref() is None


def test_gc_without_close_does_not_crash(tiny_model_path):
    for _ in range(3):
        m = Model(tiny_model_path)
        ctx = Context(m, ContextParams(n_ctx=64, n_batch=16))
        s = Sampler(m)
        del m, ctx, s
        gc.collect()


def test_closing_model_under_a_live_context_raises_not_crashes(tiny_model_path):
    m = Model(tiny_model_path)
    ctx = Context(m, ContextParams(n_ctx=64, n_batch=16))
    ctx.close()
    m.close()
    with pytest.raises(ClosedError):
        ctx.seq_pos_max(0)


def test_llama_context_manager(tiny_model_path):
    with pyllama.Llama(tiny_model_path, n_ctx=256) as llm:
        assert llm.n_ctx() == 256
        assert llm.tokenize("hello")
    with pytest.raises(ClosedError):
        llm.tokenize("hello")
    llm.close()  # idempotent


def test_progress_callback(tiny_model_path):
    seen = []
    m = Model(tiny_model_path, progress_callback=lambda p: seen.append(p))
    assert seen and seen[-1] == pytest.approx(1.0)
    m.close()


def test_progress_callback_can_cancel_and_errors_propagate(tiny_model_path):
    with pytest.raises(pyllama.ModelLoadError):
        Model(tiny_model_path, progress_callback=lambda p: False)

    def boom(p):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        Model(tiny_model_path, progress_callback=boom)


def test_vocab_only(tiny_model_path):
    m = Model(tiny_model_path, pyllama.ModelParams(vocab_only=True))
    assert m.vocab.tokenize("Hello world", add_special=False) == [15043, 3186]
    m.close()


def test_kv_overrides(tiny_model_path):
    m = Model(tiny_model_path, pyllama.ModelParams(kv_overrides={"llama.context_length": 999}))
    assert m.n_ctx_train == 999
    m.close()


def test_log_bridge(tiny_model_path, caplog):
    import logging
    with caplog.at_level(logging.DEBUG, logger="pyllama.llama_cpp"):
        Model(tiny_model_path).close()
    assert any(r.name == "pyllama.llama_cpp" for r in caplog.records)
