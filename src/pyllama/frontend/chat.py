"""Chat: a request's messages rendered by the model's template into one typed result
(``RenderedChat``), and the model's growing text parsed back into OpenAI message deltas.

Used by ``Llama`` and every chat-shaped API of the server (chat completions, Responses,
Messages): ``response_format`` / ``json_schema`` / ``grammar`` and the template's defaults are
resolved here once.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import _core
from ..errors import ChatTemplateError, InvalidRequestError
from .limits import Limits


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def json_schema_from_response_format(response_format: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The JSON schema an OpenAI ``response_format`` asks for (None for text)."""
    if not response_format:
        return None
    rtype = response_format.get("type")
    if rtype == "json_object":
        return response_format.get("schema") or {"type": "object"}
    if rtype == "json_schema":
        js = response_format.get("json_schema") or {}
        schema = js.get("schema", js) if isinstance(js, dict) else None
        if schema is None:
            raise InvalidRequestError("response_format.json_schema.schema is required")
        return schema
    if rtype in (None, "text"):
        return None
    raise InvalidRequestError(f"unsupported response_format type {rtype!r}")


@dataclass(frozen=True)
class ChatInput:
    """What a chat request asks of the template (protocol-neutral: the server's APIs and
    ``Llama.create_chat_completion`` fill it). None means "not given"."""

    messages: Sequence[Dict[str, Any]]
    tools: Optional[List[Dict[str, Any]]] = None
    tool_choice: Any = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[Dict[str, Any]] = None
    json_schema: Optional[Dict[str, Any]] = None
    grammar: Optional[str] = None
    reasoning_format: Optional[str] = None
    reasoning_effort: Optional[str] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    add_generation_prompt: bool = True


@dataclass(frozen=True)
class ChatDefaults:
    """The server's (or a Llama's) chat defaults: ``--reasoning-format`` (None: the template
    engine's own) and ``--chat-template-kwargs`` (request keys win)."""

    reasoning_format: Optional[str] = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RenderedChat:
    """A chat rendered by the model's template (llama.cpp's common_chat_templates_apply)."""

    prompt: str
    syntax: Any = None                          # the parser's syntax for chat_parse (None: plain text)
    grammar: str = ""                           # GBNF the output must follow ("" none)
    grammar_lazy: bool = False                  # the grammar applies from a trigger on
    grammar_triggers: Tuple[Dict[str, Any], ...] = ()
    grammar_prefill: bool = False               # the grammar starts at the generation prompt
    generation_prompt: str = ""                 # what the template appended to open the reply
    additional_stops: Tuple[str, ...] = ()
    thinking_start_tag: str = ""
    thinking_end_tags: Tuple[str, ...] = ()
    format_name: str = ""
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)  # the shim's whole answer

    @classmethod
    def from_shim(cls, d: Mapping[str, Any]) -> "RenderedChat":
        """From ``_core.ChatTemplates.render()``'s dict."""
        return cls(prompt=d.get("prompt", ""), syntax=d.get("syntax"), grammar=d.get("grammar") or "",
                   grammar_lazy=bool(d.get("grammar_lazy")), grammar_triggers=tuple(d.get("grammar_triggers") or ()),
                   grammar_prefill=bool(d.get("grammar_prefill")), generation_prompt=d.get("generation_prompt", ""),
                   additional_stops=tuple(d.get("additional_stops") or ()),
                   thinking_start_tag=d.get("thinking_start_tag") or "",
                   thinking_end_tags=tuple(d.get("thinking_end_tags") or ()),
                   format_name=d.get("format_name") or "", raw=dict(d))


