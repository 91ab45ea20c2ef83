"""Reasoning budgets in the library: llama.cpp's budget sampler inside pyllama's Sampler, its
initial state from the generation prompt, and Llama.create_chat_completion(reasoning_budget=...).

The models have random weights and a thinking template on the deepseek-llm vocab
(tests/conftest.py: ``thinking_model_path``). With Qwen 3.5's template the generation prompt ends
in ``<think>\\n``, so the reply starts inside the reasoning and, left alone, a random model never
closes it: whatever ends the reasoning is the budget.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import pytest

import pyllama
from pyllama import _core
from pyllama.frontend.chat import RenderedChat, chat_reasoning_sampling, grammar_sampling
from pyllama.params import SamplingParams

HI = [{"role": "user", "content": "Hi!"}]


@pytest.fixture(scope="module")
def think_llm(thinking_model_path):
    with pyllama.Llama(thinking_model_path("opens"), n_ctx=1024, n_batch=256, seed=7) as llm:
        yield llm


@pytest.fixture(scope="module")
def self_model(thinking_model_path):
    m = pyllama.Model(thinking_model_path("self"))
    yield m
    m.close()


def toks(vocab, text: str) -> List[int]:
    return vocab.tokenize(text, add_special=False, parse_special=True)


def pieces(vocab, tokens: Sequence[int]) -> List[bytes]:
    return [vocab.token_to_piece(t, special=True) for t in tokens]


def find(seq: Sequence[Any], sub: Sequence[Any]) -> int:
    """Index of the first occurrence of ``sub`` in ``seq``, -1 if none."""
    for i in range(len(seq) - len(sub) + 1):
        if list(seq[i:i + len(sub)]) == list(sub):
            return i
    return -1


def utf8_complete(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def budget_sampler(model, rendered: Dict[str, Any], budget: int, **kw: Any) -> "_core.Sampler":
    if isinstance(rendered, dict):     # a raw _core.ChatTemplates.render() answer
        rendered = RenderedChat.from_shim(rendered)
    extra = chat_reasoning_sampling(rendered, model.vocab, budget=budget, **kw)
    return _core.Sampler(model, SamplingParams(temperature=0, **extra))


# ---------------------------------------------------------------- SamplingParams


@pytest.mark.parametrize("bad", [-2, -5, 2**31, "3", 1.5, True, None])
def test_budget_must_be_an_int_from_minus_one(bad):
    with pytest.raises(ValueError, match="reasoning_budget_tokens"):
        SamplingParams(reasoning_budget_tokens=bad)


def test_budget_fields_validated_and_normalized():
    sp = SamplingParams(reasoning_budget_tokens=0, reasoning_budget_start=[1, 2],
                        reasoning_budget_end=[[3], [], (4, 5)], reasoning_budget_prefill=[6])
    assert sp.reasoning_budget_start == (1, 2) and sp.reasoning_budget_end == ((3,), (4, 5))
    assert sp.reasoning_budget_prefill == (6,) and sp.reasoning_budget_tokens == 0
    assert SamplingParams().reasoning_budget_tokens == -1          # unlimited by default
    assert SamplingParams.from_dict({"thinking_budget_tokens": 7}).reasoning_budget_tokens == 7
    for bad in ({"reasoning_budget_end": "</think>"}, {"reasoning_budget_end": [1, 2]},
                {"reasoning_budget_start": "<think>"}, {"reasoning_budget_start": [-1]},
                {"reasoning_budget_message": 5}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# ---------------------------------------------------------------- the sampler and its state


def test_template_tags_and_initial_state(think_llm, self_model):
    m = think_llm.model
    on = think_llm.apply_chat_template(HI)
    off = think_llm.apply_chat_template(HI, chat_template_kwargs={"enable_thinking": False})
    assert on.thinking_start_tag == "<think>" and "</think>" in on.thinking_end_tags
    assert on.generation_prompt.endswith("<think>\n")
    # the generation prompt opens <think>: the reply starts inside the reasoning
    assert budget_sampler(m, on, 5).reasoning_budget_state == "counting"
    # thinking disabled: the prompt closes the block itself
    assert budget_sampler(m, off, 5).reasoning_budget_state == "done"
    # a template whose model opens <think> itself: waiting for it
    rendered = _core.ChatTemplates(self_model).render({"messages": HI})
    assert rendered["thinking_start_tag"] == "<think>" and "<think>" not in rendered["generation_prompt"]
    assert budget_sampler(self_model, rendered, 5).reasoning_budget_state == "idle"


def test_sampler_only_when_needed(think_llm):
    m = think_llm.model
    on = think_llm.apply_chat_template(HI)
    assert budget_sampler(m, on, 3).names[0] == "reasoning-budget"
    assert budget_sampler(m, on, 0).reasoning_budget_state == "forcing"
    # unlimited and nothing else needing it: no budget sampler (llama.cpp's common_sampler_init)
    unlimited = budget_sampler(m, on, -1)
    assert "reasoning-budget" not in unlimited.names and unlimited.reasoning_budget_state is None
    assert unlimited.force_reasoning_end() is False
    # reasoning control keeps it, with an unlimited budget
    assert budget_sampler(m, on, -1, control=True).reasoning_budget_state == "counting"
    # a template without thinking tags: nothing to do
    assert chat_reasoning_sampling(RenderedChat(prompt="", generation_prompt="x"), m.vocab, budget=3) == {}


def test_state_follows_generated_tokens(self_model):
    """IDLE -> COUNTING on the start tag, the budget counted down, then the message and end tag forced."""
    v = self_model.vocab
    rendered = _core.ChatTemplates(self_model).render({"messages": HI})
    start, end, msg = toks(v, "<think>"), toks(v, "</think>"), toks(v, " Stop.")
    s = budget_sampler(self_model, rendered, 3, message=" Stop.")
    filler = toks(v, " a")[0]
    s.accept(filler)
    assert s.reasoning_budget_state == "idle"
    for t in start:
        s.accept(t)
    assert s.reasoning_budget_state == "counting"
    s.accept(filler)
    s.accept(filler)
    assert s.reasoning_budget_state == "counting"
    s.accept(filler)                                        # the third token spends the budget
    assert s.reasoning_budget_state == "forcing"
    for t in msg + end:
        assert s.reasoning_budget_state == "forcing"
        s.accept(t)
    assert s.reasoning_budget_state == "done"
    # a new <think> re-arms it; a natural end tag within the budget ends it without forcing
    for t in start + end:
        s.accept(t)
    assert s.reasoning_budget_state == "done"
    # reasoning control: forcing on demand, only while counting
    for t in start:
        s.accept(t)
    assert s.force_reasoning_end() is True and s.reasoning_budget_state == "forcing"
    assert s.force_reasoning_end() is False
    # reset goes back to the generation prompt's state
    s.reset()
    assert s.reasoning_budget_state == "idle"


# ---------------------------------------------------------------- through Llama


def chat(llm, **kw: Any) -> Dict[str, Any]:
    res = llm.create_chat_completion(HI, temperature=0, logprobs=True, top_logprobs=0, **kw)
    choice = res["choices"][0]
    return {"message": choice["message"], "pieces": [bytes(e["bytes"]) for e in choice["logprobs"]["content"]],
            "finish": choice["finish_reason"]}


def forced_pieces(llm, message: str = "") -> List[bytes]:
    v = llm.model.vocab
    end = llm.apply_chat_template(HI).thinking_end_tags[0]
    return pieces(v, (toks(v, message) if message else []) + toks(v, end))


@pytest.mark.parametrize("budget", [1, 4, 9])
def test_budget_ends_the_reasoning(think_llm, budget):
    res = chat(think_llm, reasoning_budget=budget, max_tokens=budget + 16)
    forced = forced_pieces(think_llm)
    k = find(res["pieces"], forced)
    assert k >= 0, (forced, res["pieces"])
    # the "\n" after <think> in the generation prompt is already inside the block and counts:
    # budget - 1 generated tokens, then the end tag (later only to finish a UTF-8 character)
    n_free = budget - 1
    assert k >= n_free
    if k > n_free:
        assert not utf8_complete(b"".join(res["pieces"][:n_free])) and k <= n_free + 3, res["pieces"]
    assert utf8_complete(b"".join(res["pieces"][:k]))
    msg = res["message"]
    generated = b"".join(res["pieces"][:k]).decode()
    assert (msg.get("reasoning_content") or "").strip() == generated.strip()
    assert msg["content"]                                   # the answer follows the forced end tag
    assert "</think>" not in msg["content"]


def test_budget_message_is_injected(think_llm):
    res = chat(think_llm, reasoning_budget=5, reasoning_budget_message=" Time to answer.", max_tokens=24)
    forced = forced_pieces(think_llm, " Time to answer.")
    k = find(res["pieces"], forced)
    assert k >= 4, res["pieces"]
    assert res["message"]["reasoning_content"].rstrip().endswith("Time to answer.")
    assert res["message"]["content"]


def test_budget_zero_means_no_reasoning(think_llm):
    res = chat(think_llm, reasoning_budget=0, max_tokens=12)
    end = pieces(think_llm.model.vocab, toks(think_llm.model.vocab, "</think>"))
    # the first tokens close the block the generation prompt opened
    assert find(res["pieces"][:len(end) + 1], end) >= 0, res["pieces"]
    assert not (res["message"].get("reasoning_content") or "").strip()
    assert res["message"]["content"]


def test_unlimited_budget_and_streaming(think_llm):
    free = chat(think_llm, max_tokens=16)
    assert find(free["pieces"], forced_pieces(think_llm)) < 0
    assert free["message"]["reasoning_content"] and not free["message"]["content"] and free["finish"] == "length"
    assert chat(think_llm, reasoning_budget=-1, max_tokens=16)["message"] == free["message"]
    # streaming gives the same message as the non-streaming call
    whole = think_llm.create_chat_completion(HI, temperature=0, max_tokens=20, reasoning_budget=3)
    chunks = list(think_llm.create_chat_completion(HI, temperature=0, max_tokens=20, reasoning_budget=3,
                                                   stream=True))
    deltas = [c["choices"][0]["delta"] for c in chunks]
    msg = whole["choices"][0]["message"]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == msg["reasoning_content"]
    assert "".join(d.get("content") or "" for d in deltas) == msg["content"]


@pytest.mark.parametrize("bad", [-5, "3", 2.5])
def test_bad_budget_raises(think_llm, bad):
    with pytest.raises(ValueError, match="reasoning_budget"):
        think_llm.create_chat_completion(HI, max_tokens=4, reasoning_budget=bad)


def test_no_thinking_tags_no_budget(chat_llm):
    """A template without thinking tags (Qwen 2.5): the budget changes nothing."""
    rendered = chat_llm.apply_chat_template(HI)
    assert rendered.thinking_end_tags == () and grammar_sampling(rendered, chat_llm.model.vocab) == {}
    a = chat_llm.create_chat_completion(HI, temperature=0, max_tokens=8)
    b = chat_llm.create_chat_completion(HI, temperature=0, max_tokens=8, reasoning_budget=0)
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
