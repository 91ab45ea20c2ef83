"""The host-RAM prompt cache (llama-server's ``--cache-ram``): pure data, no llama calls.

Entries are (tokens, sequence state bytes), oldest first. The scheduler decides with tokens only:
``alloc`` reserves an entry for a slot's tokens (the core then stores the state the runner
saved in ``data``), ``find`` picks the entry to load for a new prompt, ``take`` removes it (a
loaded entry leaves the cache, as llama-server's). Sizes are known once the state is saved:
``commit`` (called by the core after applying the step's memory ops) drops what did
not get data, skips an entry over the size limit, removes entries the new ones contain, and
enforces the limits (``update``), evicting the oldest first. Mirrors server_prompt_cache in
llama.cpp's tools/server/server-task.cpp.

One difference in order: llama-server makes room for a new entry (evicting the oldest) before it
picks the entry to load, because it knows the new entry's size then; here the size is known only
after the save, so the load is picked first and room is made at ``commit``. At the size
limit, an old entry llama-server would just have evicted can still be loaded here.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from .slot import common_prefix

MIB = 1024 * 1024


class CacheEntry:
    __slots__ = ("tokens", "data", "size", "lora")

    def __init__(self, tokens: Sequence[int], lora: Any = None):
        self.tokens = tuple(tokens)
        self.lora = lora                     # the LoRA scales the state was computed with
        self.data: Optional[bytes] = None    # the sequence state; None until saved
        self.size = 0

    def __repr__(self) -> str:
        return f"CacheEntry({len(self.tokens)} tokens, {self.size} bytes)"


class PromptCache:
    def __init__(self, limit_mib: int, limit_tokens: int):
        self.limit_size = MIB * (limit_mib if limit_mib > 0 else 0)    # bytes, 0 = no limit (-1)
        self.limit_tokens = limit_tokens                                # 0 = no limit
        self.entries: List[CacheEntry] = []                             # oldest first
        self._new: List[CacheEntry] = []                                # allocated this step
        self.n_saved = 0
        self.n_loaded = 0

    def __len__(self) -> int:
        return len(self.entries)

    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def n_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries)

    # ---- decisions (tokens only) ----
    def alloc(self, tokens: Sequence[int], lora: Any = None) -> Optional[CacheEntry]:
        """A new entry for ``tokens`` computed under LoRA scales ``lora`` (data to be stored by the
        core), or None when an entry already holds them all."""
        if not tokens:
            return None
        n = len(tokens)
        for e in self.entries:
            if e.lora == lora and common_prefix(e.tokens, tokens) == n:
                return None     # already in the cache
        e = CacheEntry(tokens, lora)
        self.entries.append(e)
        self._new.append(e)
        return e

    def find(self, slot_tokens: Sequence[int], prompt: Sequence[int], lora: Any = None,
             slot_lora: Any = None) -> Optional[CacheEntry]:
        """The entry to load for ``prompt`` into a slot holding ``slot_tokens``: the one keeping the
        most of itself (f_keep, at least 1/4: large prompts are not trashed) that also covers more of
        the prompt (f_sim), both strictly better than what the slot already holds."""
        if not self.entries or not prompt:
            return None
        lcp = common_prefix(slot_tokens, prompt) if slot_lora == lora else 0
        keep_best = lcp / len(slot_tokens) if slot_tokens else -1.0     # an empty slot: any entry wins
        sim_best = lcp / len(prompt)
        best = None
        for e in self.entries:
            if e.lora != lora:
                continue        # computed under other LoRA scales: useless for this prompt
            n = common_prefix(e.tokens, prompt)
            keep, sim = n / len(e.tokens), n / len(prompt)
            if keep < 0.25:
                continue
            if keep_best < keep and sim_best < sim:
                keep_best, sim_best, best = keep, sim, e
        return best

    def take(self, entry: CacheEntry) -> None:
        """Remove an entry that is being loaded into a slot."""
        self.entries.remove(entry)
        try:
            self._new.remove(entry)
        except ValueError:
            pass
        self.n_loaded += 1

    # ---- after the core stored the new entries' states ----
    def commit(self) -> None:
        new, self._new = self._new, []
        for e in new:
            if e not in self.entries:
                continue        # loaded in the same step
            if e.data is None or (self.limit_size and e.size > self.limit_size):
                self.entries.remove(e)      # failed, or over the limit: do not disturb the cache
                continue
            n = len(e.tokens)
            # drop older entries the new one contains
            self.entries = [o for o in self.entries
                            if o is e or o.lora != e.lora or not (len(o.tokens) <= n and common_prefix(o.tokens, e.tokens) == len(o.tokens))]
            self.n_saved += 1
        self.update()

    def update(self) -> None:
        """Enforce the size limit, then the token limit (raised to what the size limit can hold at
        the current bytes per token), evicting the oldest entries."""
        if self.limit_size:
            while self.entries and self.size() > self.limit_size:
                self.entries.pop(0)
        if self.limit_tokens > 0:
            per_token = max(1.0, self.size() / max(1, self.n_tokens()))
            limit = max(self.limit_tokens, int(self.limit_size / per_token)) if self.limit_size else self.limit_tokens
            while self.entries and self.n_tokens() > limit:
                self.entries.pop(0)

    def clear(self) -> None:
        self.entries.clear()
        self._new.clear()

    def info(self) -> dict:
        return {"n_entries": len(self.entries), "n_tokens": self.n_tokens(), "size": self.size(),
                "limit_size": self.limit_size, "limit_tokens": self.limit_tokens,
                "n_saved": self.n_saved, "n_loaded": self.n_loaded}
