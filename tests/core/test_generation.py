"""Generation through Llama and the core: determinism, seeds, stops, limits, streaming, batch logits."""
import numpy as np
import pytest

import pyllama
from pyllama import Batch, Context, ContextParams, Sampler, SamplingParams

PROMPT = "The quick brown fox"


def test_greedy_is_deterministic(llm):
    a = llm(PROMPT, max_tokens=24, temperature=0)
    llm.reset()
    b = llm(PROMPT, max_tokens=24, temperature=0)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    assert a["usage"]["completion_tokens"] == 24
    assert a["choices"][0]["finish_reason"] == "length"


def test_seeded_sampling_repeats_and_seeds_differ(llm):
    kw = dict(max_tokens=24, temperature=1.5, top_k=0, top_p=1.0, min_p=0.0)
    a = llm(PROMPT, seed=123, **kw)["choices"][0]["text"]
    b = llm(PROMPT, seed=123, **kw)["choices"][0]["text"]
    c = llm(PROMPT, seed=124, **kw)["choices"][0]["text"]
    assert a == b
    assert a != c


def test_prompt_cache_is_reused_and_gives_same_output(llm):
    a = llm(PROMPT, max_tokens=8, temperature=0)
    b = llm(PROMPT + " jumps", max_tokens=8, temperature=0)
    assert b["usage"]["prompt_tokens_details"]["cached_tokens"] >= len(llm.tokenize(PROMPT)) - 1
    llm.reset()
    c = llm(PROMPT + " jumps", max_tokens=8, temperature=0)
    assert c["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert b["choices"][0]["text"] == c["choices"][0]["text"]
    assert a["choices"][0]["text"]


def test_max_tokens(llm):
    for n in (1, 5):
        r = llm(PROMPT, max_tokens=n, temperature=0, ignore_eos=True)
        assert r["usage"]["completion_tokens"] == n
        assert r["choices"][0]["finish_reason"] == "length"


def test_stop_string_cuts_the_text(llm):
    full = llm(PROMPT, max_tokens=32, temperature=0, ignore_eos=True)["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:6]  # a stop that spans whatever token boundaries lie there
    r = llm(PROMPT, max_tokens=32, temperature=0, stop=[stop], ignore_eos=True)
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["choices"][0]["text"] == full[:full.find(stop)]


def test_streaming_matches_non_streaming(llm):
    full = llm(PROMPT, max_tokens=20, temperature=0)
    llm.reset()
    chunks = list(llm(PROMPT, max_tokens=20, temperature=0, stream=True))
    assert "".join(c["choices"][0]["text"] for c in chunks) == full["choices"][0]["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == full["choices"][0]["finish_reason"]
    assert chunks[-1]["usage"]["completion_tokens"] == 20


def test_echo_and_logprobs(llm):
    r = llm(PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=3)
    text = r["choices"][0]["text"]
    assert text.startswith(PROMPT)
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == 4
    for tl, top in zip(lp["token_logprobs"], lp["top_logprobs"]):
        assert tl <= 0.0
        assert len(top) == 3
        # greedy picks the most likely token: its logprob is the best of the top list
        assert tl == pytest.approx(max(top.values()), abs=1e-4)


def test_tokens_as_prompt(llm):
    toks = llm.tokenize(PROMPT)
    a = llm(toks, max_tokens=6, temperature=0)["choices"][0]["text"]
    llm.reset()
    b = llm(PROMPT, max_tokens=6, temperature=0)["choices"][0]["text"]
    assert a == b


def test_batch_logits_equal_one_by_one(tiny_model):
    toks = tiny_model.vocab.tokenize("Hello world, this is a test of batching")
    ctx = Context(tiny_model, ContextParams(n_ctx=128, n_batch=64, n_ubatch=64))
    b = Batch(64)
    for i, t in enumerate(toks):
        b.add(t, i, 0, True)
    ctx.decode(b)
    batched = [ctx.logits(i, copy=True) for i in range(len(toks))]
    ctx.seq_rm(0)
    one = []
    for i, t in enumerate(toks):
        b.clear()
        b.add(t, i, 0, True)
        ctx.decode(b)
        one.append(ctx.logits(-1, copy=True))
    for x, y in zip(batched, one):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
    ctx.close()


def test_two_sequences_in_one_batch_match_separate_runs(tiny_model):
    v = tiny_model.vocab
    p1, p2 = v.tokenize("first prompt here"), v.tokenize("a second, longer prompt goes here")
    ctx = Context(tiny_model, ContextParams(n_ctx=256, n_batch=64, n_seq_max=2))
    b = Batch(64)
    r1 = b.add_sequence(p1, 0, 0)
    r2 = b.add_sequence(p2, 0, 1)
    ctx.decode(b)
    both = ctx.logits(r1, copy=True), ctx.logits(r2, copy=True)
    for seq, p, expect in ((0, p1, both[0]), (1, p2, both[1])):
        ctx.memory_clear()
        b.clear()
        b.add_sequence(p, 0, seq)
        ctx.decode(b)
        np.testing.assert_allclose(ctx.logits(-1), expect, rtol=1e-4, atol=1e-4)
    ctx.close()


def test_sampler_chain_and_candidates(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=16))
    b = Batch(16)
    b.add_sequence(tiny_model.vocab.tokenize("Hi"), 0, 0)
    ctx.decode(b)
    s = Sampler(tiny_model, SamplingParams(temperature=0.7, top_k=5, seed=1))
    assert s.names == ["top-k", "top-p", "min-p", "temp-ext", "dist"]
    tok = s.sample(ctx)
    cands = s.candidates(3)
    assert 1 <= len(cands) <= 3 and cands[0][1] >= cands[-1][1]
    assert tok in [t for t, _ in s.candidates(5)]
    greedy = Sampler(tiny_model, SamplingParams(temperature=0))
    assert greedy.sample(ctx) == int(np.argmax(ctx.logits()))
    top = ctx.top_logprobs(-1, 5)
    assert top[0][0] == int(np.argmax(ctx.logits()))
    assert sum(np.exp(lp) for _, lp in top) <= 1.0 + 1e-6
    ctx.close()


def test_logit_bias_forces_a_token(llm):
    r = llm(PROMPT, max_tokens=3, temperature=0, logit_bias={1234: 100.0})
    piece = llm.model.vocab.token_to_piece(1234).decode()
    assert r["choices"][0]["text"] == piece * 3


def test_all_samplers_build_and_run(tiny_model):
    ctx = Context(tiny_model, ContextParams(n_ctx=64, n_batch=16))
    b = Batch(16)
    b.add_sequence(tiny_model.vocab.tokenize("Hi there"), 0, 0)
    ctx.decode(b)
    variants = [
        dict(temperature=0.8, dynatemp_range=0.5, typical_p=0.9, top_n_sigma=1.0, xtc_probability=0.5,
             repeat_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5, dry_multiplier=0.8),
        dict(mirostat=1, temperature=0.8),
        dict(mirostat=2, temperature=0.8),
    ]
    for kw in variants:
        s = Sampler(tiny_model, SamplingParams(seed=3, **kw))
        assert 0 <= s.sample(ctx) < 32000
        s.reset()
        s.close()
        s.close()
    ctx.close()


def test_grammar_constrains_output(llm):
    g = 'root ::= "yes" | "no"'
    r = llm(PROMPT, max_tokens=8, temperature=1.0, grammar=g, seed=5)
    assert r["choices"][0]["text"] in ("yes", "no")
    assert r["choices"][0]["finish_reason"] == "stop"


def test_json_schema_grammar_output_parses(llm):
    import json
    import jsonschema
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    g = pyllama.json_schema_to_grammar(schema)
    r = llm(PROMPT, max_tokens=200, temperature=0.5, grammar=g, seed=1)
    assert r["choices"][0]["finish_reason"] == "stop", r
    jsonschema.validate(json.loads(r["choices"][0]["text"]), schema)


def test_generate_batch_matches_one_by_one(tiny_model_path):
    prompts = ["The first prompt", "A second one, a bit longer than the first", "Third", "And the fourth"]
    with pyllama.Llama(tiny_model_path, n_ctx=1024, n_batch=64, n_parallel=4, seed=1) as llm:
        batch = llm.generate_batch(prompts, max_tokens=12, temperature=0, ignore_eos=True)
        m = llm._core.metrics_dict()
        llm.reset()
        solo = [llm(p, max_tokens=12, temperature=0, ignore_eos=True)["choices"][0]["text"] for p in prompts]
    assert [r["choices"][0]["text"] for r in batch] == solo
    assert all(r["usage"]["completion_tokens"] == 12 for r in batch)
    assert m["n_busy_slots_per_decode"] > 2, "the prompts must have been decoded together"
