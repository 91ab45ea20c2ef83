"""Embeddings through Llama: pooled and per token, normalization, OpenAI shape."""
import numpy as np
import pytest

import pyllama


@pytest.fixture(scope="module")
def emb_mean(tiny_model_path):
    with pyllama.Llama(tiny_model_path, n_ctx=256, n_batch=128, embedding=True, pooling_type="mean") as llm:
        yield llm


def test_pooled_embedding(emb_mean):
    e = emb_mean.embed("hello world")
    assert len(e) == 64 and all(np.isfinite(e))
    n = emb_mean.embed("hello world", normalize=True)
    assert np.linalg.norm(n) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(np.array(e) / np.linalg.norm(e), n, rtol=1e-5, atol=1e-6)
    a, b = emb_mean.embed(["hello world", "something else entirely"])
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)


def test_mean_pooling_equals_mean_of_token_embeddings(tiny_model_path, emb_mean):
    with pyllama.Llama(tiny_model_path, n_ctx=256, n_batch=128, embedding=True, pooling_type="none") as tok:
        rows = tok.embed("the mean of the rows")
        assert len(rows) == len(tok.tokenize("the mean of the rows"))
    np.testing.assert_allclose(np.mean(rows, axis=0), emb_mean.embed("the mean of the rows"), rtol=1e-4, atol=1e-5)


def test_create_embedding_shape(emb_mean):
    r = emb_mean.create_embedding(["a", "b c"])
    assert r["object"] == "list" and len(r["data"]) == 2
    assert r["data"][1]["index"] == 1 and len(r["data"][1]["embedding"]) == 64
    assert r["usage"]["prompt_tokens"] == len(emb_mean.tokenize("a")) + len(emb_mean.tokenize("b c"))


def test_truncate(emb_mean):
    long = "word " * 500
    assert len(emb_mean.embed(long)) == 64
    with pytest.raises(pyllama.ContextLimitError):
        emb_mean.embed(long, truncate=False)