def render_chat(templates: "_core.ChatTemplates", chat: ChatInput, defaults: ChatDefaults = ChatDefaults(),
                limits: Limits = Limits()) -> RenderedChat:
    """Render ``chat`` with the templates. A JSON schema comes from ``response_format`` or
    ``json_schema`` (not both), and not together with ``grammar``. Raises InvalidRequestError
    (also past a limit), ChatTemplateError or GrammarError (the template's own complaints)."""
    limits.check_count("messages", len(chat.messages), limits.max_chat_messages)
    limits.check_schema("tools", chat.tools)
    limits.check_grammar(chat.grammar)
    json_schema = json_schema_from_response_format(chat.response_format)
    if json_schema is not None and chat.json_schema is not None:
        raise InvalidRequestError("use either response_format or json_schema, not both")
    if json_schema is None:
        json_schema = chat.json_schema
    limits.check_schema("JSON schema", json_schema)
    if json_schema is not None and chat.grammar:
        raise InvalidRequestError("use either grammar or a JSON schema (response_format, json_schema), not both")
    kwargs = dict(defaults.chat_template_kwargs)
    kwargs.update(chat.chat_template_kwargs or {})
    req: Dict[str, Any] = {"messages": list(chat.messages), "add_generation_prompt": chat.add_generation_prompt}
    if kwargs:
        req["chat_template_kwargs"] = kwargs
    fmt = chat.reasoning_format or defaults.reasoning_format
    if fmt is not None:
        req["reasoning_format"] = "deepseek" if fmt == "auto" else fmt
    for k in ("tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "grammar"):
        v = getattr(chat, k)
        if v is not None:
            req[k] = v
    if json_schema is not None:
        req["json_schema"] = json_schema
    return RenderedChat.from_shim(templates.render(req))


def generation_prompt_tokens(vocab: "_core.Vocab", text: str) -> List[int]:
    """Tokens of the template's generation prompt, which a chat grammar starts with."""
    if not text:
        return []
    toks = vocab.tokenize(text, add_special=False, parse_special=True)
    if toks and not text[0].isspace() and vocab.token_to_piece(toks[0], special=True)[:1].isspace():
        toks = toks[1:]
    return toks


def grammar_sampling(rendered: RenderedChat, vocab: "_core.Vocab") -> Dict[str, Any]:
    """SamplingParams fields for the grammar a rendered chat carries (none when it has no grammar)."""
    if not rendered.grammar:
        return {}
    pats: List[str] = []
    toks: List[int] = []
    for t in rendered.grammar_triggers:
        kind = t.get("type_name") or ""
        if kind == "token":
            toks.append(int(t["token"]))
        elif kind == "word":
            pats.append(re.escape(t["value"]))
        elif kind == "pattern_full":
            v = t["value"]
            pats.append(("" if v.startswith("^") else "^") + v + ("" if v.endswith("$") else "$"))
        else:
            pats.append(t["value"])
    extra: Dict[str, Any] = {"grammar": rendered.grammar, "grammar_lazy": rendered.grammar_lazy,
                             "grammar_trigger_patterns": tuple(pats), "grammar_trigger_tokens": tuple(toks)}
    if rendered.grammar_prefill and not rendered.grammar_lazy:
        extra["grammar_prefill"] = tuple(generation_prompt_tokens(vocab, rendered.generation_prompt))
    return extra


def reasoning_budget_sampling(vocab: "_core.Vocab", *, budget: int = -1, message: str = "", start_tag: str = "",
                              end_tags: Sequence[str] = (), generation_prompt: str = "",
                              control: bool = False) -> Dict[str, Any]:
    """SamplingParams fields for a reasoning budget, as llama-server builds them (server-schema.cpp):
    the tags tokenized with special tokens parsed and no BOS, the first end tag the one forced, and
    the generation prompt's tokens as the prefill that gives the budget sampler its initial state
    (a generation prompt that opens ``<think>`` starts inside the reasoning). Without both tags the
    Sampler adds no budget sampler."""
    def toks(text: str) -> Tuple[int, ...]:
        return tuple(vocab.tokenize(text, add_special=False, parse_special=True)) if text else ()

    ends = tuple(t for t in (toks(e) for e in end_tags) if t)
    return {"reasoning_budget_tokens": budget, "reasoning_budget_start": toks(start_tag),
            "reasoning_budget_end": ends, "reasoning_budget_message": message or "",
            "reasoning_budget_prefill": tuple(generation_prompt_tokens(vocab, generation_prompt)) if ends else (),
            "reasoning_control": bool(control)}


def chat_reasoning_sampling(rendered: RenderedChat, vocab: "_core.Vocab", *, budget: int = -1, message: str = "",
                            control: bool = False) -> Dict[str, Any]:
    """The reasoning budget of a rendered chat: the template's thinking tags (llama-server's
    oaicompat_chat_params_parse); none when the template has no end-of-thinking tag."""
    if not rendered.thinking_end_tags:
        return {}
    return reasoning_budget_sampling(vocab, budget=budget, message=message, start_tag=rendered.thinking_start_tag,
                                     end_tags=rendered.thinking_end_tags,
                                     generation_prompt=rendered.generation_prompt, control=control)


def chat_stops(stop: Any, rendered: RenderedChat) -> List[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return stops + [s for s in rendered.additional_stops if s not in stops]


class ChatDeltaParser:
    """Turns the growing model text into OpenAI chat deltas, using llama.cpp's parser for the format."""

    def __init__(self, syntax: Any):
        self.syntax = syntax
        self.sent = {"content": "", "reasoning_content": ""}
        self.call_ids: List[str] = []
        self.call_args: List[str] = []

    @property
    def n_calls(self) -> int:
        return len(self.call_ids)

    def feed(self, text: str, partial: bool) -> List[Dict[str, Any]]:
        if self.syntax is None:
            msg: Dict[str, Any] = {"content": text, "reasoning_content": "", "tool_calls": []}
        else:
            try:
                msg = _core.chat_parse(text, self.syntax, is_partial=partial)
            except ChatTemplateError:
                if partial:
                    return []
                msg = {"content": text, "reasoning_content": "", "tool_calls": []}
        deltas: List[Dict[str, Any]] = []
        for key in ("reasoning_content", "content"):
            new = msg.get(key) or ""
            old = self.sent[key]
            if len(new) > len(old) and new.startswith(old):
                deltas.append({key: new[len(old):]})
                self.sent[key] = new
        for i, call in enumerate(msg.get("tool_calls") or []):
            args = call.get("arguments") or ""
            if i >= len(self.call_ids):
                if not call.get("name"):
                    break
                self.call_ids.append(call.get("id") or new_id("call"))
                self.call_args.append("")
                deltas.append({"tool_calls": [{"index": i, "id": self.call_ids[i], "type": "function",
                                               "function": {"name": call["name"], "arguments": ""}}]})
            old = self.call_args[i]
            if len(args) > len(old) and args.startswith(old):
                deltas.append({"tool_calls": [{"index": i, "function": {"arguments": args[len(old):]}}]})
                self.call_args[i] = args
        return deltas
