"""Streaming helpers: incremental UTF-8 detokenization and stop-string matching.

Pure Python; no dependency on the compiled extension.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable

__all__ = ["IncrementalDetokenizer", "StopMatcher"]


class IncrementalDetokenizer:
    """Turn a stream of token ids into text without splitting UTF-8 characters.

    ``piece(token_id)`` must return the raw bytes the token renders to.  A
    multi-byte character split across tokens is buffered until complete;
    bytes that can never form valid UTF-8 are emitted as U+FFFD immediately
    (they never block the stream).  Work per :meth:`push` is proportional to
    the new bytes only (at most 3 bytes are ever held back).
    """

    def __init__(self, piece: Callable[[int], bytes]) -> None:
        self._piece = piece
        # The stdlib incremental decoder holds back an incomplete (but so far
        # valid) sequence and replaces invalid bytes/sequences with U+FFFD.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Feed one token; return the text that is now complete."""
        return self._decoder.decode(bytes(self._piece(token_id)))

    def push_bytes(self, data: bytes) -> str:
        """Feed raw bytes directly (same semantics as :meth:`push`)."""
        return self._decoder.decode(bytes(data))

    def flush(self) -> str:
        """Return whatever is buffered (an incomplete tail becomes U+FFFD).

        The detokenizer is reset and can be reused afterwards.
        """
        return self._decoder.decode(b"", final=True)

    def reset(self) -> None:
        """Drop any buffered bytes."""
        self._decoder.reset()


def _failure_table(s: str) -> list[int]:
    """KMP failure function: fail[i] = length of the longest proper prefix of
    s[:i+1] that is also a suffix of it."""
    fail = [0] * len(s)
    k = 0
    for i in range(1, len(s)):
        while k and s[i] != s[k]:
            k = fail[k - 1]
        if s[i] == s[k]:
            k += 1
        fail[i] = k
    return fail


class StopMatcher:
    """Streaming stop-string detection over text arriving in arbitrary chunks.

    :meth:`push` returns ``(safe_text, matched_stop)``.  Text that could be the
    beginning of a stop string is held back; only the longest suffix of the
    pending text that is a prefix of some stop string is held (so at most
    ``max(len(stop)) - 1`` characters).

    Matching semantics: a stop is reported at the first character position at
    which any stop string completes; if several complete at that same
    position, the longest one (i.e. the earliest-starting) wins.  The result is
    therefore independent of how the text is chunked, and equals
    ``text[:min(text.find(s) for s in stops if s in text)]`` unless one stop
    string occurs inside another one other than as its prefix (then the
    inner, earlier-completing stop wins).  On a match, the text before the stop
    is returned and everything from the stop onwards is dropped; the matcher
    then stays finished (further pushes return ``("", None)``).

    Each character is processed with a KMP automaton per stop string, so the
    cost is O(chars * number_of_stops) overall, however small the chunks.
    """

    def __init__(self, stops: Iterable[str] | None = None) -> None:
        uniq: list[str] = []
        for s in stops or ():
            if s and s not in uniq:
                uniq.append(s)
        self.stops: tuple[str, ...] = tuple(uniq)
        self._fail = [_failure_table(s) for s in self.stops]
        self._state = [0] * len(self.stops)
        self._held = ""
        self.matched: str | None = None
        self.max_stop_len = max((len(s) for s in self.stops), default=0)

    @property
    def done(self) -> bool:
        return self.matched is not None

    @property
    def held(self) -> str:
        """Text currently held back as a potential stop prefix."""
        return self._held

    def push(self, text: str) -> tuple[str, str | None]:
        if self.matched is not None:
            return "", None
        if not text:
            return "", None
        if not self.stops:
            return text, None

        stops = self.stops
        fails = self._fail
        state = self._state
        n = len(stops)
        for i, c in enumerate(text):
            best = -1
            for k in range(n):
                s = stops[k]
                j = state[k]
                while j and s[j] != c:
                    j = fails[k][j - 1]
                if s[j] == c:
                    j += 1
                    if j == len(s):
                        if best < 0 or len(s) > len(stops[best]):
                            best = k
                state[k] = j
            if best >= 0:
                stop = stops[best]
                buf = self._held + text[: i + 1]
                out = buf[: len(buf) - len(stop)]
                self._held = ""
                self.matched = stop
                return out, stop

        hold = max(state)
        buf = self._held + text
        cut = len(buf) - hold
        self._held = buf[cut:]
        return buf[:cut], None

    def flush(self) -> str:
        """Release held-back text at the end of generation."""
        out = self._held
        self._held = ""
        self._state = [0] * len(self.stops)
        return out
