"""Reasoning budgets through the server, as llama-server does them: --reasoning-budget(-message)
(and LLAMA_ARG_THINK_BUDGET(_MESSAGE)), the request fields reasoning_budget_tokens /
thinking_budget_tokens / reasoning_budget_message on /v1/chat/completions, the raw-tag fields on
/completion and /v1/completions, reasoning_control with POST /v1/chat/completions/control.

The model has random weights and Qwen 3.5's template on the deepseek-llm vocab: its generation
prompt ends in ``<think>\\n``, so every reply starts inside the reasoning and, left alone, never
leaves it. The "\\n" after <think> is part of the block: a budget of N leaves N - 1 generated tokens.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any, Dict, List, Sequence

import pytest

from pyllama.server import ConfigError, parse_args
from pyllama.server.state import STATE

openai = pytest.importorskip("openai")
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402
from aio_helpers import post_json, post_stream  # noqa: E402

HI = [{"role": "user", "content": "Hi!"}]
ARGV = ("-np", "2", "-c", "2048")
END = "\n</think>"              # the template's first end tag: what is forced


def argv(path, *more: str) -> List[str]:
    return ["-m", str(path), *ARGV, *more]






def find(seq: Sequence[Any], sub: Sequence[Any]) -> int:
    for i in range(len(seq) - len(sub) + 1):
        if list(seq[i:i + len(sub)]) == list(sub):
            return i
    return -1


def piece_list(vocab, text: str) -> List[bytes]:
    return [vocab.token_to_piece(t, special=True) for t in vocab.tokenize(text, add_special=False, parse_special=True)]


async def chat(client, **body: Any) -> Dict[str, Any]:
    """A greedy chat completion with per-token logprobs: the message and the generated token pieces."""
    res = await post_json(client, "/v1/chat/completions", {"messages": HI, "temperature": 0, "logprobs": True,
                                                      "max_tokens": 24, **body})
    ChatCompletion.model_validate(res)
    choice = res["choices"][0]
    return {"message": choice["message"], "pieces": [bytes(e["bytes"]) for e in choice["logprobs"]["content"]],
            "usage": res["usage"]}


def n_before(pieces: List[bytes], vocab, message: str = "") -> int:
    """How many tokens were generated before the forced message + end tag (-1: never forced)."""
    return find(pieces, piece_list(vocab, message + END))


def check_free_tokens(k: int, budget: int, pieces: List[bytes]) -> None:
    """k generated tokens before the forced end: budget - 1, or a few more to finish a UTF-8 character."""
    n_free = budget - 1
    assert k >= n_free, (k, budget)
    if k > n_free:
        with pytest.raises(UnicodeDecodeError):
            b"".join(pieces[:n_free]).decode()
        assert k <= n_free + 3


# ---------------------------------------------------------------- command line


def test_cli_flags_parse_and_are_not_refused():
    cfg = parse_args(["-m", "x.gguf", "--reasoning-budget", "12", "--reasoning-budget-message", "Done."], environ={})
    assert (cfg.generation.reasoning_budget, cfg.generation.reasoning_budget_message) == (12, "Done.")
    cfg = parse_args(["-m", "x.gguf"], environ={})
    assert (cfg.generation.reasoning_budget, cfg.generation.reasoning_budget_message) == (-1, "")
    assert parse_args(["-m", "x.gguf", "--reasoning-budget", "0"], environ={}).generation.reasoning_budget == 0
    # llama-server's environment variables; a flag wins
    env = {"LLAMA_ARG_THINK_BUDGET": "7", "LLAMA_ARG_THINK_BUDGET_MESSAGE": "Enough."}
    cfg = parse_args(["-m", "x.gguf"], environ=env)
    assert (cfg.generation.reasoning_budget, cfg.generation.reasoning_budget_message) == (7, "Enough.")
    assert parse_args(["-m", "x.gguf", "--reasoning-budget=3"], environ=env).generation.reasoning_budget == 3
    with pytest.raises(ConfigError, match="reasoning-budget"):
        parse_args(["-m", "x.gguf", "--reasoning-budget", "-5"], environ={})
    with pytest.raises(ConfigError, match="LLAMA_ARG_THINK_BUDGET"):
        parse_args(["-m", "x.gguf"], environ={"LLAMA_ARG_THINK_BUDGET": "many"})
    with pytest.raises(SystemExit) as e:
        parse_args(["-m", "x.gguf", "--reasoning-budget", "lots"], environ={})
    assert e.value.code == 2


# ---------------------------------------------------------------- chat


def test_chat_budget(inproc, thinking_model_path):
    async def scenario(client):
        vocab = client.server.app[STATE].vocab
        for budget in (2, 6):
            res = await chat(client, reasoning_budget_tokens=budget)
            k = n_before(res["pieces"], vocab)
            assert k >= 0, res["pieces"]
            check_free_tokens(k, budget, res["pieces"])
            msg = res["message"]
            assert msg["reasoning_content"].strip() == b"".join(res["pieces"][:k]).decode().strip()
            assert msg["content"] and "</think>" not in msg["content"]
            # streamed: the same reasoning, then the same answer
            body = {"messages": HI, "temperature": 0, "max_tokens": 24, "reasoning_budget_tokens": budget}
            chunks = [ChatCompletionChunk.model_validate(c) for c in await post_stream(
                client, "/v1/chat/completions", body)]
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
            content = "".join(d.content or "" for d in deltas)
            assert (reasoning, content) == (msg["reasoning_content"], msg["content"])
            first = next(i for i, d in enumerate(deltas) if d.content)
            assert not any(getattr(d, "reasoning_content", None) for d in deltas[first:])

        # Anthropic's name, as llama-server accepts it
        assert (await chat(client, thinking_budget_tokens=6))["message"] == \
            (await chat(client, reasoning_budget_tokens=6))["message"]

        # the message goes before the end tag
        res = await chat(client, reasoning_budget_tokens=4, reasoning_budget_message=" Time to answer.")
        k = n_before(res["pieces"], vocab, " Time to answer.")
        check_free_tokens(k, 4, res["pieces"])
        assert res["message"]["reasoning_content"].rstrip().endswith("Time to answer.") and res["message"]["content"]

        # 0: the block the generation prompt opened is closed at once; no reasoning
        res = await chat(client, reasoning_budget_tokens=0, max_tokens=10)
        assert find(res["pieces"][:4], piece_list(vocab, "</think>")) >= 0, res["pieces"]
        assert not (res["message"].get("reasoning_content") or "").strip() and res["message"]["content"]

        # unlimited (no budget, or -1): the random model never leaves the reasoning
        for body in ({}, {"reasoning_budget_tokens": -1}, {"reasoning_budget_tokens": None}):
            res = await chat(client, **body)
            assert n_before(res["pieces"], vocab) == -1 and not res["message"]["content"], body
            assert res["message"]["reasoning_content"]

        # thinking disabled by the template: the budget has nothing to end
        off = {"chat_template_kwargs": {"enable_thinking": False}}
        assert (await chat(client, reasoning_budget_tokens=1, **off))["message"] == \
            (await chat(client, **off))["message"]

    inproc(argv(thinking_model_path("opens")), scenario)


def test_server_default_budget_and_message(inproc, thinking_model_path):
    async def scenario(client):
        vocab = client.server.app[STATE].vocab
        res = await chat(client)
        k = n_before(res["pieces"], vocab, " [budget]")
        check_free_tokens(k, 3, res["pieces"])
        assert res["message"]["reasoning_content"].rstrip().endswith("[budget]")
        # -1 in a request means "the server's budget" (llama-server's oaicompat_chat_params_parse)
        assert (await chat(client, reasoning_budget_tokens=-1))["message"] == res["message"]
        # a request's own budget and message win
        res = await chat(client, reasoning_budget_tokens=8, reasoning_budget_message="")
        check_free_tokens(n_before(res["pieces"], vocab), 8, res["pieces"])
        assert "[budget]" not in res["message"]["reasoning_content"]
        # /props shows no budget: llama-server's does not either
        props = await (await client.get("/props")).json()
        assert "reasoning_budget" not in json.dumps(props)

    inproc(argv(thinking_model_path("opens"), "--reasoning-budget", "3", "--reasoning-budget-message", " [budget]"),
           scenario)


def test_no_thinking_tags_no_budget(inproc, chat_model_path):
    """Qwen 2.5's template has no thinking tags: a budget changes nothing (as llama-server)."""
    async def scenario(client):
        body = {"messages": HI, "temperature": 0, "max_tokens": 10}
        a = await post_json(client, "/v1/chat/completions", body)
        b = await post_json(client, "/v1/chat/completions", {**body, "reasoning_budget_tokens": 0})
        assert a["choices"][0]["message"] == b["choices"][0]["message"]

    inproc(argv(chat_model_path), scenario)


