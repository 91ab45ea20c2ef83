"""Quantized models (Q8_0, Q4_0) load and generate: guards the AMX crash seen on some CPUs."""
import pytest

import pyllama


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0"])
def test_quantize_and_generate(tmp_path, tiny_model_path, ftype):
    out = tmp_path / f"tiny-{ftype}.gguf"
    pyllama.quantize(tiny_model_path, out, ftype)
    with pyllama.Llama(out, n_ctx=256, n_batch=64) as llm:
        assert llm.model.ftype.lower().startswith(ftype.replace("_", "_"))
        r = llm("Once upon a time", max_tokens=16, temperature=0, ignore_eos=True)
        assert r["usage"]["completion_tokens"] == 16
        # a batch of several tokens exercises the quantized matmul kernels (where AMX would fault)
        r2 = llm("Once upon a time " * 20, max_tokens=4, temperature=0, ignore_eos=True)
        assert r2["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize("ftype", ["q8_0", "q4_0"])
def test_generated_quantized_model(tmp_path, ftype):
    from pyllama.testing import write_random_model
    p = write_random_model(tmp_path / f"gen-{ftype}.gguf", vocab="llama-spm", n_embd=64, n_layer=2, n_head=4,
                           n_ff=128, ftype=ftype, seed=3)
    with pyllama.Llama(p, n_ctx=128, n_batch=64) as llm:
        r = llm("Hello " * 10, max_tokens=8, temperature=0, ignore_eos=True)
        assert r["usage"]["completion_tokens"] == 8
