"""AsyncEngine on a real (f32, random-weights) model: concurrency, prefix reuse, abort, limits, lifecycle."""
import asyncio
import gc
import threading
import weakref

import pytest

import pyllama
from pyllama import ContextParams, SamplingParams
from pyllama.engine import AsyncEngine, Request

GREEDY = SamplingParams(temperature=0)


def run(coro):
    return asyncio.run(coro)


def make_engine(model, n_parallel=4, n_ctx=1024, **kw):
    cp_kw = {k: kw.pop(k) for k in list(kw) if k in ("embeddings", "pooling_type", "n_batch", "n_ubatch")}
    cp = ContextParams(n_ctx=n_ctx, n_batch=cp_kw.pop("n_batch", 64), n_ubatch=cp_kw.pop("n_ubatch", 64), **cp_kw)
    return AsyncEngine(model, cp, n_parallel=n_parallel, **kw)


def prompts(model, n):
    v = model.vocab
    return [tuple(v.tokenize(f"Request number {i}: tell me about topic {i * 7}")) for i in range(n)]


async def collect(engine, req):
    text, toks, final = [], [], None
    async for o in engine.generate(req):
        text.append(o.text)
        toks.extend(o.token_ids)
        if o.finished:
            final = o
    return "".join(text), toks, final


def test_concurrent_greedy_equals_solo(tiny_model):
    ps = prompts(tiny_model, 8)

    async def main():
        e = make_engine(tiny_model, n_parallel=4)
        e.start()
        try:
            solo = []
            for p in ps:
                solo.append(await collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=24, ignore_eos=True,
                                                     cache_prompt=False)))
            together = await asyncio.gather(*(collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=24,
                                                                 ignore_eos=True, cache_prompt=False))
                                              for p in ps))
            m = await e.metrics()
        finally:
            await e.stop()
        return solo, together, m

    solo, together, m = run(main())
    for (ts, toks_s, fs), (tt, toks_t, ft) in zip(solo, together):
        assert toks_s == toks_t
        assert ts == tt
        assert fs.finish_reason == ft.finish_reason == "length"
        assert ft.usage["completion_tokens"] == 24
    assert m["n_busy_slots_per_decode"] > 1.5, "requests must have shared decode steps"


def test_prefix_reuse(tiny_model):
    v = tiny_model.vocab
    base = v.tokenize("A long shared system prompt that many requests start with. " * 6)
    p1 = tuple(base + v.tokenize(" First question?", add_special=False))
    p2 = tuple(base + v.tokenize(" Second question, different?", add_special=False))

    async def main():
        e = make_engine(tiny_model, n_parallel=2)
        e.start()
        try:
            await collect(e, Request(prompt=p1, sampling=GREEDY, max_tokens=4))
            cached = await collect(e, Request(prompt=p2, sampling=GREEDY, max_tokens=12))
            uncached = await collect(e, Request(prompt=p2, sampling=GREEDY, max_tokens=12, cache_prompt=False))
        finally:
            await e.stop()
        return cached, uncached

    cached, uncached = run(main())
    from pyllama.engine.slot import common_prefix
    n_shared = common_prefix(p1, p2)
    assert n_shared >= len(base) - 1
    assert cached[2].usage["prompt_tokens_details"]["cached_tokens"] == n_shared
    assert cached[2].timings["prompt_n"] == len(p2) - n_shared
    assert uncached[2].usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert cached[1] == uncached[1]


def test_abort_mid_generation_frees_slot(tiny_model):
    ps = prompts(tiny_model, 3)

    async def main():
        e = make_engine(tiny_model, n_parallel=2)
        e.start()
        try:
            ref = [await collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=20, ignore_eos=True,
                                            cache_prompt=False)) for p in ps[1:]]
            victim = Request(prompt=ps[0], sampling=GREEDY, max_tokens=10_000, ignore_eos=True)
            got = []

            async def consume_then_quit():
                async for o in e.generate(victim):
                    got.extend(o.token_ids)
                    if len(got) >= 5:
                        break       # closing the stream aborts the request

            others = [asyncio.create_task(collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=20,
                                                             ignore_eos=True, cache_prompt=False)))
                      for p in ps[1:]]
            await consume_then_quit()
            res = await asyncio.gather(*others)
            for _ in range(50):
                slots = await e.slots()
                if not any(s["is_processing"] for s in slots):
                    break
                await asyncio.sleep(0.01)
            # explicit abort() of a running request gives a final "abort" output
            r = Request(prompt=ps[0], sampling=GREEDY, max_tokens=10_000, ignore_eos=True)
            finals = []
            async for o in e.generate(r):
                if o.finished:
                    finals.append(o)
                elif len(o.token_ids):
                    e.abort(r.id)
        finally:
            await e.stop()
        return ref, res, slots, got, finals

    ref, res, slots, got, finals = run(main())
    assert len(got) >= 5
    assert [x[1] for x in res] == [x[1] for x in ref]
    assert not any(s["is_processing"] for s in slots)
    assert finals[0].finish_reason == "abort"


