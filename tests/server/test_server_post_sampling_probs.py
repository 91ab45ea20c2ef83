"""llama-server's ``post_sampling_probs``: /completion's ``completion_probabilities`` (and the chat
endpoint's ``logprobs``) from the sampling chain's candidates, as probabilities (``prob``, ``top_probs``)."""
from __future__ import annotations

import json

import pytest
from aio_helpers import post_json  # noqa: E402

PROMPT = "Today was the day. Today I would finally become a"
TOKEN_KEYS = {"id", "token", "bytes", "prob", "top_probs"}
TOP_KEYS = {"id", "token", "bytes", "prob"}


def tiny_argv(path, *more):
    return ["-m", str(path), "-np", "2", "-c", "1024", *more]


def check_shape(entry):
    assert set(entry) == TOKEN_KEYS
    assert isinstance(entry["id"], int) and isinstance(entry["token"], str) and isinstance(entry["bytes"], list)
    assert 0.0 < entry["prob"] <= 1.0
    for t in entry["top_probs"]:
        assert set(t) == TOP_KEYS and 0.0 < t["prob"] <= 1.0
    probs = [t["prob"] for t in entry["top_probs"]]
    assert probs == sorted(probs, reverse=True)


def test_post_sampling_probs_completion(inproc, tiny_model_path):
    async def scenario(client):
        # temperature 0: the chain leaves the sampled token alone, with probability 1
        d = await post_json(client, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 0,
                                                    "n_probs": 5, "post_sampling_probs": True})
        probs = d["completion_probabilities"]
        assert len(probs) == 4
        for e in probs:
            check_shape(e)
            assert e["prob"] == 1.0 and [(t["id"], t["prob"]) for t in e["top_probs"]] == [(e["id"], 1.0)]
        assert d["generation_settings"]["post_sampling_probs"] is True
        # top_k 1 at temperature 1: the same through the dist sampler
        d = await post_json(client, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": 1.0,
                                                    "top_k": 1, "n_probs": 5, "post_sampling_probs": True})
        for e in d["completion_probabilities"]:
            check_shape(e)
            assert e["prob"] == pytest.approx(1.0) and [t["id"] for t in e["top_probs"]] == [e["id"]]
        # top_k 3: at most 3 candidates, summing to 1, the sampled one among them with its prob
        d = await post_json(client, "/completion", {"prompt": PROMPT, "n_predict": 6, "temperature": 1.0,
                                                    "top_k": 3, "top_p": 1.0, "min_p": 0.0, "seed": 5,
                                                    "n_probs": 10, "post_sampling_probs": True})
        probs = d["completion_probabilities"]
        assert len(probs) == 6
        for e in probs:
            check_shape(e)
            assert 1 <= len(e["top_probs"]) <= 3
            assert sum(t["prob"] for t in e["top_probs"]) == pytest.approx(1.0, abs=1e-4)
            assert {t["id"]: t["prob"] for t in e["top_probs"]}[e["id"]] == pytest.approx(e["prob"])
        # n_probs smaller than the candidates: the n most probable
        d = await post_json(client, "/completion", {"prompt": PROMPT, "n_predict": 3, "temperature": 1.0,
                                                    "top_k": 40, "top_p": 1.0, "min_p": 0.0, "seed": 5,
                                                    "n_probs": 2, "post_sampling_probs": True})
        assert all(len(e["top_probs"]) == 2 for e in d["completion_probabilities"])

    inproc(tiny_argv(tiny_model_path), scenario)


def test_post_sampling_probs_stream_and_unchanged_without(inproc, tiny_model_path):
    async def scenario(client):
        body = {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "n_probs": 3}
        r = await client.post("/completion", json={**body, "post_sampling_probs": True, "stream": True})
        raw = (await r.read()).decode()
        chunks = [json.loads(ln[6:]) for ln in raw.splitlines() if ln.startswith("data: ")]
        streamed = [e for c in chunks for e in c.get("completion_probabilities", [])]
        assert len(streamed) == 4
        for e in streamed:
            check_shape(e)
        # without the flag: log-probabilities of the raw logits, as before
        d = await post_json(client, "/completion", body)
        for e in d["completion_probabilities"]:
            assert set(e) == {"id", "token", "bytes", "logprob", "top_logprobs"}
            assert e["logprob"] <= 0.0 and len(e["top_logprobs"]) == 3
            assert all(set(t) == {"id", "token", "bytes", "logprob"} for t in e["top_logprobs"])
        assert [e["id"] for e in d["completion_probabilities"]] == [e["id"] for e in streamed]
        # the flag without n_probs: no probabilities at all
        d = await post_json(client, "/completion", {**body, "n_probs": 0, "post_sampling_probs": True})
        assert "completion_probabilities" not in d

    inproc(tiny_argv(tiny_model_path), scenario)


def test_post_sampling_probs_chat(inproc, tiny_model_path):
    async def scenario(client):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0,
                "logprobs": True, "top_logprobs": 2}
        d = await post_json(client, "/v1/chat/completions", {**body, "post_sampling_probs": True})
        content = d["choices"][0]["logprobs"]["content"]
        assert content
        for e in content:
            assert set(e) == {"token", "bytes", "prob", "top_probs"} and e["prob"] == 1.0
            assert [t["prob"] for t in e["top_probs"]] == [1.0]
        d = await post_json(client, "/v1/chat/completions", body)
        for e in d["choices"][0]["logprobs"]["content"]:
            assert set(e) == {"token", "bytes", "logprob", "top_logprobs"} and len(e["top_logprobs"]) == 2

    inproc(tiny_argv(tiny_model_path), scenario)


def test_post_sampling_probs_chat_stream_and_legacy_completions(inproc, tiny_model_path):
    async def scenario(client):
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0,
                "logprobs": True, "top_logprobs": 2, "post_sampling_probs": True, "stream": True}
        r = await client.post("/v1/chat/completions", json=body)
        raw = (await r.read()).decode()
        chunks = [json.loads(ln[6:]) for ln in raw.splitlines() if ln.startswith("data: ") and ln != "data: [DONE]"]
        entries = [e for c in chunks for ch in c["choices"] if ch.get("logprobs")
                   for e in ch["logprobs"]["content"]]
        assert entries and all(set(e) == {"token", "bytes", "prob", "top_probs"} for e in entries)
        # /v1/completions keeps OpenAI's legacy log-space shape: the logarithms of the post-chain probabilities
        d = await post_json(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "temperature": 0,
                                                        "logprobs": 2, "post_sampling_probs": True})
        lp = d["choices"][0]["logprobs"]
        assert lp["token_logprobs"] == [0.0, 0.0, 0.0]
        assert all(list(t.values()) == [0.0] for t in lp["top_logprobs"])

    inproc(tiny_argv(tiny_model_path), scenario)
