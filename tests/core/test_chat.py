"""Chat templates, tool-call parsing, JSON-schema grammars and chat completions.

Template / parser tests render llama.cpp's own templates (vendor/llama.cpp/models/templates)
without a model and parse hand-written outputs in each family's tool-call format (the formats
llama.cpp's tests/test-chat.cpp uses). Completion tests run the random-weights ``chat_llm``.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

import pyllama

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
TOOLS = [WEATHER_TOOL]

USER_1 = "What is the weather in Paris?"
USER_2 = "And what about Berlin?"
TOOL_RESULT = "Sunny, 23 degrees (tool result 7f3a)"
# Mistral templates require tool call ids of exactly 9 alphanumeric characters.
CALL_ID = "call12345"

HISTORY = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": CALL_ID, "type": "function",
                     "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]},
    {"role": "tool", "tool_call_id": CALL_ID, "name": "get_weather", "content": TOOL_RESULT},
    {"role": "assistant", "content": "It is sunny in Paris."},
    {"role": "user", "content": USER_2},
]

BERLIN = {"city": "Berlin"}


def _call(name="get_weather", args=None, id=None):
    return {"name": name, "arguments": BERLIN if args is None else args, "id": id}


# family id -> (template file, model output in that family's format, expected parse)
# expected: content / reasoning_content (compared stripped), tool_calls [{name, arguments (parsed), id or None}]
FAMILIES = {
    "qwen2.5": (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        'Let me check that.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>',
        {"content": "Let me check that.", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "qwen3-thinking": (
        "Qwen-Qwen3-0.6B.jinja",
        "<think>\nThe user wants the weather in Berlin.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>',
        {"content": "", "reasoning_content": "The user wants the weather in Berlin.", "tool_calls": [_call()]},
    ),
    "llama-3.1": (
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        '{"name": "get_weather", "parameters": {"city": "Berlin"}}',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "llama-3.2": (
        "meta-llama-Llama-3.2-3B-Instruct.jinja",
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Berlin"}}',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "hermes-3": (
        "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja",
        'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>',
        {"content": "Checking.", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "mistral-nemo": (
        "mistralai-Mistral-Nemo-Instruct-2407.jinja",
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Berlin"}, "id": "xyz987ABC"}]',
        {"content": "", "reasoning_content": "", "tool_calls": [_call(id="xyz987ABC")]},
    ),
    "deepseek-r1-distill": (
        # the generation prompt opens <think>, so the output starts inside the reasoning
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja",
        "I need the weather tool.</think>\n\n"
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
        '```json\n{"city": "Berlin"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>',
        {"content": "", "reasoning_content": "I need the weather tool.", "tool_calls": [_call()]},
    ),
    "deepseek-v3.1": (
        "deepseek-ai-DeepSeek-V3.1.jinja",
        "I need the weather tool.</think>"
        '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Berlin"}'
        "<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        {"content": "", "reasoning_content": "I need the weather tool.", "tool_calls": [_call()]},
    ),
    "gpt-oss": (
        "openai-gpt-oss-120b.jinja",
        "<|channel|>analysis<|message|>Need the weather tool.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city": "Berlin"}',
        {"content": "", "reasoning_content": "Need the weather tool.", "tool_calls": [_call()]},
    ),
    "command-r7b": (
        "CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja",
        "<|START_THINKING|>I will call the tool.<|END_THINKING|><|START_ACTION|>[\n"
        '    {"tool_call_id": "0", "tool_name": "get_weather", "parameters": {"city": "Berlin"}}\n'
        "]<|END_ACTION|>",
        {"content": "", "reasoning_content": "I will call the tool.", "tool_calls": [_call(id="0")]},
    ),
    "functionary-3.1": (
        "meetkai-functionary-medium-v3.1.jinja",
        '<function=get_weather>{"city": "Berlin"}</function>',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "functionary-3.2": (
        # the generation prompt ends with ">>>": the output starts with the recipient
        "meetkai-functionary-medium-v3.2.jinja",
        'get_weather\n{"city": "Berlin"}',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "granite-4.0": (
        "ibm-granite-granite-4.0.jinja",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "qwen3-coder": (
        "Qwen3-Coder.jinja",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nBerlin\n</parameter>\n</function>\n</tool_call>",
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "firefunction-v2": (
        "fireworks-ai-llama-3-firefunction-v2.jinja",
        ' functools[{"name": "get_weather", "arguments": {"city": "Berlin"}}]',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "gemma-4": (
        "google-gemma-4-31B-it.jinja",
        '<|tool_call>call:get_weather{city:<|"|>Berlin<|"|>}<tool_call|>',
        {"content": "", "reasoning_content": "", "tool_calls": [_call()]},
    ),
    "kimi-k2": (
        "moonshotai-Kimi-K2.jinja",
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Berlin"}<|tool_call_end|><|tool_calls_section_end|>',
        {"content": "", "reasoning_content": "", "tool_calls": [_call(id="functions.get_weather:0")]},
    ),
}


_TEMPLATE_CACHE: dict = {}


def _templates(filename: str) -> pyllama.ChatTemplates:
    if filename not in _TEMPLATE_CACHE:
        _TEMPLATE_CACHE[filename] = pyllama.ChatTemplates(None, (TEMPLATES_DIR / filename).read_text())
    return _TEMPLATE_CACHE[filename]


def _render_history(filename: str, **extra) -> dict:
    return _templates(filename).render({"messages": HISTORY, "tools": TOOLS, **extra})


def _normalized(msg: dict) -> dict:
    """A parse result with stripped text and parsed arguments, for comparisons."""
    return {
        "content": (msg.get("content") or "").strip(),
        "reasoning_content": (msg.get("reasoning_content") or "").strip(),
        "tool_calls": [{"name": tc["name"], "arguments": json.loads(tc["arguments"]), "id": tc.get("id") or ""}
                       for tc in msg.get("tool_calls") or []],
    }


def test_at_least_eight_tool_families():
    assert len({spec[0] for spec in FAMILIES.values()}) >= 8


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_renders_tools_and_tool_history(family):
    filename = FAMILIES[family][0]
    ct = _templates(filename)
    caps = ct.caps
    assert caps["supports_tool_calls"], f"{filename} should support tool calls"
    assert caps["jinja"] is True
    # llama.cpp trims the source and patches a few known templates, so compare only the start
    assert ct.source().strip()[:100] == (TEMPLATES_DIR / filename).read_text().strip()[:100]

    rendered = _render_history(filename)
    prompt = rendered["prompt"]
    assert isinstance(prompt, str) and prompt
    assert "get_weather" in prompt, "the tool name is missing from the prompt"
    assert TOOL_RESULT in prompt, "the tool result is missing from the prompt"
    assert USER_1 in prompt and USER_2 in prompt, "the user text is missing from the prompt"
    # the conversation order is kept: the first question, the tool result, then the last question
    assert prompt.index(USER_1) < prompt.index(TOOL_RESULT) < prompt.rindex(USER_2)
    # the generation prompt the parser is primed with is the end of the rendered prompt
    gp = rendered["generation_prompt"]
    assert prompt.endswith(gp), (gp, prompt[-200:])
    assert isinstance(rendered["syntax"], dict) and rendered["syntax"]["format"] == rendered["format"]
    assert rendered["format_name"] == rendered["syntax"]["format_name"]
    for key in ("grammar", "grammar_lazy", "grammar_triggers", "additional_stops"):
        assert key in rendered
    # tools with tool_choice "auto" give a (lazy) grammar for the calls
    if rendered["grammar"]:
        assert "root ::=" in rendered["grammar"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_parses_tool_call(family):
    filename, output, expected = FAMILIES[family]
    syntax = _render_history(filename)["syntax"]
    got = pyllama.chat_parse(output, syntax)
    assert set(got) >= {"content", "reasoning_content", "tool_calls"}
    norm = _normalized(got)
    assert [c["name"] for c in norm["tool_calls"]] == [c["name"] for c in expected["tool_calls"]], got
    for call, want in zip(norm["tool_calls"], expected["tool_calls"]):
        assert call["arguments"] == want["arguments"], got
        if want["id"] is not None:
            assert call["id"] == want["id"], got
    assert norm["content"] == expected["content"], got
    assert norm["reasoning_content"] == expected["reasoning_content"], got


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_parses_streamed_prefixes(family):
    filename, output, _ = FAMILIES[family]
    syntax = _render_history(filename)["syntax"]
    whole = pyllama.chat_parse(output, syntax)

    prev = None
    for i in range(1, len(output) + 1):
        cur = pyllama.chat_parse(output[:i], syntax, is_partial=True)  # must never raise
        if prev is not None:
            # streaming sends deltas: what was parsed from a prefix only ever grows
            for key in ("content", "reasoning_content"):
                assert cur[key].startswith(prev[key]), (i, key, prev[key], cur[key])
            assert len(cur["tool_calls"]) >= len(prev["tool_calls"]), (i, prev, cur)
            for old, new in zip(prev["tool_calls"], cur["tool_calls"]):
                if old["name"]:
                    assert new["name"] == old["name"], (i, old, new)
                assert new["arguments"].startswith(old["arguments"]), (i, old, new)
        prev = cur
    # the complete text, still flagged partial, already yields the whole message
    assert _normalized(prev) == _normalized(whole)

    final = pyllama.chat_parse(output, syntax, is_partial=False)
    assert final == whole


def test_parallel_tool_calls_parse():
    filename = "Qwen-Qwen2.5-7B-Instruct.jinja"
    rendered = _render_history(filename, parallel_tool_calls=True)
    output = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_weather", "arguments": {"city": "São Paulo"}}\n</tool_call>')
    got = _normalized(pyllama.chat_parse(output, rendered["syntax"]))
    assert [(c["name"], c["arguments"]) for c in got["tool_calls"]] == [
        ("get_weather", {"city": "Berlin"}), ("get_weather", {"city": "São Paulo"})]
    assert got["content"] == ""


def test_plain_content_parses_as_content():
    for filename in ("Qwen-Qwen2.5-7B-Instruct.jinja", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja"):
        syntax = _render_history(filename)["syntax"]
        got = pyllama.chat_parse("Hello, world!\nWhat's up?", syntax)
        assert got["content"] == "Hello, world!\nWhat's up?"
        assert got["tool_calls"] == [] and got["reasoning_content"] == ""


# ---------------------------------------------------------------- grammars and errors

def test_json_schema_to_grammar():
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
              "required": ["ok"], "additionalProperties": False}
    g = pyllama.json_schema_to_grammar(schema)
    assert "root ::=" in g
    assert '\\"ok\\"' in g  # the property name is a literal of the grammar
    assert pyllama.json_schema_to_grammar(json.dumps(schema)) == g  # dict or JSON text


@pytest.mark.parametrize("bad", [
    {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}},
    {"type": 123},
    {"type": "no-such-type"},
    "this is not JSON",
])
def test_json_schema_to_grammar_rejects_bad_schema(bad):
    with pytest.raises(pyllama.GrammarError):
        pyllama.json_schema_to_grammar(bad)


@pytest.mark.parametrize("source", ["{% if %}oops{% endif %}", "{% for m in %}{% endfor %}", "{{ messages[ }}"])
def test_unparseable_template_raises(source):
    with pytest.raises(pyllama.ChatTemplateError):
        pyllama.ChatTemplates(None, source)


def test_template_required_without_model():
    with pytest.raises(pyllama.ChatTemplateError):
        pyllama.ChatTemplates(None, "")


def test_template_raising_at_render_time():
    ct = pyllama.ChatTemplates(None, '{{ raise_exception("nope, not today") }}')
    with pytest.raises(pyllama.ChatTemplateError, match="nope, not today"):
        ct.render({"messages": [{"role": "user", "content": "hi"}]})


def test_tool_choice_unknown_function_raises():
    ct = _templates("Qwen-Qwen2.5-7B-Instruct.jinja")
    req = {"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
           "tool_choice": {"type": "function", "function": {"name": "no_such_function"}}}
    with pytest.raises(pyllama.ChatTemplateError, match="no_such_function"):
        ct.render(req)
    # naming a tool that exists is fine and forces a (non-lazy) call grammar
    req["tool_choice"] = {"type": "function", "function": {"name": "get_weather"}}
    out = ct.render(req)
    assert out["grammar"] and not out["grammar_lazy"]
    with pytest.raises(pyllama.ChatTemplateError):
        ct.render({**req, "tool_choice": "sometimes"})


def test_chat_completion_unknown_tool_choice_raises(chat_llm):
    with pytest.raises(pyllama.ChatTemplateError):
        chat_llm.create_chat_completion(
            [{"role": "user", "content": "hi"}], tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "no_such_function"}}, max_tokens=1)


# ---------------------------------------------------------------- the chat model

PLAIN_MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]
N_GEN = 16


def _stream_text(chunks, key="content"):
    return "".join(c["choices"][0]["delta"].get(key) or "" for c in chunks)


def test_chat_completion_shape_usage_and_streaming(chat_llm):
    rendered = chat_llm.apply_chat_template(PLAIN_MESSAGES)
    n_prompt = len(chat_llm.tokenize(rendered.prompt, special=True))

    chat_llm.reset()
    res = chat_llm.create_chat_completion(PLAIN_MESSAGES, max_tokens=N_GEN, temperature=0, seed=11)
    assert res["id"].startswith("chatcmpl-")
    assert res["object"] == "chat.completion"
    assert isinstance(res["created"], int) and res["model"]
    assert len(res["choices"]) == 1
    choice = res["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert isinstance(content, str)
    assert "tool_calls" not in choice["message"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = res["usage"]
    assert usage["prompt_tokens"] == n_prompt
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 1 <= usage["completion_tokens"] <= N_GEN
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == N_GEN
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0  # after reset()

    # the same text as a raw completion of the rendered prompt, parsed with the template's parser
    raw = chat_llm.create_completion(rendered.prompt, max_tokens=N_GEN, temperature=0, seed=11)
    assert raw["usage"]["prompt_tokens"] == n_prompt
    assert pyllama.chat_parse(raw["choices"][0]["text"], rendered.syntax)["content"] == content

    # streaming, with the prompt cached, and again after a reset: identical greedy text
    for reset in (False, True):
        if reset:
            chat_llm.reset()
        chunks = list(chat_llm.create_chat_completion(PLAIN_MESSAGES, max_tokens=N_GEN, temperature=0,
                                                      seed=11, stream=True))
        assert len(chunks) >= 2
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
        assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
        assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
        assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
        assert _stream_text(chunks) == content
        s_usage = chunks[-1]["usage"]
        assert s_usage["prompt_tokens"] == n_prompt
        assert s_usage["completion_tokens"] == usage["completion_tokens"]
        cached = s_usage["prompt_tokens_details"]["cached_tokens"]
        assert cached == (0 if reset else n_prompt - 1), (reset, cached)


def test_chat_completion_with_tools_is_well_formed(chat_llm):
    # a random model need not call the tool; whatever it produces must be well-formed
    res = chat_llm.create_chat_completion([{"role": "user", "content": USER_2}], tools=TOOLS,
                                          tool_choice="auto", max_tokens=8, temperature=0)
    assert res["object"] == "chat.completion"
    choice = res["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length", "tool_calls")
    calls = choice["message"].get("tool_calls") or []
    if choice["finish_reason"] == "tool_calls":
        assert calls
    for call in calls:
        assert call["type"] == "function" and call["function"]["name"] == "get_weather"
        if choice["finish_reason"] == "tool_calls":  # complete calls carry complete JSON arguments
            json.loads(call["function"]["arguments"])


SHORT_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
JSON_MESSAGES = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]
JSON_MAX_TOKENS = 200


def _check_json_content(content, finish_reason):
    if finish_reason != "stop":
        pytest.fail(f"the schema-constrained answer did not finish within {JSON_MAX_TOKENS} tokens "
                    f"(finish_reason={finish_reason!r}); content so far: {content!r}")
    try:
        value = json.loads(content)
    except json.JSONDecodeError as e:
        pytest.fail(f"response_format json_schema produced content that is not JSON ({e}): {content!r}")
    jsonschema.validate(value, SHORT_SCHEMA)
    return value


def test_response_format_json_schema_grammar_is_eager(chat_llm):
    rendered = chat_llm.apply_chat_template(JSON_MESSAGES, json_schema=SHORT_SCHEMA)
    assert "root ::=" in rendered.grammar
    assert '\\"ok\\"' in rendered.grammar
    assert rendered.grammar_lazy is False


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_response_format_json_schema(chat_llm, stream):
    rf = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SHORT_SCHEMA}}
    out = chat_llm.create_chat_completion(JSON_MESSAGES, response_format=rf, max_tokens=JSON_MAX_TOKENS,
                                          temperature=0.7, seed=5, stream=stream)
    if stream:
        chunks = list(out)
        content = _stream_text(chunks)
        finish = chunks[-1]["choices"][0]["finish_reason"]
    else:
        msg = out["choices"][0]["message"]
        assert "tool_calls" not in msg
        content = msg["content"]
        finish = out["choices"][0]["finish_reason"]
    _check_json_content(content, finish)


def test_response_format_json_object(chat_llm):
    rf = {"type": "json_object", "schema": SHORT_SCHEMA}
    out = chat_llm.create_chat_completion(JSON_MESSAGES, response_format=rf, max_tokens=JSON_MAX_TOKENS,
                                          temperature=0.7, seed=6)
    _check_json_content(out["choices"][0]["message"]["content"], out["choices"][0]["finish_reason"])


def test_apply_chat_template_with_tools(chat_llm):
    msgs = [{"role": "user", "content": USER_2}]
    with_tools = chat_llm.apply_chat_template(msgs, tools=TOOLS)
    without = chat_llm.apply_chat_template(msgs)
    assert '"name": "get_weather"' in with_tools.prompt
    assert "get_weather" not in without.prompt
    assert USER_2 in with_tools.prompt and USER_2 in without.prompt
    assert with_tools.prompt.endswith(with_tools.generation_prompt)
    # tools with tool_choice auto: a lazy grammar, triggered by the <tool_call> tag
    assert with_tools.grammar and with_tools.grammar_lazy
    assert any("<tool_call>" in t["value"] for t in with_tools.grammar_triggers)
    assert not without.grammar
    # the model's own template is the one in the GGUF
    assert "<tool_call>" in chat_llm.chat_templates.source()
    assert chat_llm.chat_templates.caps["supports_tool_calls"]
