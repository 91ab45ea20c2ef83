"""Size limits that bound what one request can make the server do.

Two kinds. ``FIELD_LIMITS`` are fixed sizes of request fields (list lengths, string lengths); the
server's request models enforce them, so a request past one is refused before it is even
converted. ``Limits`` caps steps whose cost or whose stack grows faster than the body that asks
for them (llama.cpp's JSON schema converter is quadratic in the schema and recursive in its
depth, its grammar parser is recursive in a grammar's nesting and its rule chains, the DRY sampler
tokenizes every sequence breaker against the whole vocabulary, a template renders every message);
the request body's own size (the server's ``max_body_bytes``) bounds the rest. Past a limit the
request is refused with an InvalidRequestError naming it, before any of the work is done.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

import numpy as np

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class FieldLimits:
    """Fixed sizes of request fields (OpenAI's where it has one, else what no real request needs)."""

    max_prompts: int = 2048             # prompts in one list, embedding inputs, rerank documents (OpenAI's)
    max_prompt_tokens: int = 1 << 22    # token ids in one prompt, /detokenize
    max_stops: int = 64                 # stop strings (OpenAI: 4)
    max_stop_chars: int = 8192          # one stop string, one DRY sequence breaker
    max_dry_sequence_breakers: int = 128    # each costs a pass over the vocabulary
    max_samplers: int = 32              # entries of "samplers"
    max_lora_entries: int = 1024
    max_embd_normalize: int = 64        # -1 none, 0 max-abs, 1 taxicab, 2 euclidean, > 2 a p-norm


FIELD_LIMITS = FieldLimits()

# GBNF lexemes that may hold any character: string literals, character classes, comments
_GBNF_OPAQUE = re.compile(rb'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|#[^\n]*', re.S)


def grammar_shape(grammar: str) -> Tuple[int, int]:
    """(rules, deepest nesting of parentheses) of a GBNF grammar, in linear time: what llama.cpp's
    recursive parser and its stack advance recurse over."""
    text = _GBNF_OPAQUE.sub(b"", grammar.encode("utf-8", "surrogatepass"))
    rules = text.count(b"::=")
    a = np.frombuffer(text, dtype=np.uint8)
    steps = (a == ord("(")).astype(np.int32) - (a == ord(")")).astype(np.int32)
    depth = int(np.cumsum(steps).max(initial=0)) if steps.size else 0
    return rules, depth


def _walk(obj: Any) -> Iterator[Tuple[int, Any]]:
    """(depth, value) of every value of a JSON document, keys included, without recursion."""
    stack: List[Tuple[int, Any]] = [(1, obj)]
    while stack:
        depth, v = stack.pop()
        yield depth, v
        if isinstance(v, dict):
            for k, x in v.items():
                yield depth + 1, k
                stack.append((depth + 1, x))
        elif isinstance(v, list):
            stack.extend((depth + 1, x) for x in v)


@dataclass(frozen=True)
class Limits:
    max_chat_messages: int = 100_000            # rendering 50,000 takes ~7 s on one core
    max_json_schema_bytes: int = 256 * 1024     # response_format / json_schema / tools, as JSON text
    max_json_schema_depth: int = 128            # nesting of a schema, keys counted (the converter recurses)
    max_json_schema_string: int = 4096          # any name or string in a schema (the converter runs
                                                # a recursive std::regex over them: 200,000 chars crash it)
    max_grammar_bytes: int = 4 * 1024 * 1024    # a GBNF grammar
    max_grammar_rules: int = 30_000             # rule definitions (a chain of them is a recursion; a
                                                # 256 KiB JSON schema makes ~14,000)
    max_grammar_depth: int = 1000               # nested parentheses
    max_dry_sequence_breakers: int = FIELD_LIMITS.max_dry_sequence_breakers
    max_choices: int = 16                       # n / n_cmpl (the server: its slot count, as llama-server)
    max_prompts: int = FIELD_LIMITS.max_prompts

    def check_count(self, what: str, n: int, limit: int) -> None:
        if n > limit:
            raise InvalidRequestError(f"{what}: {n} is more than this server accepts ({limit})")

    def check_schema(self, what: str, schema: Optional[Any]) -> None:
        """Depth and string lengths first (walked without recursion), then the size as JSON text."""
        if schema is None:
            return
        text = schema if isinstance(schema, str) else None
        if text is not None:
            self.check_count(f"{what} (bytes of JSON)", len(text), self.max_json_schema_bytes)
            try:
                schema = json.loads(text)
            except (ValueError, RecursionError):
                return      # not JSON: the converter says so
        deepest = longest = 0
        for depth, v in _walk(schema):
            deepest = max(deepest, depth)
            if isinstance(v, str):
                longest = max(longest, len(v))
            if deepest > self.max_json_schema_depth:
                break
        self.check_count(f"{what} (nesting depth)", deepest, self.max_json_schema_depth)
        self.check_count(f"{what} (characters in one name or string)", longest, self.max_json_schema_string)
        if text is None:
            self.check_count(f"{what} (bytes of JSON)", len(json.dumps(schema)), self.max_json_schema_bytes)

    def check_grammar(self, grammar: Optional[str]) -> None:
        if not grammar:
            return
        self.check_count("grammar (bytes)", len(grammar), self.max_grammar_bytes)
        rules, depth = grammar_shape(grammar)
        self.check_count("grammar (rules)", rules, self.max_grammar_rules)
        self.check_count("grammar (nested parentheses)", depth, self.max_grammar_depth)

    def check_choices(self, n: int, n_prompts: int) -> None:
        if n > self.max_choices:
            raise InvalidRequestError(f"n (n_cmpl): {n} is more than the server's {self.max_choices} slots "
                                      f"(llama-server's limit: 1 <= n <= the slot count)")
        self.check_count("prompts", n_prompts, self.max_prompts)
