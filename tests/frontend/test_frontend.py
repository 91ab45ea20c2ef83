"""The front end without a server: the request builder, chat rendering, limits, formatting."""
from __future__ import annotations

import pytest

import pyllama
from pyllama.engine import RequestOutput, TokenLogprob
from pyllama.errors import InvalidRequestError, NotSupportedError
from pyllama.frontend import (ChatDefaults, ChatInput, Frontend, GenerationDefaults, GenerationOptions, Limits,
                              ModelBundle)
from pyllama.frontend import formatting as fmt
from pyllama.params import DEFAULT_SEED, SamplingParams

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def chat_model(chat_model_path):
    m = pyllama.Model(chat_model_path)
    yield m
    m.close()


@pytest.fixture()
def fe(chat_model):
    bundle = ModelBundle.of_model(chat_model)
    yield Frontend(bundle, defaults=GenerationDefaults(sampling=SamplingParams(temperature=0.5, seed=3), n_predict=7),
                   limits=Limits(max_chat_messages=10, max_json_schema_bytes=200, max_grammar_bytes=50,
                                 max_dry_sequence_breakers=2))
    bundle.close()


def test_options_of_any_object_take_the_fields_it_has():
    class Body:
        temperature = 0.1
        top_k = None
        grammar = "root ::= \"a\""
        unrelated = 5

    o = GenerationOptions.of(Body())
    assert o.temperature == 0.1 and o.top_k is None and o.grammar == "root ::= \"a\"" and o.id_slot == -1


def test_defaults_then_fields_then_choices(fe):
    p = fe.completion("hello", GenerationOptions(top_k=5), n=3, stop="x")
    assert len(p.requests) == 3 and p.prompts == [fe.tokenize("hello", True, True)]
    first = p.requests[0]
    assert first.sampling.temperature == 0.5 and first.sampling.top_k == 5       # default, then the field
    assert first.max_tokens == 7 and first.stop == ("x",)                          # --n-predict default
    # a fixed seed: each choice its own reproducible one
    assert [r.sampling.seed for r in p.requests] == [3, 4, 5]
    # the random seed stays random for every choice
    p = fe.completion("hello", GenerationOptions(seed=-1), n=2)
    assert {r.sampling.seed for r in p.requests} == {DEFAULT_SEED}


def test_prompt_shapes_and_bad_prompts(fe):
    toks = fe.tokenize("a b", True, True)
    assert fe.completion(["a b", "c"], GenerationOptions()).prompts[0] == toks      # several prompts
    assert fe.completion(toks, GenerationOptions()).prompts == [toks]                # one prompt of ids
    for bad, msg in (([], "non-empty"), ([10 ** 9], "out of range"), ([True], "expected a string or a token id"),
                     ("", "empty")):
        with pytest.raises(InvalidRequestError, match=msg):
            fe.completion(bad, GenerationOptions())


def test_chat_renders_once_with_stops_grammar_and_defaults(chat_model):
    bundle = ModelBundle.of_model(chat_model)
    try:
        fe = Frontend(bundle, chat_defaults=ChatDefaults(chat_template_kwargs={"x": 1}))
        p = fe.chat(ChatInput(HI, response_format={"type": "json_object"}), GenerationOptions(), stop=["END"])
        r = p.rendered
        assert r.prompt.endswith(r.generation_prompt) and "hi" in r.prompt
        assert "root ::=" in r.grammar and p.requests[0].sampling.grammar == r.grammar
        assert p.requests[0].stop[0] == "END"
        assert p.prompts[0] == fe.chat_prompt_tokens(r)
        with pytest.raises(InvalidRequestError, match="not both"):
            fe.render(ChatInput(HI, response_format={"type": "json_object"}, json_schema={"type": "object"}))
        with pytest.raises(InvalidRequestError, match="not both"):
            fe.render(ChatInput(HI, response_format={"type": "json_object"}, grammar="root ::= \"a\""))
        with pytest.raises(InvalidRequestError, match="unsupported response_format"):
            fe.render(ChatInput(HI, response_format={"type": "yaml"}))
    finally:
        bundle.close()


def test_limits_refuse_before_the_work(fe):
    with pytest.raises(InvalidRequestError, match=r"messages: 11 is more than this server accepts \(10\)"):
        fe.render(ChatInput(HI * 11))
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(20)}}
    with pytest.raises(InvalidRequestError, match="JSON schema"):
        fe.render(ChatInput(HI, response_format={"type": "json_schema", "json_schema": {"schema": big}}))
    with pytest.raises(InvalidRequestError, match="json_schema"):
        fe.completion("hi", GenerationOptions(json_schema=big))
    with pytest.raises(InvalidRequestError, match="grammar"):
        fe.completion("hi", GenerationOptions(grammar="root ::= " + " | ".join(['"a"'] * 30)))
    with pytest.raises(InvalidRequestError, match="dry_sequence_breakers: 3"):
        fe.completion("hi", GenerationOptions(dry_sequence_breakers=["a", "b", "c"]))
    assert fe.completion("hi", GenerationOptions(dry_sequence_breakers=["a", "b"])).requests


def test_lora_field_and_logit_bias(fe):
    with pytest.raises(InvalidRequestError, match="no LoRA adapter is loaded"):
        fe.completion("hi", GenerationOptions(lora=[{"id": 0, "scale": 1.0}]))
    p = fe.completion("hi", GenerationOptions(logit_bias={"5": -1.0, "7": False}))
    assert p.requests[0].sampling.logit_bias == ((5, -1.0), (7, float("-inf")))
    with pytest.raises(InvalidRequestError, match="out of range"):
        fe.completion("hi", GenerationOptions(logit_bias=[[10 ** 9, 1.0]]))


def test_infill_needs_fim_tokens(fe):
    with pytest.raises(NotSupportedError, match="fill-in-the-middle"):
        fe.infill_prompt("a", "b", "")


def test_tokenize_json_is_json_dumps(fe):
    import json
    for text in ("", "hello there", "x y " * 50_000):
        assert fe.tokenize_json(text, True, True) == json.dumps({"tokens": fe.tokenize(text, True, True)}).encode()


def test_formatting_folds_what_it_streams(fe):
    deltas = [{"role": "assistant", "content": None}, {"reasoning_content": "think"}, {"content": "Hel"},
              {"content": "lo"}, {"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                                                  "function": {"name": "f", "arguments": ""}}]},
              {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}]
    chunks = [fmt.chat_chunk("id", 1, "m", 0, d) for d in deltas]
    chunks.append(fmt.chat_chunk("id", 1, "m", 0, {}, fmt.chat_finish_reason("stop", 1)))
    whole = fmt.collect_chat(chunks)
    msg = whole["choices"][0]["message"]
    assert whole["object"] == "chat.completion" and whole["choices"][0]["finish_reason"] == "tool_calls"
    assert msg == {"role": "assistant", "content": "Hello", "reasoning_content": "think",
                   "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    lps = [TokenLogprob(fe.tokenize("a", False, False)[0], -0.5, [])]
    lp, off = fmt.completion_logprobs(fe.vocab, lps, 10)
    assert lp["text_offset"] == [10] and off == 10 + len(lp["tokens"][0]) and lp["token_logprobs"] == [-0.5]
    u = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 1}}
    outs = [RequestOutput("a", usage=u), RequestOutput("b", usage=u)]
    # two choices of one prompt: the prompt counts once
    assert fmt.usage(outs, n=2) == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8,
                                    "prompt_tokens_details": {"cached_tokens": 1}}
