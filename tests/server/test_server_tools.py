"""Tool calling, structured output and reasoning through the server, end to end.

Random weights never choose to call a tool, so the tool-call *parsing* path is tested two ways:

- with the model's output scripted: the app's engine is made to "generate" a hand-written output
  in the family's format, token by token (``scripted_output``). Everything else is the real server:
  ``render_chat`` (the template's parser syntax), ``ChatDeltaParser``, the chunks, the SSE stream, the
  finish_reason logic and the non-streaming message assembly. The chunks are folded with the
  official client's own accumulator (``openai.lib.streaming.chat.ChatCompletionStreamState``).
- for real, where a grammar makes it possible: Llama 3.1's ``tool_choice: "required"`` grammar is
  ``<free text without "{"> <call>``, so a logit bias on the ``{"`` token makes even a random model
  open the call at once, and the grammar then forces a complete call that validates against the
  tool's schema (``test_forced_tool_call_sdk``, through the OpenAI SDK against a subprocess server).

``tool_choice: "required"`` (see ``test_tool_choice_grammars``): llama.cpp's grammars for it are
eager but all of them let free text come first (an ``until-N`` rule: anything not containing the call
opener), so on its own "required" does not make a random model call anything within max_tokens.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Tuple

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")

from openai.lib.streaming.chat import ChatCompletionStreamState  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

from pyllama.frontend.chat import ChatDeltaParser, grammar_sampling as sampling_extras  # noqa: E402
from pyllama.server.pipeline import chat_input  # noqa: E402
from pyllama.server.schemas import ChatCompletionRequest  # noqa: E402
from pyllama.server.state import STATE  # noqa: E402
from aio_helpers import post_json, post_stream  # noqa: E402
from tool_support import (  # noqa: E402
    QWEN25, TOOLS, SCHEMAS, LLAMA31, PIN_DATE, FORCED_MAX_TOKENS, argv_for, token_pieces, scripted_output,
)

USER = [{"role": "user", "content": "What is the weather in Berlin, and the time in CET?"}]


# ---------------------------------------------------------------- models and helpers


def check_tool_call_deltas(chunks: List[Dict[str, Any]]) -> None:
    """OpenAI's streaming shape for tool calls: a call's first fragment has index, id, type and
    function.name (arguments may start there); every later one only index and function.arguments."""
    seen = set()
    for c in chunks:
        for ch in c["choices"]:
            for tc in (ch.get("delta") or {}).get("tool_calls") or []:
                i = tc["index"]
                if i not in seen:
                    assert i == len(seen), f"tool call index {i} skips {len(seen)}: {tc}"
                    seen.add(i)
                    assert isinstance(tc["id"], str) and tc["id"], tc
                    assert tc["type"] == "function" and tc["function"]["name"], tc
                else:
                    assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}, \
                        f"a later fragment of call {i} repeats more than arguments (clients concatenate them): {tc}"


def fold_chunks(chunks: List[Dict[str, Any]]):
    """The chunks folded by the official client's accumulator (what ``client.chat.completions.stream`` does;
    its snapshot, as get_final_completion() refuses finish_reason "length")."""
    state = ChatCompletionStreamState()
    for c in chunks:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(c)))
    return state.current_completion_snapshot


def render(st, body: Dict[str, Any]):
    """What the server renders for a chat request (the same call chat_completions makes)."""
    return st.fe.render(chat_input(ChatCompletionRequest.model_validate(body)))


def grammar_root(grammar: str) -> str:
    return next(ln for ln in grammar.splitlines() if ln.startswith("root ::= "))


def parse_args_json(call) -> Any:
    try:
        return json.loads(call.function.arguments)
    except json.JSONDecodeError as e:
        pytest.fail(f"tool call arguments are not JSON ({e}): {call.function.arguments!r}")


# ---------------------------------------------------------------- 1 + 3: families with tools

# family -> (vocab, template, what the tool prompt contains, an output in the family's format,
#            expected (content, [(name, arguments)]), the ids the model gave its calls (or None))
FAMILIES = {
    "qwen2.5": ("qwen2", QWEN25, "<tools>",
                'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>\n'
                '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET", "24h": true}}\n</tool_call>',
                ("Let me check.", [("get_weather", {"city": "Berlin"}), ("get_time", {"tz": "CET", "24h": True})]),
                None),
    "llama-3.1": ("llama-bpe", "meta-llama-Llama-3.1-8B-Instruct.jinja", "Environment: ipython",
                  '{"name": "get_weather", "parameters": {"city": "Berlin"}}',
                  ("", [("get_weather", {"city": "Berlin"})]), None),
    "hermes-3": ("llama-bpe", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use.jinja", "<tools>",
                 'Checking the weather in São Paulo… and Berlin.<tool_call>\n'
                 '{"name": "get_weather", "arguments": {"city": "Berlin"}}\n</tool_call>',
                 ("Checking the weather in São Paulo… and Berlin.", [("get_weather", {"city": "Berlin"})]), None),
    "mistral-nemo": ("llama-spm", "mistralai-Mistral-Nemo-Instruct-2407.jinja", "[AVAILABLE_TOOLS]",
                     '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Berlin"}, "id": "xyz987ABC"}, '
                     '{"name": "get_time", "arguments": {"tz": "UTC", "24h": false}, "id": "abc123XYZ"}]',
                     ("", [("get_weather", {"city": "Berlin"}), ("get_time", {"tz": "UTC", "24h": False})]),
                     ["xyz987ABC", "abc123XYZ"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_tools_render_run_and_parse(inproc, template_model, family):
    vocab, template, marker, output, (want_content, want_calls), model_ids = FAMILIES[family]
    chat = {"messages": USER, "tools": TOOLS, "parallel_tool_calls": True}

    async def scenario(client):
        st = client.server.app[STATE]
        # /apply-template shows the tools in the prompt (and only when there are tools)
        with_tools = (await post_json(client, "/apply-template", {"messages": USER, "tools": TOOLS}))["prompt"]
        plain = (await post_json(client, "/apply-template", {"messages": USER}))["prompt"]
        for s in ("get_weather", "Get the current weather in a city", "get_time", marker):
            assert s in with_tools, f"{s!r} is not in the {family} tool prompt:\n{with_tools}"
        assert "get_weather" not in plain
        assert USER[0]["content"] in with_tools and USER[0]["content"] in plain

        # a real request with tools: 200 and a well-formed response, streaming and not, the same text
        body = {**chat, "max_tokens": 8, "temperature": 0, "seed": 1}
        whole = ChatCompletion.model_validate(await post_json(client, "/v1/chat/completions", body))
        (choice,) = whole.choices
        assert whole.object == "chat.completion" and choice.message.role == "assistant"
        assert choice.finish_reason in ("stop", "length", "tool_calls")
        assert whole.usage.completion_tokens <= 8
        chunks = await post_stream(client, "/v1/chat/completions", body)
        for c in chunks:
            ChatCompletionChunk.model_validate(c)
        assert len({c["id"] for c in chunks}) == 1
        check_tool_call_deltas(chunks)
        folded = fold_chunks(chunks)
        assert (folded.choices[0].message.content or "") == (choice.message.content or "")
        assert folded.choices[0].finish_reason == choice.finish_reason
        assert bool(folded.choices[0].message.tool_calls) == bool(choice.message.tool_calls)

        # the parser the server uses for these requests, fed the family's output character by character
        syntax = render(st, chat).syntax
        parser = ChatDeltaParser(syntax)
        deltas = []
        for i in range(1, len(output) + 1):
            deltas += parser.feed(output[:i], partial=i < len(output))
        deltas += parser.feed(output, partial=False)
        fake = [{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        fake.append({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        check_tool_call_deltas(fake)
        msg = fold_chunks(fake).choices[0].message
        assert (msg.content or "").strip() == want_content
        assert [(c.function.name, parse_args_json(c)) for c in msg.tool_calls] == want_calls
        assert parser.n_calls == len(want_calls)

        # ... and the same output coming from the engine, through /v1/chat/completions
        scripted_output(st, output)
        body = {**chat, "max_tokens": 100}
        res = await post_json(client, "/v1/chat/completions", body)
        whole = ChatCompletion.model_validate(res)
        (choice,) = whole.choices
        assert choice.finish_reason == "tool_calls"
        assert (choice.message.content or "").strip() == want_content
        if not want_content:
            assert res["choices"][0]["message"]["content"] is None     # as OpenAI: no text, null content
        calls = choice.message.tool_calls
        assert [(c.function.name, parse_args_json(c)) for c in calls] == want_calls
        assert all(c.type == "function" and c.id for c in calls) and len({c.id for c in calls}) == len(calls)
        for c in calls:
            jsonschema.validate(parse_args_json(c), SCHEMAS[c.function.name])
        if model_ids:
            assert [c.id for c in calls] == model_ids      # the model's own ids are kept
        assert whole.usage.completion_tokens == len(token_pieces(st.vocab, output))

        chunks = await post_stream(client, "/v1/chat/completions", body)
        check_tool_call_deltas(chunks)
        assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["tool_calls"]
        n_arg_fragments = sum(1 for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls") or []
                              if "id" not in tc)
        assert n_arg_fragments >= 2 * len(want_calls), "the arguments should stream in several fragments"
        folded = fold_chunks(chunks).choices[0]
        assert folded.finish_reason == "tool_calls"
        assert (folded.message.content or "").strip() == want_content
        assert [(c.function.name, parse_args_json(c)) for c in folded.message.tool_calls] == want_calls
        # ids: a call's id goes out with its first fragment, before a model-given id (which
        # Mistral writes after the arguments) has been parsed, so a stream may carry generated ids
        # where the whole response has the model's (llama-server does the same)
        ids = [c.id for c in folded.message.tool_calls]
        assert all(ids) and len(set(ids)) == len(ids)

        # cut off by max_tokens in the middle of a call: finish_reason stays "length" (as llama-server's),
        # and the stream says what the whole response says (partial arguments included)
        scripted_output(st, output[:len(output) * 2 // 3], finish_reason="length")
        whole = ChatCompletion.model_validate(await post_json(client, "/v1/chat/completions", body)).choices[0]
        chunks = await post_stream(client, "/v1/chat/completions", body)
        check_tool_call_deltas(chunks)
        folded = fold_chunks(chunks).choices[0]
        assert whole.finish_reason == folded.finish_reason == "length"
        assert (whole.message.content or "") == (folded.message.content or "")
        assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []] == \
            [(c.function.name, c.function.arguments) for c in folded.message.tool_calls or []]

        # plain text with tools offered: content, no tool_calls, finish_reason "stop"
        scripted_output(st, "No tool needed: it is sunny.")
        res = await post_json(client, "/v1/chat/completions", body)
        msg = res["choices"][0]["message"]
        assert msg["content"] == "No tool needed: it is sunny." and "tool_calls" not in msg
        assert res["choices"][0]["finish_reason"] == "stop"
        chunks = await post_stream(client, "/v1/chat/completions", body)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == msg["content"]
        assert not any(c["choices"][0]["delta"].get("tool_calls") for c in chunks)
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

        # tool_choice "required": an eager grammar naming the tools, which still lets free text
        # come before the call (so a random model need not call); "none": no grammar at all
        req = render(st, {**chat, "tool_choice": "required"})
        assert req.grammar and req.grammar_lazy is False
        assert "get_weather" in req.grammar and "get_time" in req.grammar
        assert re.search(r"\buntil-\d+\??\s.*tool-calls?$", grammar_root(req.grammar)), grammar_root(req.grammar)
        assert not render(st, {**chat, "tool_choice": "none"}).grammar

    inproc(argv_for(template_model(vocab, template)), scenario)


# ---------------------------------------------------------------- 4: tool_choice grammars

def test_tool_choice_grammars(inproc, chat_model_path):
    """Qwen 2.5: "auto" is a lazy grammar triggered by "<tool_call>\\n"; "required" is eager and starts
    with the generation prompt, but then allows free text up to the first "<tool_call>" (the
    ``until-N`` rule): a random model writes text and never opens a call within max_tokens."""
    chat = {"messages": USER, "tools": TOOLS}

    async def scenario(client):
        st = client.server.app[STATE]
        auto = render(st, chat)
        assert auto.grammar_lazy is True and "get_weather" in auto.grammar
        assert [t["value"] for t in auto.grammar_triggers] == ["<tool_call>\n"]
        assert sampling_extras(auto, st.vocab)["grammar_lazy"] is True

        req = render(st, {**chat, "tool_choice": "required"})
        g = req.grammar
        assert req.grammar_lazy is False and req.grammar_prefill is True
        assert "get_weather" in g and "get_time" in g
        root = grammar_root(g)
        m = re.fullmatch(r'root ::= "<\|im_start\|>assistant\\n" space (until-\d+)\? tool-calls', root)
        assert m, root
        until = m.group(1)
        assert f'{until} ::= | [<] {until}-01 | [^<] {until}' in g      # any text without "<tool_call>\n"
        assert 'tool-call ::= "<tool_call>\\n"' in g
        extra = sampling_extras(req, st.vocab)
        assert extra["grammar_lazy"] is False
        assert extra["grammar_prefill"] == tuple(st.vocab.tokenize(req.generation_prompt, add_special=False,
                                                                   parse_special=True))

        named = render(st, {**chat, "tool_choice": {"type": "function", "function": {"name": "get_time"}}})
        assert named.grammar_lazy is False and "get_time" in named.grammar
        assert "get_weather" not in named.grammar

        for none in (render(st, {**chat, "tool_choice": "none"}), render(st, {"messages": USER})):
            assert none.grammar == "" and sampling_extras(none, st.vocab) == {}

        # so a random model under "required" writes free text until max_tokens
        res = await post_json(client, "/v1/chat/completions", {**chat, "tool_choice": "required", "max_tokens": 12,
                                                          "temperature": 0})
        choice = res["choices"][0]
        assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"], choice
        assert isinstance(choice["message"]["content"], str) and "<tool_call>" not in choice["message"]["content"]

    inproc(argv_for(chat_model_path), scenario)


@pytest.fixture(scope="module")
def llama_server(start_server, template_model):
    return start_server(template_model(*LLAMA31), "-np", "2", "-c", "2048")


@pytest.fixture(scope="module")
def llama_client(llama_server):
    with openai.OpenAI(base_url=llama_server.url + "/v1", api_key="x", max_retries=0, timeout=120) as c:
        yield c


def test_forced_tool_call_sdk(llama_server, llama_client):
    """Llama 3.1's "required" grammar is ``<text without "{"> <call>``: with the ``{"`` token biased up a
    random model opens the call at once and the grammar completes it, so a real tool call comes back."""
    toks = llama_server.post("/tokenize", {"content": '{"'}).json()["tokens"]
    assert len(toks) == 1, toks
    bias = {str(toks[0]): 100}

    # the grammar that makes it work (checked on the running server's own rendering)
    r = llama_server.post("/apply-template", {"messages": USER, "tools": TOOLS})
    assert r.status == 200 and '"name": "get_weather"' in r.json()["prompt"]

    # strict tools: the SDK's stream helper only accepts those, and then parses the arguments itself
    strict = [{**t, "function": {**t["function"], "strict": True}} for t in TOOLS]
    kw = dict(model="m", messages=USER, tools=strict, max_tokens=FORCED_MAX_TOKENS, temperature=0, logit_bias=bias,
              extra_body=PIN_DATE)
    for tool_choice, names in (("required", ("get_weather", "get_time")),
                               ({"type": "function", "function": {"name": "get_time"}}, ("get_time",))):
        res = llama_client.chat.completions.create(tool_choice=tool_choice, **kw)
        choice = res.choices[0]
        if choice.finish_reason == "length":
            pytest.fail(f"the forced tool call did not finish within {FORCED_MAX_TOKENS} tokens: {choice.message}")
        assert choice.finish_reason == "tool_calls", choice
        assert res.usage.completion_tokens < FORCED_MAX_TOKENS
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.id and call.function.name in names
        args = parse_args_json(call)
        jsonschema.validate(args, SCHEMAS[call.function.name])

        # streaming, folded by the SDK's own stream helper: the same call
        with llama_client.chat.completions.stream(tool_choice=tool_choice, **kw) as s:
            for _ in s:
                pass
            final = s.get_final_completion()
        sc = final.choices[0]
        assert sc.finish_reason == "tool_calls"
        (scall,) = sc.message.tool_calls
        assert scall.function.name == call.function.name and scall.id
        assert parse_args_json(scall) == args and scall.function.parsed_arguments == args
        assert not sc.message.content

    # a tool result sent back renders and runs
    res = llama_client.chat.completions.create(model="m", tools=TOOLS, max_tokens=4, temperature=0, extra_body=PIN_DATE,
                                               messages=[
        *USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Berlin"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}])
    assert res.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_structured_output_sdk_parse(llama_client):
    """The SDK's ``parse`` with a pydantic model: its strict json_schema response_format is honoured."""
    from typing import Literal

    from pydantic import BaseModel

    class Answer(BaseModel):
        color: Literal["red", "green", "blue"]
        ok: bool

    res = llama_client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Pick a color."}],
                                              response_format=Answer, max_tokens=200, temperature=0,
                                              extra_body=PIN_DATE)
    choice = res.choices[0]
    if choice.finish_reason == "length":
        pytest.fail(f"the schema-constrained answer did not finish within 200 tokens: {choice.message.content!r}")
    assert isinstance(choice.message.parsed, Answer), choice.message


