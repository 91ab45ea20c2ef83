"""Sampler.post_sampling_probs: the candidates the sampling chain left, in probability space."""
import numpy as np
import pytest

from pyllama import Batch, Context, ContextParams, SamplingParams, Sampler


@pytest.fixture
def ctx(tiny_model):
    c = Context(tiny_model, ContextParams(n_ctx=64, n_batch=16))
    b = Batch(16)
    b.add_sequence(tiny_model.vocab.tokenize("Once upon a time"), 0, 0)
    c.decode(b)
    yield c
    c.close()


def test_greedy_is_one_hot(tiny_model, ctx):
    s = Sampler(tiny_model, SamplingParams(temperature=0))
    tok = s.sample(ctx)
    assert s.post_sampling_probs(5) == (1.0, [(tok, 1.0)])
    assert s.post_sampling_probs(0) == (1.0, [])


def test_top_k_1_is_one_hot(tiny_model, ctx):
    s = Sampler(tiny_model, SamplingParams(temperature=0.8, top_k=1, seed=3))
    tok = s.sample(ctx)
    p, top = s.post_sampling_probs(5)
    assert tok == int(np.argmax(ctx.logits()))
    assert p == pytest.approx(1.0) and top == [(tok, pytest.approx(1.0))]


def test_top_k_3_at_most_3_summing_to_1(tiny_model, ctx):
    s = Sampler(tiny_model, SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=7))
    tok = s.sample(ctx)
    p, top = s.post_sampling_probs(10)
    assert 1 <= len(top) <= 3
    assert sum(q for _, q in top) == pytest.approx(1.0, abs=1e-5)
    assert [q for _, q in top] == sorted((q for _, q in top), reverse=True)
    assert all(0.0 < q <= 1.0 for _, q in top)
    assert dict(top)[tok] == pytest.approx(p)
    # the candidates are the 3 most likely tokens of the raw logits
    assert {t for t, _ in top} <= {t for t, _ in ctx.top_logprobs(-1, 3)}


def test_n_limits_and_temperature_reshapes(tiny_model, ctx):
    s = Sampler(tiny_model, SamplingParams(temperature=1.0, top_k=40, top_p=1.0, min_p=0.0, seed=1))
    s.sample(ctx)
    _, top2 = s.post_sampling_probs(2)
    _, top40 = s.post_sampling_probs(40)
    assert len(top2) == 2 and top40[:2] == top2
    assert sum(q for _, q in top40) == pytest.approx(1.0, abs=1e-5)
    # at temperature 1 with top_k the probabilities are the softmax of the 40 best raw logits
    x = ctx.logits().astype(np.float64)
    best = np.argsort(-x)[:40]
    e = np.exp(x[best] - x[best].max())
    expect = dict(zip(best.tolist(), (e / e.sum()).tolist()))
    for t, q in top40:
        assert q == pytest.approx(expect[t], rel=1e-3, abs=1e-6)


def test_before_sampling_raises(tiny_model):
    s = Sampler(tiny_model, SamplingParams(temperature=1.0))
    with pytest.raises(RuntimeError):
        s.post_sampling_probs(3)
