"""Bad inputs raise clear Python exceptions and never abort the process."""
import pytest

import pyllama
from pyllama import (Batch, BatchError, Context, ContextParams, ModelParams, Sampler, SamplingParams,
                     TokenizeError)


def test_missing_model_file(tmp_path):
    with pytest.raises(pyllama.ModelLoadError, match="not found"):
        pyllama.Model(tmp_path / "nope.gguf")


def test_not_a_gguf(tmp_path):
    p = tmp_path / "junk.gguf"
    p.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(pyllama.ModelLoadError):
        pyllama.Model(p)


@pytest.mark.parametrize("kw", [dict(n_ctx=-1), dict(n_batch=0), dict(n_ubatch=0), dict(n_seq_max=0),
                                dict(n_seq_max=100000), dict(n_threads=0), dict(flash_attn="maybe"),
                                dict(type_k="q9"), dict(pooling_type="median")])
def test_bad_context_params(kw):
    with pytest.raises(ValueError):
        ContextParams(**kw)


@pytest.mark.parametrize("kw", [dict(temperature=float("nan")), dict(repeat_penalty=0), dict(mirostat=3),
                                dict(top_p=float("inf")), dict(seed=2**40),
                                dict(samplers=("top_k", "bogus"))])
def test_bad_sampling_params(kw):
    with pytest.raises(ValueError):
        SamplingParams(**kw)


def test_bad_model_params():
    with pytest.raises(ValueError):
        ModelParams(split_mode="diagonal")
    with pytest.raises(ValueError):
        ModelParams(kv_overrides={"k" * 200: 1})


def test_token_out_of_range(tiny_model):
    v = tiny_model.vocab
    for bad in (-1, 32000, 10**9):
        with pytest.raises(TokenizeError):
            v.token_to_piece(bad)
        with pytest.raises(TokenizeError):
            v.detokenize([1, bad])
    assert not v.is_eog(-5)


def test_decode_with_out_of_range_token_is_an_exception(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=8))
    b = Batch(8)
    b.add(40000, 0, 0, True)  # beyond n_vocab: llama.cpp rejects the batch
    with pytest.raises(pyllama.DecodeError):
        ctx.decode(b)
    b.clear()
    b.add(1, 0, 0, True)
    ctx.decode(b)  # the context still works
    ctx.close()


def test_batch_limits():
    with pytest.raises(BatchError):
        Batch(0)
    b = Batch(2, n_seq_max=2)
    b.add(1, 0, 0)
    b.add(1, 1, [0, 1])
    with pytest.raises(BatchError, match="full"):
        b.add(1, 2, 0)
    b.clear()
    with pytest.raises(BatchError):
        b.add(1, 0, [0, 1, 1])
    with pytest.raises(BatchError):
        b.add(-3, 0, 0)
    with pytest.raises(BatchError):
        b.add(1, -1, 0)
    with pytest.raises(BatchError):
        b.add_sequence([1, 2, 3], 0, 0)
    with pytest.raises(pyllama.BatchError):
        Context  # noqa: B018 - keep the import used
        raise pyllama.BatchError("x")


def test_empty_batch_decode(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=8))
    with pytest.raises(BatchError):
        ctx.decode(Batch(4))
    ctx.close()


def test_logits_of_row_without_output(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=8))
    b = Batch(8)
    b.add(1, 0, 0, False)
    b.add(2, 1, 0, True)
    ctx.decode(b)
    with pytest.raises(IndexError):
        ctx.logits(0)
    assert ctx.logits(1).shape == (32000,)
    with pytest.raises(IndexError):
        ctx.logits(7)
    ctx.close()


def test_seq_id_out_of_range(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=8, n_seq_max=2))
    with pytest.raises(ValueError):
        ctx.seq_pos_max(2)
    with pytest.raises(ValueError):
        ctx.seq_cp(0, 5)
    ctx.close()


def test_bad_grammar(tiny_model):
    with pytest.raises(pyllama.GrammarError):
        Sampler(tiny_model, SamplingParams(grammar="root ::= ("))


def test_logit_bias_out_of_range(tiny_model):
    with pytest.raises(ValueError):
        Sampler(tiny_model, SamplingParams(logit_bias={50000: 1.0}))


def test_prompt_longer_than_context(tiny_model_path):
    with pyllama.Llama(tiny_model_path, n_ctx=256, n_batch=32) as llm:
        with pytest.raises(pyllama.ContextLimitError, match="256"):
            llm("word " * 400, max_tokens=4)
        # still usable
        assert llm("hi", max_tokens=2, temperature=0)["usage"]["completion_tokens"] >= 1


def test_prompt_token_out_of_range(llm):
    with pytest.raises(TokenizeError):
        llm([1, 99999], max_tokens=2)


def test_embedding_without_flag(llm):
    with pytest.raises(ValueError, match="embedding=True"):
        llm.embed("hello")


def test_quantize_errors(tmp_path, tiny_model_path):
    with pytest.raises(ValueError):
        pyllama.quantize(tiny_model_path, tmp_path / "x.gguf", "q99")
    with pytest.raises(pyllama.ModelLoadError):
        pyllama.quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "q8_0")


def test_unknown_device(tiny_model_path):
    with pytest.raises(ValueError, match="no device"):
        pyllama.Model(tiny_model_path, ModelParams(devices=("NOPE0",)))


def test_mean_pooling_with_uneven_ubatch_is_an_error_not_an_abort(tiny_model):
    # llama.cpp hits a GGML_ASSERT (process abort) for this combination; pyllama refuses it first
    with pytest.raises(pyllama.ContextError, match="multiple of n_seq_max"):
        Context(tiny_model, ContextParams(n_ctx=256, n_batch=64, n_ubatch=64, n_seq_max=3, embeddings=True,
                                          pooling_type="mean"))


def test_a_llama_cpp_abort_is_a_python_exception_not_a_dead_process():
    # GGML_ABORT / GGML_ASSERT on the calling thread go through pyllama's handler
    from pyllama import _core
    with pytest.raises(RuntimeError, match="llama.cpp aborted: .*boom"):
        _core._test_ggml_abort("boom")
    with pytest.raises(RuntimeError):
        _core._test_ggml_abort("again")      # the handler stays installed
