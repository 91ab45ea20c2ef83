"""Size limits that bound what one request can make the front end do.

Each limit caps a step whose cost grows faster than the body that asks for it (llama.cpp's JSON
schema converter is quadratic in the schema, the DRY sampler tokenizes every sequence breaker
against the whole vocabulary, a template renders every message); the request body's own size
(the server's ``max_body_bytes``) bounds the rest. Past a limit the request is refused with an
InvalidRequestError naming it, before any of the work is done.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InvalidRequestError


@dataclass(frozen=True)
class Limits:
    max_chat_messages: int = 100_000            # rendering 50,000 takes ~7 s on one core
    max_json_schema_bytes: int = 256 * 1024     # response_format / json_schema / tools, as JSON text
    max_grammar_bytes: int = 4 * 1024 * 1024    # a GBNF grammar
    max_dry_sequence_breakers: int = 128        # each costs a pass over the vocabulary

    def check_count(self, what: str, n: int, limit: int) -> None:
        if n > limit:
            raise InvalidRequestError(f"{what}: {n} is more than this server accepts ({limit})")

    def check_schema(self, what: str, schema: Optional[Any]) -> None:
        if schema is None:
            return
        n = len(schema) if isinstance(schema, str) else len(json.dumps(schema))
        self.check_count(f"{what} (bytes of JSON)", n, self.max_json_schema_bytes)

    def check_grammar(self, grammar: Optional[str]) -> None:
        if grammar:
            self.check_count("grammar (bytes)", len(grammar), self.max_grammar_bytes)