# ---------------------------------------------------------------- 2: structured output

SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
          "required": ["color", "ok"], "additionalProperties": False}
GBNF = 'root ::= "{\\"n\\": " [1-9] [0-9]? ", \\"yes\\": " ("true" | "false") "}"'
GBNF_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 99},
                                                "yes": {"type": "boolean"}},
               "required": ["n", "yes"], "additionalProperties": False}
MAX_TOKENS = 200
JSON_USER = [{"role": "user", "content": "Answer in JSON."}]

# name -> (endpoint, request fields, schema the output must validate against)
STRUCTURED = {
    # (a bare json_object is unbounded: test_bare_json_object below tries several seeds)
    "chat-json_object-schema": ("/v1/chat/completions", {"response_format": {"type": "json_object", "schema": SCHEMA}},
                                SCHEMA),
    "chat-json_schema": ("/v1/chat/completions",
                         {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA,
                                                                                     "strict": True}}}, SCHEMA),
    "chat-native-json_schema": ("/v1/chat/completions", {"json_schema": SCHEMA}, SCHEMA),
    "chat-grammar": ("/v1/chat/completions", {"grammar": GBNF}, GBNF_SCHEMA),
    "completion-json_schema": ("/completion", {"json_schema": SCHEMA}, SCHEMA),
    "completion-grammar": ("/completion", {"grammar": GBNF}, GBNF_SCHEMA),
    "v1-completions-json_schema": ("/v1/completions", {"json_schema": SCHEMA}, SCHEMA),
}


