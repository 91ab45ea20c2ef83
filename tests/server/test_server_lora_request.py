"""The per-request ``lora`` field ([{"id": N, "scale": S}], as llama-server's): the scales of that
request only, an adapter not listed at 0; requests with different scales run concurrently, each
with its solo output; unknown ids and bad scales are a 400."""
from __future__ import annotations

import asyncio

from pyllama.testing import write_random_lora as write_lora

GREEDY = {"prompt": "The adapter decides", "n_predict": 8, "temperature": 0}


def lora_field(scale: float):
    return {"lora": [{"id": 0, "scale": scale}]}


def test_request_lora_scales(inproc, tiny_model_path, tmp_path):
    lora = write_lora(tmp_path / "lora.gguf", seed=4)

    async def content(client, body, path="/completion"):
        r = await client.post(path, json=body)
        assert r.status == 200, await r.text()
        d = await r.json()
        return d["content"] if path == "/completion" else d["choices"][0]["text"]

    async def scenario(client):
        tuned = await content(client, GREEDY)                        # the global scale: 1.0
        await client.post("/lora-adapters", json=[{"id": 0, "scale": 0.0}])
        base = await content(client, GREEDY)
        await client.post("/lora-adapters", json=[{"id": 0, "scale": 0.5}])
        half = await content(client, GREEDY)
        await client.post("/lora-adapters", json=[{"id": 0, "scale": 1.0}])
        assert len({tuned, base, half}) == 3                         # the scale matters
        assert await content(client, {**GREEDY, **lora_field(0.0)}) == base
        assert await content(client, {**GREEDY, **lora_field(1.0)}) == tuned
        assert await content(client, {**GREEDY, "lora": []}) == tuned           # empty: the global scales
        assert await content(client, {**GREEDY, "lora": [{"id": 0, "scale": 0.5}]}) == half
        # the global scales are untouched by a request's
        assert (await (await client.get("/lora-adapters")).json())[0]["scale"] == 1.0
        # concurrent requests with different scales: each its solo output
        got = await asyncio.gather(*[content(client, {**GREEDY, **lora_field(s)}) for s in (0.0, 1.0, 0.5, 0.0)],
                                   content(client, GREEDY))
        assert got == [base, tuned, half, base, tuned]
        # the OpenAI endpoint too
        oai = {"prompt": GREEDY["prompt"], "max_tokens": 8, "temperature": 0}
        assert await content(client, {**oai, **lora_field(0.0)}, "/v1/completions") == base
        assert await content(client, {**oai, **lora_field(0.5)}, "/v1/completions") == half
        # the response reports the request's lora field
        d = await (await client.post("/completion", json={**GREEDY, **lora_field(0.5)})).json()
        assert d["generation_settings"]["lora"] == [{"id": 0, "scale": 0.5}]
        # errors: 400 with a clear message, nothing run
        for bad, msg in (([{"id": 1, "scale": 1.0}], "invalid LoRA adapter id 1"),
                         ([{"id": -1, "scale": 1.0}], "invalid LoRA adapter id -1"),
                         ([{"id": "0", "scale": 1.0}], "expected an integer"),
                         ([{"id": 0, "scale": "big"}], "invalid scale"),
                         ([{"id": 0}], "expected {\"id\""),
                         ([{"id": 0, "scale": 1.0}, {"id": 0, "scale": 0.5}], "more than once")):
            r = await client.post("/completion", json={**GREEDY, "lora": bad})
            assert r.status == 400, (bad, await r.text())
            assert msg in (await r.json())["error"]["message"], (bad, await r.text())
        r = await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                           "lora": [{"id": 3, "scale": 1.0}]})
        assert r.status == 400 and "invalid LoRA adapter id 3" in (await r.json())["error"]["message"]
        r = await client.post("/completion", json={**GREEDY, "lora": "all"})
        assert r.status == 400

    inproc(["-m", str(tiny_model_path), "-np", "3", "-c", "768", "--lora", str(lora)], scenario)


def test_request_lora_without_adapters(inproc, tiny_model_path):
    async def scenario(client):
        r = await client.post("/completion", json={**GREEDY, **lora_field(1.0)})
        assert r.status == 400 and "no LoRA adapter is loaded" in (await r.json())["error"]["message"]
        r = await client.post("/completion", json={**GREEDY, "lora": []})
        assert r.status == 200

    inproc(["-m", str(tiny_model_path), "-np", "1", "-c", "256"], scenario)