# ---------------------------------------------------------------- raw tags on the completion endpoints


def test_completion_endpoints_with_raw_tags(inproc, thinking_model_path):
    async def scenario(client):
        vocab = client.server.app[STATE].vocab
        raw = {"reasoning_budget_start_tag": "<think>", "reasoning_budget_end_tags": ["</think>"],
               "generation_prompt": "<think>\n", "temperature": 0, "reasoning_budget_message": " Done."}
        forced = [t for text in (" Done.", "</think>") for t in vocab.tokenize(text, add_special=False,
                                                                            parse_special=True)]
        res = await post_json(client, "/completion", {"prompt": "Question: why?\n<think>\n", "n_predict": 16,
                                                 "return_tokens": True, "reasoning_budget_tokens": 4, **raw})
        k = find(res["tokens"], forced)
        check_free_tokens(k, 4, [vocab.token_to_piece(t, special=True) for t in res["tokens"]])
        assert res["content"].count("</think>") == 1
        # without the generation prompt the sampler waits for a <think> the model never writes
        no_gp = {k: v for k, v in raw.items() if k != "generation_prompt"}
        res = await post_json(client, "/completion", {"prompt": "Question: why?\n<think>\n", "n_predict": 16,
                                                 "return_tokens": True, "reasoning_budget_tokens": 4, **no_gp})
        assert find(res["tokens"], forced) == -1
        # the singular end tag, on /v1/completions
        one = {**raw, "reasoning_budget_end_tag": "</think>"}
        del one["reasoning_budget_end_tags"]
        res = await post_json(client, "/v1/completions", {"prompt": "Question: why?\n<think>\n", "max_tokens": 16,
                                                     "reasoning_budget_tokens": 4, **one})
        text = res["choices"][0]["text"]
        assert " Done.</think>" in text and text.index(" Done.</think>") > 0

    inproc(argv(thinking_model_path("opens")), scenario)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [-5, -2, 2**31, "ten", "5", 1.5, True, [3], {"n": 3}])
