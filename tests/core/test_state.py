"""Memory (KV) API and per-sequence state save/restore."""
import numpy as np
import pytest

import pyllama
from pyllama import Batch, Context, ContextParams


@pytest.fixture()
def ctx(tiny_model):
    c = Context(tiny_model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=4))
    yield c
    c.close()


def _prefill(ctx, toks, seq):
    b = Batch(64)
    b.add_sequence(toks, 0, seq)
    ctx.decode(b)
    return ctx.logits(-1, copy=True)


def test_memory_api(tiny_model):
    # a unified KV cache: sequences share cells, so seq_keep drops the others everywhere
    ctx = Context(tiny_model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=4, kv_unified=True))
    toks = tiny_model.vocab.tokenize("one two three four five")
    _prefill(ctx, toks, 0)
    assert ctx.seq_pos_min(0) == 0
    assert ctx.seq_pos_max(0) == len(toks) - 1
    assert ctx.seq_pos_max(1) == -1
    ctx.seq_cp(0, 1)
    assert ctx.seq_pos_max(1) == len(toks) - 1
    assert ctx.seq_rm(1, 3, -1)
    assert ctx.seq_pos_max(1) == 2
    ctx.seq_keep(1)
    assert ctx.seq_pos_max(0) == -1 and ctx.seq_pos_max(1) == 2
    assert ctx.can_shift
    ctx.seq_add(1, 0, -1, 10)
    assert ctx.seq_pos_max(1) == 12
    ctx.memory_clear()
    assert ctx.seq_pos_max(1) == -1
    ctx.close()


def test_seq_state_roundtrip_bytes(ctx, tiny_model):
    v = tiny_model.vocab
    toks = v.tokenize("state save and restore")
    _prefill(ctx, toks, 0)
    data = ctx.seq_state_get(0)
    assert len(data) > 0
    ctx.seq_state_set(data, 2)
    assert ctx.seq_pos_max(2) == ctx.seq_pos_max(0)
    nxt = v.tokenize(" next", add_special=False)[0]
    b = Batch(4)
    b.add(nxt, len(toks), 0, True)
    ctx.decode(b)
    a = ctx.logits(-1, copy=True)
    b.clear()
    b.add(nxt, len(toks), 2, True)
    ctx.decode(b)
    np.testing.assert_allclose(ctx.logits(-1), a, rtol=1e-4, atol=1e-4)


def test_seq_state_file(ctx, tiny_model, tmp_path):
    toks = tiny_model.vocab.tokenize("saved to a file")
    _prefill(ctx, toks, 0)
    path = tmp_path / "slot0.bin"
    assert ctx.seq_state_save_file(path, 0, toks) > 0
    ctx.memory_clear()
    assert ctx.seq_state_load_file(path, 3) == toks
    assert ctx.seq_pos_max(3) == len(toks) - 1
    with pytest.raises(pyllama.StateError):
        ctx.seq_state_load_file(tmp_path / "missing.bin", 0)
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(pyllama.StateError):
        ctx.seq_state_load_file(tmp_path / "junk.bin", 0)


def test_whole_state_roundtrip(ctx, tiny_model):
    toks = tiny_model.vocab.tokenize("whole context state")
    _prefill(ctx, toks, 0)
    data = ctx.state_get()
    ctx.memory_clear()
    ctx.state_set(data)
    assert ctx.seq_pos_max(0) == len(toks) - 1


def test_abort_flag(ctx, tiny_model):
    b = Batch(64)
    b.add_sequence(tiny_model.vocab.tokenize("abort me"), 0, 0)
    ctx.request_abort(True)
    with pytest.raises(pyllama.DecodeAbortedError):
        ctx.decode(b)
    ctx.request_abort(False)
    ctx.memory_clear()
    ctx.decode(b)


def test_perf_counters(ctx, tiny_model):
    ctx.perf_reset()
    _prefill(ctx, tiny_model.vocab.tokenize("count these tokens"), 0)
    p = ctx.perf()
    assert p["n_p_eval"] > 0 and p["t_p_eval_ms"] >= 0
