"""OpenAI-shaped objects, written once for ``Llama`` and the server: completion and chat
responses and chunks, their logprobs, usage, and folding a chat stream into one response."""
from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .. import _core
from ..engine import RequestOutput, TokenLogprob

FINGERPRINT = "pyllama"


def now() -> int:
    return int(time.time())


def _piece(vocab: "_core.Vocab", token: int) -> bytes:
    return vocab.token_to_piece(token, special=False)


def completion_logprobs(vocab: "_core.Vocab", logprobs: Sequence[TokenLogprob], offset: int,
                        with_top: bool = True) -> Tuple[Optional[Dict[str, Any]], int]:
    """``choices[].logprobs`` of /v1/completions for these tokens, their text starting at
    ``offset``; returns it (None without tokens) and the offset after them. ``with_top`` False:
    ``top_logprobs`` entries are null (llama-cpp-python's ``logprobs=0``)."""
    if not logprobs:
        return None, offset
    pieces = [_piece(vocab, t.token).decode("utf-8", "replace") for t in logprobs]
    offs = []
    for p in pieces:
        offs.append(offset)
        offset += len(p)
    top = [{_piece(vocab, k).decode("utf-8", "replace"): v for k, v in t.top} if with_top else None
           for t in logprobs]
    return {"tokens": pieces, "text_offset": offs, "token_logprobs": [t.logprob for t in logprobs],
            "top_logprobs": top}, offset


def token_logprob_entry(vocab: "_core.Vocab", token: int, logprob: float,
                        top: Sequence[Any] = (), post_sampling: bool = False) -> Dict[str, Any]:
    """One chat ``logprobs.content`` entry. With ``post_sampling`` (llama-server's
    ``post_sampling_probs``) ``logprob`` and ``top`` are probabilities, under ``prob``/``top_probs``."""
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    piece = _piece(vocab, token)
    entry: Dict[str, Any] = {"token": piece.decode("utf-8", "replace"), key: logprob, "bytes": list(piece),
                             top_key: []}
    for t, lp in top:
        p = _piece(vocab, t)
        entry[top_key].append({"token": p.decode("utf-8", "replace"), key: lp, "bytes": list(p)})
    return entry


def chat_logprobs(vocab: "_core.Vocab", logprobs: Sequence[TokenLogprob]) -> Optional[Dict[str, Any]]:
    """``choices[].logprobs`` of a chat completion (None without tokens)."""
    if not logprobs:
        return None
    return {"content": [token_logprob_entry(vocab, t.token, t.prob, t.top_probs, post_sampling=True)
                        if t.post_sampling else token_logprob_entry(vocab, t.token, t.logprob, t.top)
                        for t in logprobs]}


def usage(outs: Sequence[RequestOutput], n: int = 1) -> Dict[str, Any]:
    """OpenAI usage of final outputs made ``n`` per prompt (in order): each prompt counts once."""
    firsts = [o.usage for o in outs[::max(1, n)] if o.usage]
    prompt = sum(u["prompt_tokens"] for u in firsts)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in firsts)
    completion = sum(o.usage["completion_tokens"] for o in outs if o.usage)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def completion_object(cid: str, created: int, model: str, choices: List[Dict[str, Any]],
                      **extra: Any) -> Dict[str, Any]:
    """A ``text_completion`` (whole or chunk: OpenAI uses one object name for both)."""
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT, "choices": choices, **extra}


def completion_choice(index: int, text: str, finish: Optional[str], logprobs: Any = None) -> Dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


def chat_chunk(cid: str, created: int, model: str, index: int, delta: Dict[str, Any],
               finish: Optional[str] = None, logprobs: Any = None) -> Dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}


def usage_chunk(cid: str, created: int, model: str, u: Dict[str, Any]) -> Dict[str, Any]:
    """The last chunk of a chat stream with ``stream_options.include_usage``."""
    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": u}


def chat_completion(cid: str, created: int, model: str, choices: List[Dict[str, Any]],
                    **extra: Any) -> Dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": FINGERPRINT, "choices": choices, **extra}


def chat_finish_reason(finish: Optional[str], n_calls: int) -> Optional[str]:
    """A generation that stopped after making tool calls finishes with "tool_calls"."""
    return "tool_calls" if finish == "stop" and n_calls else finish


class MessageBuilder:
    """Folds chat deltas (content, reasoning_content, tool_calls pieces) into one assistant message."""

    def __init__(self) -> None:
        self.content: List[str] = []
        self.reasoning: List[str] = []
        self.calls: List[Dict[str, Any]] = []

    def add(self, d: Dict[str, Any]) -> None:
        if d.get("content"):
            self.content.append(d["content"])
        if d.get("reasoning_content"):
            self.reasoning.append(d["reasoning_content"])
        for tc in d.get("tool_calls") or []:
            if tc["index"] >= len(self.calls):
                self.calls.append({"id": tc["id"], "type": "function",
                                   "function": {"name": tc["function"]["name"], "arguments": ""}})
            self.calls[tc["index"]]["function"]["arguments"] += tc["function"].get("arguments", "")

    def message(self) -> Dict[str, Any]:
        msg: Dict[str, Any] = {"role": "assistant",
                               "content": "".join(self.content) if (self.content or not self.calls) else None}
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = self.calls
        return msg


def assemble_message(parser: Any, text: str) -> Dict[str, Any]:
    """The whole assistant message of a finished generation (``parser``: a ChatDeltaParser)."""
    b = MessageBuilder()
    for d in parser.feed(text, partial=False):
        b.add(d)
    return b.message()


def collect_chat(chunks: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Fold one choice's chat.completion.chunk dicts into one chat.completion."""
    b = MessageBuilder()
    lp_content: List[Any] = []
    last: Dict[str, Any] = {}
    for c in chunks:
        last = c
        ch = c["choices"][0] if c.get("choices") else {"delta": {}}
        b.add(ch.get("delta") or {})
        if ch.get("logprobs"):
            lp_content.extend(ch["logprobs"]["content"])
    extra = {"usage": last.get("usage")}
    if "timings" in last:
        extra["timings"] = last["timings"]
    return chat_completion(last["id"], last["created"], last["model"],
                           [{"index": 0, "message": b.message(),
                             "logprobs": {"content": lp_content} if lp_content else None,
                             "finish_reason": last["choices"][0]["finish_reason"]}], **extra)


def collect_completion(chunks: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Fold one choice's text_completion chunks into one text_completion."""
    text: List[str] = []
    lps: Optional[Dict[str, List[Any]]] = None
    last: Dict[str, Any] = {}
    for c in chunks:
        last = c
        ch = c["choices"][0]
        text.append(ch["text"])
        if ch["logprobs"]:
            if lps is None:
                lps = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
            for k in lps:
                lps[k].extend(ch["logprobs"][k])
    out = dict(last)
    out["choices"] = [completion_choice(0, "".join(text), last["choices"][0]["finish_reason"], lps)]
    return out
