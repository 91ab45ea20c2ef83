"""Chat plumbing shared by ``Llama`` and the server: template output -> sampling settings, and
model text -> OpenAI message deltas (content, reasoning_content, tool_calls) while streaming.
"""
from __future__ import annotations

import re
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _core
from .errors import ChatTemplateError


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
            raise ValueError("response_format.json_schema.schema is required")
        return schema
    if rtype in (None, "text"):
        return None
    raise ValueError(f"unsupported response_format type {rtype!r}")


def generation_prompt_tokens(vocab: "_core.Vocab", text: str) -> List[int]:
    """Tokens of the template's generation prompt, which a chat grammar starts with."""
    if not text:
        return []
    toks = vocab.tokenize(text, add_special=False, parse_special=True)
    if toks and not text[0].isspace() and vocab.token_to_piece(toks[0], special=True)[:1].isspace():
        toks = toks[1:]
    return toks


def sampling_extras(rendered: Dict[str, Any], vocab: "_core.Vocab") -> Dict[str, Any]:
    """SamplingParams fields for the grammar a rendered chat carries (none when it has no grammar)."""
    g = rendered.get("grammar") or None
    if not g:
        return {}
    lazy = bool(rendered.get("grammar_lazy"))
    pats: List[str] = []
    toks: List[int] = []
    for t in rendered.get("grammar_triggers", []):
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
    extra: Dict[str, Any] = {"grammar": g, "grammar_lazy": lazy, "grammar_trigger_patterns": tuple(pats),
                             "grammar_trigger_tokens": tuple(toks)}
    if rendered.get("grammar_prefill") and not lazy:
        extra["grammar_prefill"] = tuple(generation_prompt_tokens(vocab, rendered.get("generation_prompt", "")))
    return extra


def reasoning_budget_extras(vocab: "_core.Vocab", *, budget: int = -1, message: str = "", start_tag: str = "",
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


def chat_reasoning_extras(rendered: Dict[str, Any], vocab: "_core.Vocab", *, budget: int = -1, message: str = "",
                          control: bool = False) -> Dict[str, Any]:
    """The reasoning budget of a rendered chat: the template's thinking tags (llama-server's
    oaicompat_chat_params_parse); none when the template has no end-of-thinking tag."""
    if not rendered.get("thinking_end_tags"):
        return {}
    return reasoning_budget_extras(vocab, budget=budget, message=message,
                                   start_tag=rendered.get("thinking_start_tag", ""),
                                   end_tags=rendered["thinking_end_tags"],
                                   generation_prompt=rendered.get("generation_prompt", ""), control=control)


def chat_stops(stop: Any, rendered: Dict[str, Any]) -> List[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return stops + [s for s in rendered.get("additional_stops", []) if s not in stops]


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


def token_logprob_entry(vocab: "_core.Vocab", token: int, logprob: float,
                        top: Sequence[Any] = (), post_sampling: bool = False) -> Dict[str, Any]:
    """One OpenAI chat ``logprobs.content`` entry. With ``post_sampling`` (llama-server's
    ``post_sampling_probs``) ``logprob`` and ``top`` are probabilities, under ``prob``/``top_probs``."""
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    piece = vocab.token_to_piece(token, special=False)
    entry: Dict[str, Any] = {"token": piece.decode("utf-8", "replace"), key: logprob, "bytes": list(piece),
                             top_key: []}
    for t, lp in top:
        p = vocab.token_to_piece(t, special=False)
        entry[top_key].append({"token": p.decode("utf-8", "replace"), key: lp, "bytes": list(p)})
    return entry


def collect_chat(chunks: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Fold chat.completion.chunk dicts into one chat.completion."""
    content: List[str] = []
    reasoning: List[str] = []
    calls: List[Dict[str, Any]] = []
    lp_content: List[Any] = []
    last: Dict[str, Any] = {}
    for c in chunks:
        last = c
        ch = c["choices"][0] if c.get("choices") else {"delta": {}}
        d = ch.get("delta") or {}
        if d.get("content"):
            content.append(d["content"])
        if d.get("reasoning_content"):
            reasoning.append(d["reasoning_content"])
        for tc in d.get("tool_calls") or []:
            i = tc["index"]
            if i >= len(calls):
                calls.append({"id": tc["id"], "type": "function",
                              "function": {"name": tc["function"]["name"], "arguments": ""}})
            calls[i]["function"]["arguments"] += tc["function"].get("arguments", "")
        if ch.get("logprobs"):
            lp_content.extend(ch["logprobs"]["content"])
    message: Dict[str, Any] = {"role": "assistant", "content": "".join(content) if (content or not calls) else None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    out = {"id": last["id"], "object": "chat.completion", "created": last["created"], "model": last["model"],
           "choices": [{"index": 0, "message": message,
                        "logprobs": {"content": lp_content} if lp_content else None,
                        "finish_reason": last["choices"][0]["finish_reason"]}],
           "usage": last.get("usage")}
    if "timings" in last:
        out["timings"] = last["timings"]
    return out
