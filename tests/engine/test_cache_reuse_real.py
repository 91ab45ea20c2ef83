"""Cache reuse by KV shifting (llama-server's --cache-reuse / n_cache_reuse) on a real f32 model
with one slot: the slot caches X + Z + Y; the prompt X + Y + W reuses Y from the cache, moved
earlier by a KV shift, and evaluates only W.

The shifted KV of Y was computed after Z, so the output is not in general a fresh run's (as with
llama-server): the reference is the same memory operations done by hand on a raw Context."""
import asyncio

import numpy as np

from pyllama import Context, ContextParams, SamplingParams
from pyllama.engine import AsyncEngine, Request

GREEDY = SamplingParams(temperature=0)
CP = ContextParams(n_ctx=1024, n_batch=64, n_ubatch=64, n_seq_max=1, kv_unified=True)
N_GEN = 12


def parts(model):
    tok = model.vocab.tokenize
    X = tuple(tok("System: you answer briefly."))
    Z = tuple(tok("Numbers: 12, 37, 45, 58; 61 - 79 + 83 * 94!", add_special=False))
    Y = tuple(tok("Question about quick brown foxes jumping over lazy dogs near a quiet river bank at dawn"
                  " while seven silver swans swim silently southward beyond the old stone bridge",
                  add_special=False))
    W = tuple(tok("Answer in one short line", add_special=False))
    # Y is the only chunk of X + Z + Y that X + Y + W has after X: no token of Z is in Y or W
    assert not set(Z) & set(Y + W) and len(Y) >= 16 and Y[0] != Z[0]
    return X, Z, Y, W


def req(p, **kw):
    kw.setdefault("max_tokens", N_GEN)
    return Request(prompt=p, sampling=GREEDY, ignore_eos=True, **kw)


def run_engine(model, prompts_kw):
    async def main():
        e = AsyncEngine(model, CP, n_parallel=1)
        e.start()
        try:
            return [await e.complete(req(p, **kw)) for p, kw in prompts_kw]
        finally:
            await e.stop()
    return asyncio.run(main())


def decode_chunks(ctx, tokens, pos0, n_batch=64):
    """Decode like the engine's prefill (chunks of n_batch); the logits of the last token."""
    from pyllama import _core
    b = _core.Batch(n_batch, 1)
    for i in range(0, len(tokens), n_batch):
        chunk = tokens[i:i + n_batch]
        b.clear()
        row = b.add_sequence(list(chunk), pos0 + i, 0, i + n_batch >= len(tokens))
        ctx.decode(b)
    return np.array(ctx.logits(row))


def greedy_after(ctx, logits, pos, n):
    out = []
    for _ in range(n):
        t = int(np.argmax(logits))
        out.append(t)
        logits = decode_chunks(ctx, [t], pos)
        pos += 1
    return out


def test_cache_reuse_moves_the_cached_chunk_and_evaluates_only_the_rest(tiny_model):
    X, Z, Y, W = parts(tiny_model)
    A, B = X + Z + Y, X + Y + W
    n_reuse = 16
    a, b = run_engine(tiny_model, [(A, {"max_tokens": 1}), (B, {"n_cache_reuse": n_reuse})])
    assert b.usage["prompt_tokens_details"]["cached_tokens"] == len(X) + len(Y)
    assert b.timings["cache_n"] == len(X) + len(Y) and b.timings["prompt_n"] == len(W)

    # the same by hand: A evaluated (without its last token, as the engine: one token is generated
    # and not decoded), then Y moved from after Z to after X, then W
    ctx = Context(tiny_model, CP)
    assert ctx.memory_can_shift()
    decode_chunks(ctx, A, 0)
    c0 = len(X) + len(Z)
    ctx.seq_rm(0, len(X), c0)
    ctx.seq_add(0, c0, c0 + len(Y), -len(Z))
    ctx.seq_rm(0, len(X) + len(Y), -1)
    logits = decode_chunks(ctx, W, len(X) + len(Y))
    ref = greedy_after(ctx, logits, len(B), N_GEN)
    assert b.token_ids == ref


def test_cache_reuse_off_or_without_cache_prompt_evaluates_after_the_prefix(tiny_model):
    X, Z, Y, W = parts(tiny_model)
    A, B = X + Z + Y, X + Y + W
    fresh, = run_engine(tiny_model, [(B, {"cache_prompt": False})])
    _, off, _, nocache = run_engine(tiny_model, [(A, {"max_tokens": 1}), (B, {}),
                                                 (A, {"max_tokens": 1}), (B, {"n_cache_reuse": 8, "cache_prompt": False})])
    assert off.timings["cache_n"] == len(X) and off.timings["prompt_n"] == len(Y) + len(W)
    assert nocache.timings["cache_n"] == 0 and nocache.timings["prompt_n"] == len(B)
    assert off.token_ids == fresh.token_ids == nocache.token_ids