def _text_and_finish(path: str, res: Dict[str, Any]) -> Tuple[str, str]:
    if path == "/completion":
        return res["content"], {"eos": "stop", "word": "stop", "limit": "length"}.get(res["stop_type"], "?")
    choice = res["choices"][0]
    if path == "/v1/completions":
        return choice["text"], choice["finish_reason"]
    assert "tool_calls" not in choice["message"]
    return choice["message"]["content"], choice["finish_reason"]


def _stream_text_and_finish(path: str, events: List[Dict[str, Any]]) -> Tuple[str, str]:
    if path == "/completion":
        assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
        return "".join(e["content"] for e in events), _text_and_finish(path, events[-1])[1]
    if path == "/v1/completions":
        return "".join(e["choices"][0]["text"] for e in events), events[-1]["choices"][0]["finish_reason"]
    return ("".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]),
            [e for e in events if e["choices"]][-1]["choices"][0]["finish_reason"])


def _validated(name: str, text: str, finish: str, schema: Dict[str, Any]) -> Any:
    if finish != "stop":
        pytest.fail(f"{name}: the constrained output did not finish within {MAX_TOKENS} tokens "
                    f"(finish_reason {finish!r}); output so far: {text!r}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        pytest.fail(f"{name}: the constrained output is not JSON ({e}): {text!r}")
    jsonschema.validate(value, schema)
    return value


def test_structured_output(inproc, chat_model_path):
    async def scenario(client):
        for name, (path, fields, schema) in STRUCTURED.items():
            body: Dict[str, Any] = {"temperature": 0, **fields}
            if path == "/v1/chat/completions":
                body.update(messages=JSON_USER, max_tokens=MAX_TOKENS)
            else:
                body.update(prompt="A JSON answer:", max_tokens=MAX_TOKENS, n_predict=MAX_TOKENS)
            text, finish = _text_and_finish(path, await post_json(client, path, body))
            value = _validated(name, text, finish, schema)
            s_text, s_finish = _stream_text_and_finish(path, await post_stream(client, path, body))
            assert _validated(name + " (streamed)", s_text, s_finish, schema) == value
            assert s_text == text, (name, s_text, text)

    inproc(argv_for(chat_model_path), scenario)


def test_bare_json_object(inproc, chat_model_path):
    """{"type": "json_object"} allows any object, so whether a random model closes it within max_tokens
    depends on the CPU's float results: try seeds until one finishes; what finishes must parse, and
    what streams must equal what does not."""
    async def scenario(client):
        path = "/v1/chat/completions"
        finished = 0
        for seed in range(1, 9):
            body = {"messages": JSON_USER, "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": seed,
                    "response_format": {"type": "json_object"}}
            text, finish = _text_and_finish(path, await post_json(client, path, body))
            s_text, s_finish = _stream_text_and_finish(path, await post_stream(client, path, body))
            assert (s_text, s_finish) == (text, finish)
            if finish == "stop":
                assert isinstance(json.loads(text), dict), text
                finished += 1
                if finished == 2:
                    break
            else:
                assert text.lstrip().startswith("{"), text     # cut off, but an object all the same
        assert finished, "no seed in 1..8 finished a JSON object within max_tokens"

    inproc(argv_for(chat_model_path), scenario)


# ---------------------------------------------------------------- 5: reasoning

# family -> (template, a model output, the reasoning and the answer in it, what reasoning_format
#            "none" shows as content)
THINKING = {
    # the model opens <think> itself
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", "<think>\nThe user greets me.\n</think>\n\nHello there!",
              "The user greets me.", "Hello there!",
              "<think>\nThe user greets me.\n</think>\n\nHello there!"),
    # the generation prompt opens <think>: the output starts inside the reasoning; with "none",
    # the content gets the opener back (as llama-server does)
    "deepseek-r1": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "The user greets me.\n</think>\n\nHello there!",
                    "The user greets me.", "Hello there!",
                    "<think>\nThe user greets me.\n</think>\n\nHello there!"),
}