def test_bad_budget_is_400(inproc, thinking_model_path, bad):
    async def scenario(client):
        for path, body in (("/v1/chat/completions", {"messages": HI, "reasoning_budget_tokens": bad}),
                           ("/v1/chat/completions", {"messages": HI, "thinking_budget_tokens": bad}),
                           ("/completion", {"prompt": "hi", "reasoning_budget_tokens": bad}),
                           ("/v1/completions", {"prompt": "hi", "reasoning_budget_tokens": bad})):
            r = await client.post(path, json={**body, "max_tokens": 2})
            assert r.status == 400, (path, bad, await r.text())
            err = (await r.json())["error"]
            assert err["code"] == 400 and err["type"] == "invalid_request_error"
            assert "budget_tokens" in err["message"], err
        r = await client.post("/v1/chat/completions", json={"messages": HI, "reasoning_budget_message": 5})
        assert r.status == 400 and "reasoning_budget_message" in (await r.json())["error"]["message"]

    inproc(argv(thinking_model_path("opens")), scenario)


# ---------------------------------------------------------------- reasoning control


@contextlib.contextmanager
def engine_held_for_control(engine, after: int):
    """Hold the engine thread after it samples its ``after``-th token until a reasoning-control
    request has reached the engine's queue (no timing involved). Yields an event set once held."""
    runner = engine.core.runner
    real_sample, real_end = runner.sample, engine.reasoning_end
    parked, sent = threading.Event(), threading.Event()
    n = {"sampled": 0}

    def sample(sampler, row):           # engine thread
        tok = real_sample(sampler, row)
        n["sampled"] += 1
        if n["sampled"] == after:
            parked.set()
            assert sent.wait(60), "the control request never came"
        return tok

    async def reasoning_end(rid):       # event loop: enqueue, then let the engine go on
        task = asyncio.ensure_future(real_end(rid))
        await asyncio.sleep(0)
        sent.set()
        return await task

    runner.sample, engine.reasoning_end = sample, reasoning_end
    try:
        yield parked
    finally:
        sent.set()                      # never leave the engine thread waiting
        runner.sample, engine.reasoning_end = real_sample, real_end