def test_limits_and_errors_keep_the_engine_serving(tiny_model):
    async def main():
        e = make_engine(tiny_model, n_parallel=2, n_ctx=256)
        e.start()
        try:
            with pytest.raises(pyllama.ContextLimitError, match="256"):
                async for _ in e.generate(Request(prompt=tuple([1] + [100] * 400), max_tokens=4)):
                    pass
            with pytest.raises(pyllama.GrammarError):
                async for _ in e.generate(Request(prompt=(1, 2, 3), sampling=SamplingParams(grammar="root ::= ("))):
                    pass
            with pytest.raises(ValueError):
                Request(prompt=())
            ok = await collect(e, Request(prompt=(1, 100, 200), sampling=GREEDY, max_tokens=3, ignore_eos=True))
        finally:
            await e.stop()
        return ok

    ok = run(main())
    assert ok[2].usage["completion_tokens"] == 3


def test_an_exception_in_one_requests_sampling_fails_only_that_request(tiny_model):
    ps = prompts(tiny_model, 2)

    async def main():
        e = make_engine(tiny_model, n_parallel=2)
        e.start()
        try:
            ref = await collect(e, Request(prompt=ps[1], sampling=GREEDY, max_tokens=8, ignore_eos=True))
            victim = Request(prompt=ps[0], sampling=GREEDY, max_tokens=8, ignore_eos=True)
            runner = e.core.runner
            real_sample = runner.sample

            def sample(smp, row):
                if smp is e.core._samplers.get(victim.id):
                    raise RuntimeError("a bug in this request's sampling")
                return real_sample(smp, row)

            runner.sample = sample
            try:
                res = await asyncio.gather(collect(e, victim), collect(e, Request(prompt=ps[1], sampling=GREEDY,
                                                                                   max_tokens=8, ignore_eos=True)),
                                           return_exceptions=True)
            finally:
                runner.sample = real_sample
            m = await e.metrics()
        finally:
            await e.stop()
        return ref, res, m

    ref, (bad, good), m = run(main())
    assert isinstance(bad, RuntimeError)        # failed before any output: raised from the stream
    assert good[1] == ref[1] and good[2].finish_reason == "length"
    assert m["n_requests_failed"] == 1


def test_kv_full_fails_only_what_cannot_fit(tiny_model):
    v = tiny_model.vocab
    # 4 slots sharing a 256-cell unified cache, each wanting ~40 + 150 tokens: it must run out
    ps = [tuple(v.tokenize(f"prompt {i} " * 12)) for i in range(4)]

    async def main():
        e = make_engine(tiny_model, n_parallel=4, n_ctx=256)
        e.start()
        try:
            res = await asyncio.gather(*(collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=150,
                                                            ignore_eos=True)) for p in ps))
            after = await collect(e, Request(prompt=ps[0], sampling=GREEDY, max_tokens=4, ignore_eos=True))
        finally:
            await e.stop()
        return res, after

    res, after = run(main())
    reasons = [r[2].finish_reason for r in res]
    assert "error" in reasons, reasons
    assert any(r != "error" for r in reasons), reasons
    for r in res:
        if r[2].finish_reason == "error":
            assert isinstance(r[2].error, pyllama.KVCacheFullError)
    assert after[2].usage["completion_tokens"] == 4


def test_stop_start_cycles_leave_no_threads_or_contexts(tiny_model):
    before = {t.name for t in threading.enumerate()}

    async def cycle():
        e = make_engine(tiny_model, n_parallel=2, n_ctx=256)
        e.start()
        ctx_ref = weakref.ref(e._ctx)
        await collect(e, Request(prompt=(1, 2, 3), sampling=GREEDY, max_tokens=2))
        # stop with a request in flight: it gets a final "abort"
        task = asyncio.create_task(collect(e, Request(prompt=(1, 5, 6), sampling=GREEDY, max_tokens=10_000,
                                                      ignore_eos=True)))
        await asyncio.sleep(0.05)
        await e.stop()
        res = await task
        return ctx_ref, res

    for _ in range(3):
        ctx_ref, res = run(cycle())
        gc.collect()
        assert ctx_ref() is None or ctx_ref().closed
        assert res[2].finish_reason == "abort"
    assert not [t for t in threading.enumerate() if t.name == "pyllama-engine"]
    assert {t.name for t in threading.enumerate()} - before <= {"asyncio_0"}