def _parse(st, body: Dict[str, Any], output: str) -> Tuple[str, str]:
    """(content, reasoning_content) of ``output`` streamed through the parser the server uses for ``body``."""
    parser = ChatDeltaParser(render(st, body).syntax)
    content, reasoning = "", ""
    acc = ""
    for _, piece in token_pieces(st.vocab, output):
        acc += piece
        for d in parser.feed(acc, partial=True):
            content += d.get("content", "")
            reasoning += d.get("reasoning_content", "")
    for d in parser.feed(output, partial=False):
        content += d.get("content", "")
        reasoning += d.get("reasoning_content", "")
    return content, reasoning


@pytest.mark.parametrize("family", list(THINKING))
def test_reasoning(inproc, template_model, family):
    template, output, thought, answer, raw_content = THINKING[family]
    hi = [{"role": "user", "content": "Hi!"}]

    async def scenario(client):
        st = client.server.app[STATE]
        # the parser path: "deepseek" (and "auto", the default) split the reasoning out; "none" keeps it in
        for fmt in ("deepseek", "auto", None):
            body = {"messages": hi, **({"reasoning_format": fmt} if fmt else {})}
            content, reasoning = _parse(st, body, output)
            assert (content.strip(), reasoning.strip()) == (answer, thought), (fmt, content, reasoning)
        content, reasoning = _parse(st, {"messages": hi, "reasoning_format": "none"}, output)
        assert (content, reasoning) == (raw_content, "")

        # through /v1/chat/completions, streaming and not
        scripted_output(st, output)
        for fmt, want in (("deepseek", (answer, thought)), ("none", (raw_content, None))):
            body = {"messages": hi, "reasoning_format": fmt, "max_tokens": 50}
            msg = (await post_json(client, "/v1/chat/completions", body))["choices"][0]["message"]
            assert (msg["content"].strip(), (msg.get("reasoning_content") or "").strip() or None) == want, (fmt, msg)
            chunks = await post_stream(client, "/v1/chat/completions", body)
            deltas = [c["choices"][0]["delta"] for c in chunks]
            s_content = "".join(d.get("content") or "" for d in deltas)
            s_reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
            assert s_content == msg["content"] and s_reasoning == msg.get("reasoning_content", "")
            if fmt == "deepseek":       # the reasoning streams before the answer
                first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
                assert all(not d.get("reasoning_content") for d in deltas[first_content:])

        # enable_thinking false: the prompt closes the thinking block itself
        on = (await post_json(client, "/apply-template", {"messages": hi}))["prompt"]
        off = (await post_json(client, "/apply-template", {"messages": hi,
                                                      "chat_template_kwargs": {"enable_thinking": False}}))["prompt"]
        assert off != on and off.startswith(on.rsplit("<think>", 1)[0])
        assert re.search(r"</think>\s*$", off), off[-80:]
        assert not re.search(r"</think>\s*$", on), on[-80:]
        # and the output is then all answer
        content, reasoning = _parse(st, {"messages": hi, "chat_template_kwargs": {"enable_thinking": False}},
                                    "Hello there!")
        assert (content, reasoning) == ("Hello there!", "")

    async def real(client):
        # a real request with thinking disabled renders and runs; no reasoning comes back
        body = {"messages": hi, "chat_template_kwargs": {"enable_thinking": False}, "max_tokens": 8,
                "temperature": 0}
        res = ChatCompletion.model_validate(await post_json(client, "/v1/chat/completions", body))
        assert isinstance(res.choices[0].message.content, str)
        assert not getattr(res.choices[0].message, "reasoning_content", None)
        chunks = await post_stream(client, "/v1/chat/completions", body)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == res.choices[0].message.content
        # the server-wide default from the command line applies when the request has none
        st = client.server.app[STATE]
        assert _parse(st, {"messages": hi}, output) == (raw_content, "")
        assert _parse(st, {"messages": hi, "reasoning_format": "deepseek"}, output)[1].strip() == thought

    path = template_model("qwen2", template)
    inproc(argv_for(path), scenario)
    inproc(argv_for(path, "--reasoning-format", "none"), real)


