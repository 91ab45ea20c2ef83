"""LoRA adapters: load, apply with a scale, remove; errors for bad files and the wrong model."""
import numpy as np
import pytest

import pyllama
from pyllama import Batch, Context, ContextParams
from pyllama.testing import write_random_lora


def write_lora(path, n_embd=64, n_layer=2, rank=4, seed=0):
    return write_random_lora(path, n_embd=n_embd, n_layer=n_layer, rank=rank, seed=seed)


def _logits(ctx, toks):
    ctx.memory_clear()
    b = Batch(64)
    b.add_sequence(toks, 0, 0)
    ctx.decode(b)
    return ctx.logits(-1, copy=True)


def test_lora_apply_scale_remove(tmp_path, tiny_model_path):
    m = pyllama.Model(tiny_model_path)
    lora = pyllama.LoraAdapter(m, write_lora(tmp_path / "lora.gguf"))
    assert lora.metadata["adapter.type"] == "lora"
    ctx = Context(m, ContextParams(n_ctx=128, n_batch=64))
    toks = m.vocab.tokenize("adapters change the output")
    base = _logits(ctx, toks)
    ctx.set_lora_adapters([(lora, 1.0)])
    assert ctx.lora_adapters == [lora]
    tuned = _logits(ctx, toks)
    assert not np.allclose(base, tuned, atol=1e-3)
    ctx.set_lora_adapters([(lora, 0.0)])
    np.testing.assert_allclose(_logits(ctx, toks), base, rtol=1e-4, atol=1e-4)
    ctx.set_lora_adapters([(lora, 0.5)])
    half = _logits(ctx, toks)
    assert not np.allclose(half, base, atol=1e-3) and not np.allclose(half, tuned, atol=1e-3)
    ctx.set_lora_adapters([])
    np.testing.assert_allclose(_logits(ctx, toks), base, rtol=1e-4, atol=1e-4)
    lora.close()
    lora.close()
    with pytest.raises(pyllama.ClosedError):
        ctx.set_lora_adapters([(lora, 1.0)])
    ctx.close()
    m.close()


def test_llama_lora_path(tmp_path, tiny_model_path):
    p = write_lora(tmp_path / "lora.gguf", seed=1)
    with pyllama.Llama(tiny_model_path, n_ctx=128) as base, \
            pyllama.Llama(tiny_model_path, n_ctx=128, lora_path=str(p), lora_scale=1.0) as tuned:
        assert base.ctx.lora_adapters == [] and len(tuned.ctx.lora_adapters) == 1
        a = base("Hello", max_tokens=1, temperature=0)
        b = tuned("Hello", max_tokens=1, temperature=0)
        assert not np.allclose(base.logits(), tuned.logits(), atol=1e-3)
        assert a["usage"] == b["usage"]


def test_lora_errors(tmp_path, tiny_model_path):
    m = pyllama.Model(tiny_model_path)
    with pytest.raises(pyllama.ModelLoadError, match="not found"):
        pyllama.LoraAdapter(m, tmp_path / "missing.gguf")
    with pytest.raises(pyllama.ModelLoadError):
        pyllama.LoraAdapter(m, write_lora(tmp_path / "wrong.gguf", n_embd=32))
    other = pyllama.Model(tiny_model_path)
    lora = pyllama.LoraAdapter(other, write_lora(tmp_path / "ok.gguf"))
    ctx = Context(m, ContextParams(n_ctx=64, n_batch=16))
    with pytest.raises(ValueError, match="another model"):
        ctx.set_lora_adapters([(lora, 1.0)])
    other.close()  # frees its adapters too
    assert lora.closed
    ctx.close()
    m.close()
