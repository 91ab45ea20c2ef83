"""Prompts to tokens: llama-server's prompt shapes, embedding inputs, rerank pairs, FIM, logit bias.

Pure functions of a ``Vocab``; they raise InvalidRequestError for what a caller got wrong,
NotSupportedError for what the model cannot do.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

from .. import _core
from ..errors import InvalidRequestError, NotSupportedError
from ..params import FLT_MAX


def check_token(vocab: "_core.Vocab", t: Any, what: str = "token id") -> int:
    if isinstance(t, bool) or not isinstance(t, int):
        raise InvalidRequestError(f"invalid {what} {t!r}: expected an integer")
    if not 0 <= t < vocab.n_vocab:
        raise InvalidRequestError(f"{what} {t} out of range [0, {vocab.n_vocab})")
    return t


def _piece_tokens(vocab: "_core.Vocab", item: Any, first: bool) -> List[int]:
    if isinstance(item, str):
        return vocab.tokenize(item, add_special=first, parse_special=True)
    if isinstance(item, bool) or not isinstance(item, int):
        raise InvalidRequestError(f"invalid prompt element {item!r}: expected a string or a token id")
    return [check_token(vocab, item)]


def prompt_tokens(vocab: "_core.Vocab", prompt: Any) -> List[List[int]]:
    """llama-server's prompt shapes: a string, tokens, mixed tokens and strings, or a list of those."""
    def one(p: Any) -> List[int]:
        if isinstance(p, str):
            return vocab.tokenize(p, add_special=True, parse_special=True)
        if isinstance(p, list):
            toks: List[int] = []
            for i, item in enumerate(p):
                toks += _piece_tokens(vocab, item, first=(i == 0))
            return toks
        raise InvalidRequestError("prompt must be a string, a list of tokens, or a list of prompts")

    if isinstance(prompt, str):
        out = [one(prompt)]
    elif isinstance(prompt, list) and prompt:
        if any(isinstance(x, list) for x in prompt) or all(isinstance(x, str) for x in prompt):
            out = [one(x) for x in prompt]          # several prompts
        else:
            out = [one(prompt)]                     # one prompt of tokens, maybe mixed with text
    else:
        raise InvalidRequestError("prompt must be a non-empty string or list")
    for toks in out:
        if not toks:
            raise InvalidRequestError("the prompt is empty")
    return out


def embedding_inputs(vocab: "_core.Vocab", value: Any) -> List[List[int]]:
    """/v1/embeddings' ``input``: a string, strings, tokens, or token lists."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequestError("input must be a string, a list of strings, tokens or a list of token lists")
    out = []
    for item in value:
        if isinstance(item, str):
            toks = vocab.tokenize(item, add_special=True, parse_special=True)
        elif isinstance(item, list):
            toks = [int(t) for t in item]
            if any(t < 0 or t >= vocab.n_vocab for t in toks):
                raise InvalidRequestError(f"token id out of range [0, {vocab.n_vocab})")
        else:
            raise InvalidRequestError(f"invalid input element {item!r}")
        if not toks:
            raise InvalidRequestError("an input is empty")
        out.append(toks)
    return out


def rerank_prompts(vocab: "_core.Vocab", query: str, documents: Sequence[str]) -> List[List[int]]:
    """One prompt per document, as llama-server's format_prompt_rerank without a template:
    [BOS] query [EOS] [SEP] document [EOS]."""
    q = vocab.tokenize(query, add_special=False, parse_special=False)
    prompts = []
    for doc in documents:
        toks: List[int] = []
        if vocab.bos is not None:
            toks.append(vocab.bos)
        toks += q
        if vocab.eos is not None:
            toks.append(vocab.eos)
        if vocab.sep is not None:
            toks.append(vocab.sep)
        toks += vocab.tokenize(doc, add_special=False, parse_special=False)
        if vocab.eos is not None:
            toks.append(vocab.eos)
        prompts.append(toks)
    return prompts


def infill_prompt(vocab: "_core.Vocab", prefix: str, suffix: str, prompt: str,
                  extra: Sequence[Dict[str, Any]] = ()) -> List[int]:
    """Fill-in-the-middle: [BOS] extra [FIM_PRE] prefix [FIM_SUF] suffix [FIM_MID] prompt; each
    extra chunk ({"text", "filename"?}) after [FIM_SEP] filename when the model has that token."""
    pre, suf, mid = vocab.fim_pre, vocab.fim_suf, vocab.fim_mid
    if pre is None or suf is None or mid is None:
        raise NotSupportedError("the model has no fill-in-the-middle tokens (FIM_PRE/FIM_SUF/FIM_MID)")

    def text(s: str) -> List[int]:
        return vocab.tokenize(s, add_special=False, parse_special=False)

    toks: List[int] = [vocab.bos] if vocab.add_bos and vocab.bos is not None else []
    sep = vocab.fim_sep
    for chunk in extra:
        if not isinstance(chunk, dict) or "text" not in chunk:
            raise InvalidRequestError("input_extra items must be objects with a \"text\" field")
        if sep is not None and chunk.get("filename"):
            toks += [sep] + text(chunk["filename"] + "\n")
        toks += text(chunk["text"])
    return toks + [pre] + text(prefix) + [suf] + text(suffix) + [mid] + text(prompt)


def logit_bias_pairs(vocab: "_core.Vocab", bias: Any) -> List[Tuple[int, float]]:
    """OpenAI's {"id": bias} or llama-server's [[id|text, bias|false], ...] to (token, bias) pairs."""
    if not bias:
        return []
    items = list(bias.items()) if isinstance(bias, dict) else bias
    pairs: List[Tuple[int, float]] = []
    for item in items:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            key, val = item
        else:
            raise InvalidRequestError("logit_bias entries must be [token or text, bias]")
        if val is False:
            b = float("-inf")       # llama-server's "never this token"
        elif isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val) \
                and abs(val) <= FLT_MAX:
            b = float(val)
        else:
            raise InvalidRequestError(f"invalid logit_bias value {val!r}: expected a finite number or false")
        if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(bias, dict):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            pairs.append((check_token(vocab, key, "logit_bias token"), b))
        elif isinstance(key, str):
            pairs += [(t, b) for t in vocab.tokenize(key, add_special=False, parse_special=False)]
        else:
            raise InvalidRequestError(f"invalid logit_bias key {key!r}")
    return pairs


def token_pieces(vocab: "_core.Vocab", tokens: Sequence[int]) -> List[Dict[str, Any]]:
    """/tokenize's ``with_pieces``: each token with its text (or its bytes when not UTF-8)."""
    out = []
    for t in tokens:
        piece = vocab.token_to_piece(t, special=True)
        try:
            p: Any = piece.decode("utf-8")
        except UnicodeDecodeError:
            p = list(piece)
        out.append({"id": t, "piece": p})
    return out