# ---------------------------------------------------------------- 6: bad input

BAD_TOOL = {"type": "function", "function": {"name": "broken", "parameters": {"type": "nonsense"}}}


def test_bad_structured_and_tool_inputs(inproc, chat_model_path):
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        # (endpoint, body, words the message must contain)
        ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}},
         ["schema", "nonsense"]),
        ("/v1/chat/completions", {"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"$ref": "#/definitions/missing"}}}}, ["schema", "missing"]),
        ("/v1/chat/completions", {"json_schema": {"type": "nonsense"}}, ["schema", "nonsense"]),
        ("/completion", {"json_schema": {"type": "nonsense"}}, ["schema", "nonsense"]),
        ("/v1/chat/completions", {"grammar": "root ::= undefined-rule"}, ["grammar"]),
        ("/v1/chat/completions", {"grammar": 'root ::= "unterminated'}, ["grammar"]),
        ("/completion", {"grammar": "root ::= undefined-rule"}, ["grammar"]),
        ("/v1/completions", {"grammar": "root ::= ["}, ["grammar"]),
        ("/v1/chat/completions", {"tools": [BAD_TOOL]}, ["nonsense"]),
        ("/apply-template", {"tools": [BAD_TOOL]}, ["nonsense"]),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "x", "parameters": "str"}}]},
         ["schema"]),
        ("/v1/chat/completions", {"tools": [{"type": "function"}]}, ["tool"]),
        ("/v1/chat/completions", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         ["nope"]),
        ("/apply-template", {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         ["nope"]),
        ("/v1/chat/completions", {"tools": TOOLS, "tool_choice": "sometimes"}, ["tool_choice"]),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, ["response_format", "xml"]),
        ("/v1/chat/completions", {"response_format": "json"}, ["response_format"]),
        ("/v1/chat/completions", {"grammar": "root ::= \"a\"", "json_schema": {"type": "object"}},
         ["grammar", "json_schema"]),
        ("/v1/chat/completions", {"grammar": "root ::= \"a\"", "response_format": {"type": "json_object"}},
         ["grammar", "json_schema"]),
        ("/v1/chat/completions", {"json_schema": {"type": "object"}, "response_format": {"type": "json_object"}},
         ["response_format", "json_schema"]),
        ("/completion", {"grammar": "root ::= \"a\"", "json_schema": {"type": "object"}}, ["grammar", "json_schema"]),
        ("/v1/completions", {"grammar": "root ::= \"a\"", "json_schema": {"type": "object"}},
         ["grammar", "json_schema"]),
        ("/v1/chat/completions", {"tools": TOOLS, "grammar": "root ::= \"a\""}, ["grammar", "tools"]),
        ("/v1/chat/completions", {"reasoning_format": "sometimes"}, ["reasoning format"]),
    ]

    async def scenario(client):
        for path, fields, words in cases:
            body = {**fields, "max_tokens": 4}
            body.update({"messages": msgs} if path in ("/v1/chat/completions", "/apply-template") else {"prompt": "x"})
            for streaming in ((False, True) if path != "/apply-template" else (False,)):
                r = await client.post(path, json={**body, "stream": streaming})
                text = await r.text()
                assert r.status == 400, (path, fields, streaming, r.status, text)
                assert r.headers["Content-Type"].startswith("application/json"), (path, fields, streaming, text)
                err = json.loads(text)["error"]
                assert err["code"] == 400 and err["type"] == "invalid_request_error", err
                for w in words:
                    assert w.lower() in err["message"].lower(), (path, fields, w, err["message"])
        # still serving: a structured request and a tools request work
        res = await post_json(client, "/v1/chat/completions", {"messages": JSON_USER, "json_schema": SCHEMA,
                                                          "max_tokens": MAX_TOKENS, "temperature": 0})
        _validated("after the errors", *_text_and_finish("/v1/chat/completions", res), SCHEMA)
        res = await post_json(client, "/v1/chat/completions", {"messages": USER, "tools": TOOLS, "max_tokens": 4})
        assert res["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        r = await client.get("/slots")
        assert not any(s["is_processing"] for s in await r.json())

    inproc(argv_for(chat_model_path), scenario)
