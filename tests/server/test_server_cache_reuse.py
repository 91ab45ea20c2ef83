"""--cache-reuse N / LLAMA_ARG_CACHE_REUSE and the request's n_cache_reuse over HTTP (one slot):
after the slot cached X + Z + Y, the prompt X + Y + W reuses Y by a KV shift."""
from __future__ import annotations

from aio_helpers import post_json  # noqa: E402

TEXTS = ("System: you answer briefly.",
         "Numbers: 12, 37, 45, 58; 61 - 79 + 83 * 94!",
         "Question about quick brown foxes jumping over lazy dogs near a quiet river bank at dawn"
         " while seven silver swans swim silently southward beyond the old stone bridge",
         "Answer in one short line")


def argv(path, *more):
    return ["-m", str(path), "-np", "1", "-c", "1024", "-cram", "0", *more]     # no RAM cache: the slot only


async def parts(client):
    X = (await post_json(client, "/tokenize", {"content": TEXTS[0], "add_special": True}))["tokens"]
    Z, Y, W = [(await post_json(client, "/tokenize", {"content": t, "add_special": False}))["tokens"]
               for t in TEXTS[1:]]
    assert len(Y) >= 16 and not set(Z) & set(Y + W)
    return X, Z, Y, W


async def reuse_run(client, **fields):
    """A (cached), then B with ``fields``: B's timings."""
    X, Z, Y, W = await parts(client)
    await post_json(client, "/completion", {"prompt": X + Z + Y, "n_predict": 1, "temperature": 0})
    d = await post_json(client, "/completion", {"prompt": X + Y + W, "n_predict": 4, "temperature": 0, **fields})
    return d["timings"], (len(X), len(Y), len(W))


def test_cache_reuse_flag_and_request_field(inproc, tiny_model_path):
    async def scenario(client):
        t, (nx, ny, nw) = await reuse_run(client)                       # --cache-reuse 16
        assert t["cache_n"] == nx + ny and t["prompt_n"] == nw
        t, _ = await reuse_run(client, n_cache_reuse=0)                 # the request turns it off
        assert t["cache_n"] == nx and t["prompt_n"] == ny + nw
        t, _ = await reuse_run(client, n_cache_reuse=ny + 1)            # Y is too short for it
        assert t["cache_n"] == nx
        t, _ = await reuse_run(client, cache_prompt=False)
        assert t["cache_n"] == 0 and t["prompt_n"] == nx + ny + nw
        await post_json(client, "/completion", {"prompt": "x", "n_cache_reuse": -1}, 400)
        await post_json(client, "/completion", {"prompt": "x", "n_cache_reuse": "many"}, 400)

    inproc(argv(tiny_model_path, "--cache-reuse", "16"), scenario)


def test_cache_reuse_off_by_default_on_by_request(inproc, tiny_model_path):
    async def scenario(client):
        t, (nx, ny, nw) = await reuse_run(client)
        assert t["cache_n"] == nx and t["prompt_n"] == ny + nw
        t, _ = await reuse_run(client, n_cache_reuse=16)
        assert t["cache_n"] == nx + ny and t["prompt_n"] == nw
        # the same through the OpenAI completions endpoint
        X, Z, Y, W = await parts(client)
        await post_json(client, "/v1/completions", {"prompt": X + Z + Y, "max_tokens": 1, "temperature": 0})
        d = await post_json(client, "/v1/completions", {"prompt": X + Y + W, "max_tokens": 2, "temperature": 0,
                                                        "n_cache_reuse": 16})
        assert d["usage"]["prompt_tokens_details"]["cached_tokens"] == nx + ny

    inproc(argv(tiny_model_path), scenario)
