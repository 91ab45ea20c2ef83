"""Per-request LoRA scales on a real f32 random-weights model: a request's scales give the greedy
output of the model with those scales applied to the whole context, alone or next to requests
with other scales (never in one decode with them)."""
import asyncio

import pytest

import pyllama
from pyllama import ContextParams, SamplingParams
from pyllama.engine import AsyncEngine, Request
from pyllama.testing import write_random_lora

GREEDY = SamplingParams(temperature=0)
N = 12


def make_engine(model, n_parallel=2):
    return AsyncEngine(model, ContextParams(n_ctx=1024, n_batch=64, n_ubatch=64), n_parallel=n_parallel)


def req(p, **kw):
    return Request(prompt=p, sampling=GREEDY, max_tokens=N, ignore_eos=True, cache_prompt=False, **kw)


@pytest.fixture()
def lora(tiny_model, tmp_path):
    a = pyllama.LoraAdapter(tiny_model, write_random_lora(tmp_path / "lora.gguf", seed=3))
    yield a
    a.close()


def test_request_scales_match_the_adapter_applied_to_the_context(tiny_model, lora):
    P = tuple(tiny_model.vocab.tokenize("Per-request adapters change the output of"))
    Q = tuple(tiny_model.vocab.tokenize("A second prompt, decoded next to the first one"))

    async def solo(prompts, scale):
        """Reference: an engine that knows nothing of adapters, on a context with the adapter set."""
        e = make_engine(tiny_model, n_parallel=1)
        e.start()
        try:
            if scale is not None:
                await e.call(lambda core: core.runner.ctx.set_lora_adapters([(lora, scale)]))
            return [(await e.complete(req(p))).token_ids for p in prompts]
        finally:
            await e.stop()

    async def main():
        refs = {s: await solo((P, Q), s) for s in (None, 1.0, 0.5)}
        e = make_engine(tiny_model, n_parallel=3)
        e.start()
        try:
            await e.set_loras([lora], (1.0,))
            got = {
                "default": (await e.complete(req(P))).token_ids,           # lora None: the default (1.0)
                0.0: (await e.complete(req(P, lora=(0.0,)))).token_ids,
                1.0: (await e.complete(req(P, lora=(1.0,)))).token_ids,
            }
            m0 = await e.metrics()
            # concurrent, three configurations: each equals its solo run
            outs = await asyncio.gather(e.complete(req(P, lora=(0.0,))), e.complete(req(Q, lora=(1.0,))),
                                        e.complete(req(Q, lora=(0.5,))))
            m1 = await e.metrics()
            await e.set_lora_scales((0.0,))
            got["default after change"] = (await e.complete(req(P))).token_ids
        finally:
            await e.stop()
        return refs, got, outs, m0, m1

    refs, got, outs, m0, m1 = asyncio.run(main())
    base, tuned, half = refs[None], refs[1.0], refs[0.5]
    assert base[0] != tuned[0] and half[0] != base[0] and half[1] != tuned[1]     # the adapter matters
    assert got[0.0] == base[0]
    assert got[1.0] == tuned[0] and got["default"] == tuned[0]
    assert got["default after change"] == base[0]
    assert [o.token_ids for o in outs] == [base[0], tuned[1], half[1]]
    # three configurations never share a decode: about one decode per token each
    n_decode = m1["n_decode_total"] - m0["n_decode_total"]
    assert n_decode >= 3 * N