def test_reasoning_control(inproc, thinking_model_path):
    """POST /v1/chat/completions/control {"id", "action": "reasoning_end"} ends a running completion's
    reasoning at once. To act while it runs, the engine thread is held after sampling its 5th token
    until the control request has reached the engine's queue (no timing involved)."""
    MSG = " Answer now."

    async def scenario(client):
        st = client.server.app[STATE]
        vocab = st.vocab
        with engine_held_for_control(st.engine, after=5) as parked:
            body = {"messages": HI, "temperature": 0, "max_tokens": 30, "reasoning_control": True,
                    "reasoning_budget_message": MSG, "stream": True, "logprobs": True}
            r = await client.post("/v1/chat/completions", json=body)
            assert r.status == 200
            events: List[Dict[str, Any]] = []
            while not events:
                line = await r.content.readline()
                assert line, "the stream ended early"
                if line.startswith(b"data: "):
                    events.append(json.loads(line[len(b"data: "):]))
            cid = events[0]["id"]
            for _ in range(6000):               # until the engine holds after its 5th token
                if parked.is_set():
                    break
                await asyncio.sleep(0.01)
            ctl = await post_json(client, "/v1/chat/completions/control", {"id": cid, "action": "reasoning_end"})
            assert ctl == {"success": True}
            for line in (await r.read()).decode().splitlines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    events.append(json.loads(line[len("data: "):]))
        deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
        reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
        content = "".join(d.get("content") or "" for d in deltas)
        assert reasoning.rstrip().endswith(MSG.strip()), reasoning
        assert content
        # five tokens of reasoning (the engine held after the fifth), then the message and the end tag
        pieces = [bytes(e["bytes"]) for ev in events if ev["choices"]
                  for e in ((ev["choices"][0].get("logprobs") or {}).get("content") or [])]
        assert n_before(pieces, vocab, MSG) == 5, pieces
        # it is over now: nothing to act on
        ctl = await post_json(client, "/v1/chat/completions/control", {"id": cid, "action": "reasoning_end"})
        assert ctl == {"success": False, "message": "no active completion for this id"}

    inproc(argv(thinking_model_path("opens")), scenario)


def test_reasoning_control_errors(inproc, thinking_model_path):
    async def scenario(client):
        st = client.server.app[STATE]
        err = await post_json(client, "/v1/chat/completions/control", {"action": "reasoning_end"}, status=400)
        assert err["error"]["message"] == "missing completion id"
        err = await post_json(client, "/v1/chat/completions/control", {"id": "x", "action": "pause"}, status=400)
        assert err["error"]["message"] == "unknown control action"
        assert await post_json(client, "/v1/chat/completions/control", {"id": "chatcmpl-none", "action": "reasoning_end"}) \
            == {"success": False, "message": "no active completion for this id"}
        # a completion sent without reasoning_control cannot be ended (the engine is held at its first
        # token until the control request is in the engine's queue, as in test_reasoning_control)
        with engine_held_for_control(st.engine, after=1):
            task = asyncio.ensure_future(client.post("/v1/chat/completions", json={
                "messages": HI, "temperature": 0, "max_tokens": 4}))
            for _ in range(6000):
                if st.live_chats:
                    break
                await asyncio.sleep(0.01)
            (cid, _), = st.live_chats.items()
            ctl = await post_json(client, "/v1/chat/completions/control", {"id": cid, "action": "reasoning_end"})
            assert ctl == {"success": False, "message": "reasoning control not enabled for this completion"}
            r = await task
            assert r.status == 200
            assert (await r.json())["choices"][0]["finish_reason"] == "length"
        assert not st.live_chats

    inproc(argv(thinking_model_path("opens")), scenario)
