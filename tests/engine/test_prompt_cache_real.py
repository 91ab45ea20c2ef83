"""The host-RAM prompt cache (--cache-ram) on a real f32 random-weights model: a slot's KV goes to
host memory when another prompt takes the slot, and comes back for a later prompt it serves; the
greedy output is the same token for token as a fresh run."""
import asyncio

from pyllama import ContextParams, SamplingParams
from pyllama.engine import AsyncEngine, Request

GREEDY = SamplingParams(temperature=0)


def make_engine(model, n_parallel=1, **kw):
    cp = ContextParams(n_ctx=1024, n_batch=64, n_ubatch=64)
    return AsyncEngine(model, cp, n_parallel=n_parallel, **kw)


def prompt(model, text):
    return tuple(model.vocab.tokenize(text))


def req(p, **kw):
    return Request(prompt=p, sampling=GREEDY, max_tokens=16, ignore_eos=True, **kw)


def test_a_prompt_evicted_from_the_only_slot_comes_back_from_ram(tiny_model):
    P = prompt(tiny_model, "A long prompt that the cache should keep in host memory: " + "alpha beta gamma " * 12)
    Q = prompt(tiny_model, "Something else entirely, with no common prefix at all. " * 3)
    assert P[0] != Q[0] or P[1] != Q[1]

    async def main():
        fresh = make_engine(tiny_model, cache_ram_mib=0)
        fresh.start()
        try:
            ref = await fresh.complete(req(P, cache_prompt=False))
        finally:
            await fresh.stop()
        e = make_engine(tiny_model, cache_ram_mib=64)
        e.start()
        try:
            a = await e.complete(req(P))
            b = await e.complete(req(Q))
            info_b = (await e.metrics())["prompt_cache"]
            c = await e.complete(req(P))
            info_c = (await e.metrics())["prompt_cache"]
        finally:
            await e.stop()
        return ref, a, b, c, info_b, info_c

    ref, a, b, c, info_b, info_c = asyncio.run(main())
    assert a.token_ids == ref.token_ids
    assert b.usage["prompt_tokens_details"]["cached_tokens"] <= 1      # the BOS token at most
    # B took the slot: A's tokens (prompt + generated but the last) went to RAM
    assert info_b["n_entries"] == 1 and info_b["n_tokens"] == len(P) + 15 and info_b["size"] > 0
    # C got them back: all of P but its last token is reused, and the output is the fresh run's
    assert c.usage["prompt_tokens_details"]["cached_tokens"] == len(P) - 1
    assert c.timings["cache_n"] == len(P) - 1 and c.timings["prompt_n"] == 1
    assert c.token_ids == ref.token_ids
    assert info_c["n_loaded"] == 1 and info_c["n_entries"] == 1 and info_c["n_tokens"] == len(Q) + 15


def test_without_the_cache_the_prompt_is_evaluated_again(tiny_model):
    P = prompt(tiny_model, "A long prompt that the cache should keep in host memory: " + "alpha beta gamma " * 12)
    Q = prompt(tiny_model, "Something else entirely, with no common prefix at all. " * 3)

    async def main():
        e = make_engine(tiny_model, cache_ram_mib=0)
        e.start()
        try:
            a = await e.complete(req(P))
            await e.complete(req(Q))
            c = await e.complete(req(P))
            info = (await e.metrics())["prompt_cache"]
        finally:
            await e.stop()
        return a, c, info

    a, c, info = asyncio.run(main())
    assert info is None
    assert c.usage["prompt_tokens_details"]["cached_tokens"] <= 1 and c.token_ids == a.token_ids


def test_idle_slots_go_to_ram_and_come_back(tiny_model):
    P = prompt(tiny_model, "The first slot holds this prompt for a while " * 4)
    Q = prompt(tiny_model, "While another slot serves a different one " * 4)

    async def main():
        e = make_engine(tiny_model, n_parallel=2, cache_ram_mib=-1, kv_unified=True)
        e.start()
        try:
            a = await e.complete(req(P))
            b = await e.complete(req(Q))                 # starts on slot 1: slot 0 is saved and cleared
            slots = await e.slots()
            c = await e.complete(req(P))
        finally:
            await e.stop()
        return a, b, slots, c

    a, b, slots, c = asyncio.run(main())
    assert a.id_slot == 0 and b.id_slot == 1
    assert slots[0]["n_cached"] == 0
    assert c.usage["prompt_tokens_details"]["cached_tokens"] == len(P) - 1
    assert c.token_ids == a.token_ids