def test_stop_drain_finishes_in_flight(tiny_model):
    async def main():
        e = make_engine(tiny_model, n_parallel=2, n_ctx=256)
        e.start()
        task = asyncio.create_task(collect(e, Request(prompt=(1, 5, 6), sampling=GREEDY, max_tokens=12,
                                                      ignore_eos=True)))
        await asyncio.sleep(0.02)
        await e.stop(drain=True)
        return await task

    res = run(main())
    assert res[2].finish_reason == "length" and res[2].usage["completion_tokens"] == 12


def test_generate_after_stop_raises(tiny_model):
    async def main():
        e = make_engine(tiny_model, n_parallel=1, n_ctx=256)
        e.start()
        await e.stop()
        with pytest.raises(pyllama.engine.EngineStoppedError):
            async for _ in e.generate(Request(prompt=(1, 2))):
                pass

    run(main())


def test_embeddings_batched_match_llama(tiny_model, tiny_model_path):
    texts = ["first text", "a second, longer text here", "third"]
    with pyllama.Llama(tiny_model_path, n_ctx=256, embedding=True, pooling_type="mean") as llm:
        expect = llm.embed(texts, normalize=True)

    async def main():
        e = make_engine(tiny_model, n_parallel=4, n_ctx=256, embeddings=True, pooling_type="mean")
        e.start()
        try:
            toks = [tiny_model.vocab.tokenize(t) for t in texts]
            got = await e.embed(toks)
            m = await e.metrics()
        finally:
            await e.stop()
        return got, m

    got, m = run(main())
    import numpy as np
    for g, x in zip(got, expect):
        np.testing.assert_allclose(g, x, rtol=1e-4, atol=1e-5)
    assert m["n_decode_total"] == 1, "the three inputs must share one decode"


def test_slot_save_restore_erase(tiny_model, tmp_path):
    p = prompts(tiny_model, 1)[0]

    async def main():
        e = make_engine(tiny_model, n_parallel=2, n_ctx=256)
        e.start()
        try:
            a = await collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=6, id_slot=0))
            saved = await e.save_slot(0, str(tmp_path / "s0.bin"))
            erased = await e.erase_slot(0)
            restored = await e.restore_slot(1, str(tmp_path / "s0.bin"))
            b = await collect(e, Request(prompt=p, sampling=GREEDY, max_tokens=6, id_slot=1))
            slots = await e.slots()
            with pytest.raises(pyllama.StateError):
                await e.restore_slot(0, str(tmp_path / "missing.bin"))
            with pytest.raises(ValueError):
                await e.erase_slot(9)
            assert e.n_ctx_slot == 256 and e.can_shift and e.fatal_error is None
        finally:
            await e.stop()
        return a, saved, erased, restored, b, slots

    a, saved, erased, restored, b, slots = run(main())
    assert saved.n_saved == erased.n_erased == restored.n_restored > len(p)
    assert saved.id_slot == erased.id_slot == 0 and restored.id_slot == 1
    assert saved.n_written == restored.n_read == (tmp_path / "s0.bin").stat().st_size
    assert b[2].usage["prompt_tokens_details"]["cached_tokens"] == len(p) - 1
    assert a[1] == b[1]
    assert slots[0]["n_cached"] == 0 and slots[1]["n_cached"] > len(p)


def test_context_shift_keeps_generating_past_the_context(tiny_model):
    async def main():
        e = make_engine(tiny_model, n_parallel=1, n_ctx=256, context_shift=True, n_keep=4)
        e.start()
        try:
            res = await collect(e, Request(prompt=prompts(tiny_model, 1)[0], sampling=GREEDY, max_tokens=400,
                                           ignore_eos=True))
            slots = await e.slots()
        finally:
            await e.stop()
        return res, slots

    (text, toks, final), slots = run(main())
    assert final.finish_reason == "length" and len(toks) == 400      # 400 > the 256-token context
    assert slots[0]["n_cached"] <= 256


def test_without_context_shift_generation_stops_at_the_context(tiny_model):
    async def main():
        e = make_engine(tiny_model, n_parallel=1, n_ctx=256)
        e.start()
        try:
            return await collect(e, Request(prompt=prompts(tiny_model, 1)[0], sampling=GREEDY, max_tokens=400,
                                            ignore_eos=True))
        finally:
            await e.stop()

    text, toks, final = run(main())
    assert final.finish_reason == "length" and len(toks) < 256
