"""EngineCore + Scheduler against a deterministic fake runner (no llama model: fast).

The fake runner models the KV cache of every sequence (positions and tokens), applies the
engine's memory ops to it (recording each in ``ops``), and checks on every call that every saved
prompt-cache entry holds the state of its tokens and, on every decode, that the engine's view of a
slot (``slot.cache``) matches what the "KV cache" really holds and that positions are contiguous.
Sampling is a pure function of the sequence's KV contents (like a real greedy model), so the
expected tokens of a request can be computed independently of the engine (``reference``).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import dataclasses
import pytest

from pyllama import ContextLimitError, DecodeError, KVCacheFullError, PyllamaError, StateError
from pyllama.engine import (EngineCore, Request, RequestKind, RequestOutput, SeqRm, SeqShift, SlotErased, SlotRestored,
                            SlotSaved, TokenLogprob)

EOG = 2
UTF8_HEAD, UTF8_TAIL = 200, 201       # the two bytes of "é", one per token
EOG_PIECE = b""


def piece(t: int) -> bytes:
    if t == EOG:
        return EOG_PIECE
    if t == UTF8_HEAD:
        return b"\xc3"
    if t == UTF8_TAIL:
        return b"\xa9"
    return f"<{t}>".encode()


def next_token(ctx: Sequence[int], lora: Optional[tuple] = None) -> int:
    """The fake model: the next token is a hash of the whole context (10..49, never EOG), shifted
    by the LoRA scales it was decoded with (none, or all 0: the base model)."""
    h = 7
    for t in ctx:
        h = (h * 31 + t) % 1_000_003
    if lora:
        h += sum(int(x * 7) * (i + 1) for i, x in enumerate(lora))
    return 10 + h % 40


def reference(prompt: Sequence[int], n: int, lora: Optional[tuple] = None) -> List[int]:
    """What a request generates alone, from an empty cache, for n tokens (no shift)."""
    ctx, out = list(prompt), []
    for _ in range(n):
        t = next_token(ctx, lora)
        out.append(t)
        ctx.append(t)
    return out


def detok(tokens: Sequence[int]) -> str:
    return b"".join(piece(t) for t in tokens).decode("utf-8", errors="replace")


class Rec(NamedTuple):
    slot: int
    tokens: tuple
    pos0: int
    logits: bool
    rid: str
    prefill: bool


class CacheOp(NamedTuple):
    """A prompt-cache save or load the fake runner did: the tokens of the sequence's state."""
    op: str             # "save" / "load"
    seq: int
    tokens: tuple


class FakeSampler:
    def __init__(self, request: Request, script: Sequence[int]):
        self.request = request
        self.script = list(script)


class FakeRunner:
    def __init__(self, n_slots: int = 2, n_ctx_slot: int = 64, n_batch: int = 8, n_ubatch: Optional[int] = None,
                 scripts: Optional[Dict[str, Sequence[int]]] = None, kv_full_over: Optional[int] = None,
                 fail_hook: Optional[Callable[[list, int], Optional[BaseException]]] = None,
                 kv_unified: bool = True, n_lora: int = 0, can_shift: bool = True):
        self.n_slots = n_slots
        self.can_shift = can_shift
        self.loras = [f"adapter{i}" for i in range(n_lora)]     # Request.lora: one scale each
        self.lora_default = (0.0,) * n_lora                      # what EngineCore gives lora=None
        self.seq_lora: Dict[int, object] = {}                   # seq -> the LoRA scales of its KV
        self.lora_of_batch: List[object] = []
        self.n_ctx_slot = n_ctx_slot
        self.n_batch = n_batch
        self.n_ubatch = n_ubatch if n_ubatch is not None else n_batch
        self.scripts = dict(scripts or {})
        self.kv_full_over = kv_full_over
        self.fail_hook = fail_hook
        self.kv: Dict[int, List[List[int]]] = {i: [] for i in range(n_slots)}   # seq -> [[pos, tok], ...]
        self.attempts: List[List[Rec]] = []    # every decode call
        self.batches: List[List[Rec]] = []     # the successful ones
        self.ops: List[Union[SeqRm, SeqShift, CacheOp]] = []   # every memory op, in order
        self.rows: List[tuple] = []
        self.live_samplers: set = set()
        self.n_new_sampler = 0
        self.n_free_sampler = 0
        self.logprob_calls: List[tuple] = []
        self.post_probs_calls: List[tuple] = []
        self.embedding_calls: List[tuple] = []
        self.n_saves = 0
        self.n_loads = 0
        self.fail_load = False
        self.fail_save: Optional[BaseException] = None
        self.kv_unified = kv_unified
        self.prompt_cache = None            # the core's (make() sets it): its entries are checked
        self.fail_sample: Dict[str, BaseException] = {}     # request id -> raised by sample()
        self.fail_embedding: Dict[str, BaseException] = {}  # request id -> raised by embedding()

    # -- vocab --
    def piece(self, token: int) -> bytes:
        return piece(token)

    def is_eog(self, token: int) -> bool:
        return token == EOG

    # -- samplers --
    def new_sampler(self, request: Request) -> FakeSampler:
        s = FakeSampler(request, self.scripts.get(request.id, ()))
        self.n_new_sampler += 1
        self.live_samplers.add(id(s))
        return s

    def free_sampler(self, sampler: FakeSampler) -> None:
        assert id(sampler) in self.live_samplers, "sampler freed twice or unknown"
        self.live_samplers.discard(id(sampler))
        self.n_free_sampler += 1

    # -- LoRA --
    def set_loras(self, adapters, default) -> None:
        assert len(adapters) == len(default)
        self.loras, self.lora_default = list(adapters), tuple(default)

    def set_lora_scales(self, scales) -> None:
        assert len(scales) == len(self.loras)
        self.lora_default = tuple(scales)

    # -- memory --
    @staticmethod
    def state(data: bytes):
        """(kv, lora) of a save_seq state."""
        return eval(data.decode())      # noqa: S307 - our own repr

    def check_cache(self) -> None:
        """Every prompt-cache entry with data holds the state of exactly its tokens and LoRA scales."""
        for e in self.prompt_cache.entries if self.prompt_cache is not None else ():
            if e.data is not None:
                kv, lora = self.state(e.data)
                assert [t for _, t in kv] == list(e.tokens), "saved tokens != KV"
                assert lora == e.lora, "saved LoRA scales != the KV's"
                assert e.size == len(e.data)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        self.check_cache()
        self.ops.append(SeqRm(seq, p0, p1))
        lo = 0 if p0 < 0 else p0
        hi = float("inf") if p1 < 0 else p1
        self.kv[seq][:] = [e for e in self.kv[seq] if not (lo <= e[0] < hi)]

    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None:
        self.check_cache()
        self.ops.append(SeqShift(seq, p0, p1, delta))
        assert self.can_shift, "a shift on a memory that cannot shift"
        lo = 0 if p0 < 0 else p0
        hi = float("inf") if p1 < 0 else p1
        kv = self.kv[seq]
        for e in kv:
            if lo <= e[0] < hi:
                e[0] += delta
        kv.sort()

    def save_seq(self, seq: int) -> bytes:
        self.check_cache()
        self.ops.append(CacheOp("save", seq, tuple(self.kv_tokens(seq))))
        assert self.kv[seq], "an empty sequence saved"
        if self.fail_save is not None:
            raise self.fail_save
        self.n_saves += 1
        return repr(([list(e) for e in self.kv[seq]], self.seq_lora.get(seq))).encode()

    def load_seq(self, seq: int, data: bytes) -> None:
        self.check_cache()
        assert isinstance(data, bytes) and data, "load of an entry without data"
        kv = self.kv[seq]
        kv[:] = []
        if self.fail_load:
            self.ops.append(CacheOp("load", seq, ()))
            raise StateError("fake load failure")
        kv[:], self.seq_lora[seq] = self.state(data)
        self.ops.append(CacheOp("load", seq, tuple(self.kv_tokens(seq))))
        self.n_loads += 1

    def save_seq_file(self, seq: int, path: str, tokens) -> int:
        assert list(tokens) == self.kv_tokens(seq), "saved tokens != KV"
        data = repr((list(tokens), [list(e) for e in self.kv[seq]], self.seq_lora.get(seq))).encode()
        with open(path, "wb") as f:
            f.write(data)
        return len(data)

    def load_seq_file(self, seq: int, path: str, n_max: int) -> Tuple[List[int], int]:
        self.kv[seq][:] = [[0, 99]]     # as if half-loaded: the core must clear it on failure
        if not os.path.isfile(path):
            raise StateError(f"no such state file: {path}")
        with open(path, "rb") as f:
            data = f.read()
        tokens, kv, lora = eval(data.decode())      # noqa: S307 - our own repr
        if len(tokens) > n_max:
            raise StateError("too many tokens")
        self.kv[seq][:] = kv
        self.seq_lora[seq] = lora
        return tokens, len(data)

    def kv_tokens(self, seq: int) -> List[int]:
        return [t for _, t in self.kv[seq]]

    # -- compute --
    def decode(self, items) -> List[int]:
        rec = [Rec(it.slot.id, tuple(it.tokens), it.pos0, it.logits, it.state.id, it.prefill) for it in items]
        self.attempts.append(rec)
        self.check_cache()
        # llama.cpp applies LoRA adapters per context: one configuration per decode
        lora = items[0].state.request.lora
        assert all(it.state.request.lora == lora for it in items), "two LoRA configurations in one batch"
        n = sum(len(r.tokens) for r in rec)
        assert 0 < n <= self.n_batch, f"batch of {n} tokens (n_batch {self.n_batch})"
        assert len({r.slot for r in rec}) == len(rec), "a slot appears twice in one batch"
        if self.kv_full_over is not None and n > self.kv_full_over:
            raise KVCacheFullError(f"no KV slot for {n} tokens", 1)
        if self.fail_hook is not None:
            e = self.fail_hook(rec, len(self.attempts) - 1)
            if e is not None:
                raise e
        # the engine's view of each slot must match the KV cache, positions contiguous
        for it in items:
            kv = self.kv[it.slot.id]
            if kv:      # KV computed under other LoRA scales must never be reused
                assert self.seq_lora.get(it.slot.id) == lora, f"seq {it.slot.id}: KV of another LoRA configuration"
            self.seq_lora[it.slot.id] = lora
            assert [p for p, _ in kv] == list(range(len(kv))), f"holes in seq {it.slot.id}: {kv}"
            assert self.kv_tokens(it.slot.id) == list(it.slot.cache), f"slot {it.slot.id} cache != KV"
            assert it.pos0 == len(kv), f"pos0 {it.pos0} but seq {it.slot.id} holds {len(kv)}"
            assert len(kv) + len(it.tokens) <= self.n_ctx_slot, "slot context overflow"
        self.rows = []
        rows = []
        for it in items:
            self.kv[it.slot.id].extend([it.pos0 + i, t] for i, t in enumerate(it.tokens))
            if it.logits:
                rows.append(len(self.rows))
                self.rows.append((it.slot.id, tuple(self.kv_tokens(it.slot.id)), lora))
            else:
                rows.append(-1)
        self.batches.append(rec)
        self.lora_of_batch.append(lora)
        return rows

    def sample(self, sampler: FakeSampler, row: int) -> int:
        assert 0 <= row < len(self.rows), f"no logits at row {row}"
        _, ctx, lora = self.rows[row]
        if sampler.request.id in self.fail_sample:
            raise self.fail_sample[sampler.request.id]
        if sampler.script:
            return sampler.script.pop(0)
        return next_token(ctx, lora)

    def logprob(self, row: int, token: int, n_top: int) -> TokenLogprob:
        self.logprob_calls.append((row, token, n_top))
        top = [(token + i, -0.1 * (i + 1)) for i in range(n_top)]
        return TokenLogprob(token, -token / 100.0, top)

    def post_sampling_probs(self, sampler: FakeSampler, token: int, n_top: int) -> TokenLogprob:
        self.post_probs_calls.append((token, n_top))
        top = [(token, 1.0)][:n_top]
        return TokenLogprob(token, 0.0, [(t, 0.0) for t, _ in top], prob=1.0, top_probs=top)

    def embedding(self, item, row: int, pooled: bool):
        ctx = self.kv_tokens(item.slot.id)
        self.embedding_calls.append((item.state.id, row, pooled, tuple(item.tokens)))
        if item.state.id in self.fail_embedding:
            raise self.fail_embedding[item.state.id]
        if pooled:
            return [float(len(ctx)), float(sum(ctx))]
        return [[float(t)] for t in ctx]


# ---------------------------------------------------------------------------- helpers

def make(**kw):
    core_kw = {k: kw.pop(k) for k in ("context_shift", "n_keep", "cache_ram_mib", "cache_ram_tokens",
                                      "cache_idle_slots", "slot_prompt_similarity") if k in kw}
    r = FakeRunner(**kw)
    core = EngineCore(r, **core_kw)
    r.prompt_cache = core.scheduler.prompt_cache
    return core, r


def gen(prompt, rid, **kw) -> Request:
    kw.setdefault("max_tokens", 4)
    return Request(prompt=tuple(prompt), id=rid, **kw)


class Result:
    def __init__(self, outs: List[RequestOutput]):
        self.outs = outs
        assert sum(o.finished for o in outs) == 1, "exactly one final output"
        assert outs[-1].finished, "the final output is the last one"
        self.final = outs[-1]
        self.text = "".join(o.text for o in outs)
        self.tokens = [t for o in outs for t in o.token_ids]
        self.logprobs = [lp for o in outs for lp in o.logprobs]


def run(core: EngineCore, max_steps: int = 2000, seen: Optional[List[RequestOutput]] = None) -> Dict[str, Result]:
    """Step until idle; ``seen`` are outputs already taken from earlier manual steps."""
    by: Dict[str, List[RequestOutput]] = {}
    for o in seen or ():
        by.setdefault(o.request_id, []).append(o)
    steps = 0
    while core.has_work():
        steps += 1
        assert steps <= max_steps, "the engine does not make progress"
        for o in core.step():
            by.setdefault(o.request_id, []).append(o)
    return {k: Result(v) for k, v in by.items()}


def items_of(batches, rid):
    return [(i, r) for i, b in enumerate(batches) for r in b if r.rid == rid]


def check_no_leaks(core: EngineCore, r: FakeRunner):
    assert not core.has_work()
    assert r.n_new_sampler == r.n_free_sampler and not r.live_samplers
    assert not core._samplers
    r.check_cache()


P1 = (1, 5, 6, 7, 8, 9)
P2 = (3, 11, 12, 13)
P3 = (4, 21, 22, 23, 24)
P4 = (6, 31, 32)


# ---------------------------------------------------------------------------- basics

def test_single_request_matches_reference_and_reports_usage():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=5))
    res = run(core)["a"]
    exp = reference(P1, 5)
    assert res.tokens == exp
    assert res.text == detok(exp)
    f = res.final
    assert f.finish_reason == "length" and f.error is None and f.stop_word is None
    assert f.usage == {"prompt_tokens": 6, "completion_tokens": 5, "total_tokens": 11,
                       "prompt_tokens_details": {"cached_tokens": 0}}
    assert f.timings["prompt_n"] == 6 and f.timings["predicted_n"] == 5 and f.timings["cache_n"] == 0
    assert f.id_slot == 0
    # one prefill batch with logits, then one token per step; the last sampled token is never decoded
    assert r.batches[0] == [Rec(0, P1, 0, True, "a", True)]
    assert [b[0].tokens for b in r.batches[1:]] == [(t,) for t in exp[:-1]]
    assert [b[0].pos0 for b in r.batches[1:]] == [6, 7, 8, 9]
    assert r.ops == [SeqRm(0, 0, -1)]
    check_no_leaks(core, r)


def test_streaming_deltas_text_equals_detokenized_tokens_utf8_split():
    script = [11, UTF8_HEAD, UTF8_TAIL, 12, UTF8_HEAD, UTF8_TAIL]
    core, r = make(n_slots=1, scripts={"a": script})
    core.add(gen(P1, "a", max_tokens=6))
    res = run(core)["a"]
    assert res.tokens == script
    assert res.text == "<11>é<12>é" == detok(script)
    # one delta per step; the lone lead byte produces no text until its continuation arrives
    texts = [o.text for o in res.outs]
    assert texts[:3] == ["<11>", "", "é"]
    assert all(len(o.token_ids) == 1 for o in res.outs)
    assert res.final.usage["completion_tokens"] == 6


# ---------------------------------------------------------------------------- admission

def test_admission_fifo_slot_limit_and_deferred_metric():
    core, r = make(n_slots=2, n_batch=16)
    reqs = [gen(P1, "a", max_tokens=2), gen(P2, "b", max_tokens=6), gen(P3, "c", max_tokens=3),
            gen(P4, "d", max_tokens=3)]
    for q in reqs:
        core.add(q)
    m = core.metrics_dict()
    assert m["requests_deferred"] == 4 and m["requests_processing"] == 0
    seen = core.step()
    m = core.metrics_dict()
    assert m["requests_deferred"] == 2 and m["requests_processing"] == 2
    busy = {s["id_task"] for s in core.slots() if s["is_processing"]}
    assert busy == {"a", "b"}
    outs = core.step()                      # a reaches max_tokens=2 here
    seen += outs
    assert any(o.request_id == "a" and o.finished for o in outs)
    assert core.metrics_dict()["requests_deferred"] == 2
    seen += core.step()                     # c (first in line) takes a's slot, d still waits
    assert core.metrics_dict()["requests_deferred"] == 1
    assert {s["id_task"] for s in core.slots() if s["is_processing"]} == {"b", "c"}
    res = run(core, seen=seen)
    # first decode of each request, in FIFO order
    first = {rid: items_of(r.batches, rid)[0][0] for rid in "abcd"}
    assert first["a"] == first["b"] < first["c"] < first["d"]
    assert max(len(b) for b in r.batches) <= 2
    for q in reqs:
        assert res[q.id].tokens == reference(q.prompt, q.max_tokens)
    assert res["c"].final.id_slot == res["a"].final.id_slot
    assert core.metrics_dict()["requests_deferred"] == 0
    check_no_leaks(core, r)


# ---------------------------------------------------------------------------- prefix reuse

def test_prefix_reuse_goes_to_matching_slot_and_decodes_only_new_part():
    core, r = make(n_slots=2)
    core.add(gen(P1, "a", max_tokens=3))
    ra = run(core)["a"]
    assert ra.final.id_slot == 0
    cache0 = list(P1) + ra.tokens[:2]
    assert core.scheduler.slots[0].cache == cache0
    n_ops = len(r.ops)
    nb = len(r.batches)
    # slot 1 is less recently used, but slot 0 holds a 4-token common prefix
    pb = P1[:4] + (40, 41, 42)
    core.add(gen(pb, "b", max_tokens=3))
    rb = run(core)["b"]
    assert rb.final.id_slot == 0
    assert r.batches[nb] == [Rec(0, (40, 41, 42), 4, True, "b", True)]
    assert r.ops[n_ops:] == [SeqRm(0, 4, -1)]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 4
    assert rb.final.timings["cache_n"] == 4 and rb.final.timings["prompt_n"] == 3
    assert rb.tokens == reference(pb, 3)        # the reused KV gives the same result
    check_no_leaks(core, r)


def test_prefix_reuse_of_whole_cache_needs_no_rm():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=3))
    ra = run(core)["a"]
    cache = list(P1) + ra.tokens[:2]
    pb = tuple(cache) + (44,)
    n_ops, nb = len(r.ops), len(r.batches)
    core.add(gen(pb, "b", max_tokens=2))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == []
    assert r.batches[nb] == [Rec(0, (44,), len(cache), True, "b", True)]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == len(cache)
    assert rb.tokens == reference(pb, 2)


def test_identical_prompt_still_decodes_its_last_token():
    core, r = make(n_slots=2)
    core.add(gen(P1, "a", max_tokens=3))
    ra = run(core)["a"]
    nb = len(r.batches)
    core.add(gen(P1, "b", max_tokens=3))
    rb = run(core)["b"]
    assert rb.final.id_slot == ra.final.id_slot == 0
    assert r.batches[nb] == [Rec(0, (P1[-1],), len(P1) - 1, True, "b", True)]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == len(P1) - 1
    assert rb.final.timings["cache_n"] == len(P1) - 1 and rb.final.timings["prompt_n"] == 1
    assert rb.tokens == ra.tokens


def test_cache_prompt_false_decodes_everything():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=3))
    ra = run(core)["a"]
    n_ops, nb = len(r.ops), len(r.batches)
    core.add(gen(P1, "b", max_tokens=3, cache_prompt=False))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 0, -1)]
    assert r.batches[nb] == [Rec(0, P1, 0, True, "b", True)]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert rb.final.timings["prompt_n"] == len(P1)
    assert rb.tokens == ra.tokens


def test_lru_slot_when_no_prefix_matches():
    core, r = make(n_slots=3)
    for rid, p in (("a", P1), ("b", P2), ("c", P3)):     # one after another: slots 0, 1, 2
        core.add(gen(p, rid, max_tokens=2))
        assert run(core)[rid].final.id_slot == "abc".index(rid)
    core.add(gen(P4, "d", max_tokens=2))                 # no prefix anywhere: slot 0 is the LRU
    assert run(core)["d"].final.id_slot == 0
    core.add(gen((9, 9, 9), "e", max_tokens=2))          # now slot 1 is the LRU
    assert run(core)["e"].final.id_slot == 1
    core.add(gen(P3 + (77,), "f", max_tokens=2))         # prefix of c wins over LRU (slot 2)
    rf = run(core)["f"]
    assert rf.final.id_slot == 2
    assert rf.final.usage["prompt_tokens_details"]["cached_tokens"] == len(P3)
    check_no_leaks(core, r)


def test_lru_counts_from_when_the_slot_was_released():
    core, r = make(n_slots=2, n_batch=16)
    core.add(gen(P1, "a", max_tokens=8))      # slot 0, admitted first, finishes last
    core.add(gen(P2, "b", max_tokens=2))      # slot 1, admitted second, finishes first
    res = run(core)
    assert items_of(r.batches, "b")[-1][0] < items_of(r.batches, "a")[-1][0]
    assert (res["a"].final.id_slot, res["b"].final.id_slot) == (0, 1)
    core.add(gen(P4, "c", max_tokens=1))      # no prefix anywhere: slot 1 has been idle longest
    assert run(core)["c"].final.id_slot == 1


def test_id_slot_pins_the_slot_and_waits_for_it():
    core, r = make(n_slots=3)
    core.add(gen(P1, "a", max_tokens=2))
    run(core)
    # slot 0 holds P1, yet the request pinned to slot 2 goes there and decodes everything
    core.add(gen(P1, "b", max_tokens=6, id_slot=2))
    seen = core.step()
    assert core.slots()[2]["id_task"] == "b"
    # another request pinned to the busy slot 2 waits, an unpinned one behind it is not blocked
    core.add(gen(P2, "c", max_tokens=2, id_slot=2))
    core.add(gen(P3, "d", max_tokens=2))
    seen += core.step()
    assert core.metrics_dict()["requests_deferred"] == 1
    assert core.slots()[2]["id_task"] == "b"
    assert "d" in {s["id_task"] for s in core.slots()}
    res = run(core, seen=seen)
    assert res["b"].final.id_slot == 2 and res["b"].final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert res["c"].final.id_slot == 2
    assert items_of(r.batches, "c")[0][0] > items_of(r.batches, "b")[-1][0]
    for rid, p, n in (("b", P1, 6), ("c", P2, 2), ("d", P3, 2)):
        assert res[rid].tokens == reference(p, n)


# ---------------------------------------------------------------------------- chunked prefill

def test_long_prompt_is_chunked_alone():
    core, r = make(n_slots=1, n_batch=4, n_ctx_slot=32)
    p = tuple(range(50, 60))
    core.add(gen(p, "a", max_tokens=2))
    res = run(core)["a"]
    pre = [rec for b in r.batches for rec in b if rec.prefill]
    assert [rec.tokens for rec in pre] == [p[0:4], p[4:8], p[8:10]]
    assert [rec.pos0 for rec in pre] == [0, 4, 8]
    assert [rec.logits for rec in pre] == [False, False, True]
    assert res.tokens == reference(p, 2)
    assert res.final.timings["prompt_n"] == 10


def test_chunked_prefill_never_stalls_decoding_slots():
    core, r = make(n_slots=3, n_batch=4, n_ctx_slot=64)
    core.add(gen((1, 2), "a", max_tokens=14))
    core.add(gen((3, 4), "b", max_tokens=14))
    seen = core.step() + core.step()            # both prompts in one batch, then a decode step
    long_p = tuple(range(100, 113))              # 13 tokens
    core.add(gen(long_p, "c", max_tokens=3))
    res = run(core, seen=seen)
    c_batches = [b for b in r.batches if any(x.rid == "c" and x.prefill for x in b)]
    # while c's prompt is read, a and b get exactly one token each in every batch, and come first
    for b in c_batches:
        assert sum(len(x.tokens) for x in b) <= 4
        assert [x.rid for x in b] == ["a", "b", "c"]
        assert [len(x.tokens) for x in b[:2]] == [1, 1]
        assert not b[0].prefill and not b[1].prefill and b[2].prefill
    chunks = [x for b in c_batches for x in b if x.rid == "c"]
    assert all(len(x.tokens) <= 2 for x in chunks)
    assert sum((x.tokens for x in chunks), ()) == long_p
    assert [x.logits for x in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) == 7                      # 13 tokens, 2 per step
    # a's decode items are in consecutive batches: never skipped
    ia = [i for i, _ in items_of(r.batches, "a")]
    assert ia == list(range(ia[0], ia[0] + len(ia)))
    for rid, p, n in (("a", (1, 2), 14), ("b", (3, 4), 14), ("c", long_p, 3)):
        assert res[rid].tokens == reference(p, n)


def test_two_prompts_chunked_oldest_admission_first():
    core, r = make(n_slots=2, n_batch=4)
    p1, p2 = tuple(range(60, 66)), tuple(range(70, 75))
    core.add(gen(p1, "a", max_tokens=2))
    core.add(gen(p2, "b", max_tokens=2))
    res = run(core)
    assert r.batches[0] == [Rec(0, p1[:4], 0, False, "a", True)]
    assert r.batches[1] == [Rec(0, p1[4:], 4, True, "a", True), Rec(1, p2[:2], 0, False, "b", True)]
    assert res["a"].tokens == reference(p1, 2) and res["b"].tokens == reference(p2, 2)


# ---------------------------------------------------------------------------- finish reasons

def test_eog_stops_and_is_not_in_the_text():
    core, r = make(n_slots=1, scripts={"a": [11, 12, EOG, 13]})
    core.add(gen(P1, "a", max_tokens=10))
    res = run(core)["a"]
    assert res.final.finish_reason == "stop" and res.final.stop_word is None
    assert res.tokens == [11, 12]
    assert res.text == "<11><12>"
    assert res.final.usage["completion_tokens"] == 3       # the EOG token was generated
    assert len(r.batches) == 3                              # prompt, 11, 12: EOG never decoded


def test_ignore_eos_keeps_going():
    core, r = make(n_slots=1, scripts={"a": [11, 12, EOG, 13]})
    core.add(gen(P1, "a", max_tokens=5, ignore_eos=True))
    res = run(core)["a"]
    assert res.final.finish_reason == "length"
    assert res.tokens[:4] == [11, 12, EOG, 13] and len(res.tokens) == 5
    assert res.text == detok(res.tokens)


def test_stop_string_across_token_boundary():
    core, r = make(n_slots=1, scripts={"a": [11, 12, 13, 14]})
    core.add(gen(P1, "a", max_tokens=10, stop=("><12", "nope")))
    res = run(core)["a"]
    assert res.final.finish_reason == "stop"
    assert res.final.stop_word == "><12"
    assert res.text == "<11"                     # cut before the stop; the held ">" is dropped
    assert res.tokens == [11, 12]
    assert res.outs[0].text == "<11"             # ">" held back as a possible stop prefix
    assert len(r.batches) == 2


def test_held_stop_prefix_is_released_at_length():
    core, r = make(n_slots=1, scripts={"a": [11, 12]})
    core.add(gen(P1, "a", max_tokens=2, stop=("2>!",)))
    res = run(core)["a"]
    assert res.final.finish_reason == "length" and res.final.stop_word is None
    assert res.text == "<11><12>"


def test_context_full_finishes_with_length():
    core, r = make(n_slots=1, n_ctx_slot=8)
    p = (1, 2, 3, 4, 5)
    core.add(gen(p, "a", max_tokens=-1))
    res = run(core)["a"]
    assert res.final.finish_reason == "length"
    assert res.tokens == reference(p, 8 - 5 + 1)            # the slot ends full (8 positions)
    assert len(core.scheduler.slots[0].cache) == 8
    assert max(x.pos0 + len(x.tokens) for b in r.batches for x in b) == 8
    assert not [op for op in r.ops if isinstance(op, SeqShift)]


def test_context_shift_continues_with_rm_and_shift_ops():
    core, r = make(n_slots=1, n_ctx_slot=8, context_shift=True, n_keep=1)
    p = (1, 2, 3, 4, 5)
    core.add(gen(p, "a", max_tokens=12))
    res = run(core)["a"]
    assert res.final.finish_reason == "length"
    assert len(res.tokens) == 12
    shifts = [(i, op) for i, op in enumerate(r.ops) if isinstance(op, SeqShift)]
    assert shifts
    i, op = shifts[0]
    # full at 8 tokens: keep 1, discard (8 - 1) // 2 = 3
    assert r.ops[i - 1] == SeqRm(0, 1, 4)
    assert op == SeqShift(0, 4, -1, -3)
    # expected tokens: the same fake model over a context that drops the same tokens
    ctx, exp = list(p), []
    while len(exp) < 12:
        t = next_token(ctx)
        exp.append(t)
        if len(exp) == 12:
            break
        if len(ctx) >= 8:
            del ctx[1:1 + (len(ctx) - 1) // 2]
        ctx.append(t)
    assert res.tokens == exp


def test_context_shift_is_skipped_when_the_memory_cannot_shift():
    # e.g. a recurrent model: the request ends at the context's end, as with shifting off
    core, r = make(n_slots=1, n_ctx_slot=8, context_shift=True, n_keep=1, can_shift=False)
    p = (1, 2, 3, 4, 5)
    core.add(gen(p, "a", max_tokens=12))
    res = run(core)["a"]
    assert res.final.finish_reason == "length"
    assert res.tokens == reference(p, 8 - 5 + 1)
    assert not [op for op in r.ops if isinstance(op, SeqShift)]


# ---------------------------------------------------------------------------- abort

def test_abort_waiting_request():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=4))
    core.add(gen(P2, "b", max_tokens=4))
    seen = core.step()
    assert core.abort("b") is True
    assert core.abort("b") is False              # already aborted
    assert core.abort("nope") is False
    outs = core.step()
    fb = [o for o in outs if o.request_id == "b"]
    assert len(fb) == 1 and fb[0].finished and fb[0].finish_reason == "abort"
    assert fb[0].usage["completion_tokens"] == 0 and fb[0].token_ids == []
    res = run(core, seen=seen + outs)
    assert res["a"].tokens == reference(P1, 4)
    assert not items_of(r.attempts, "b")         # never decoded
    assert core.abort("a") is False              # finished
    check_no_leaks(core, r)


def test_abort_running_request_frees_slot_others_unaffected():
    def scenario(with_x: bool):
        core, r = make(n_slots=2, n_batch=8)
        core.add(gen(P1, "a", max_tokens=8))
        if with_x:
            core.add(gen(P2, "x", max_tokens=20))
        outs = [core.step() for _ in range(3)]
        if with_x:
            core.add(gen(P3, "c", max_tokens=4))   # waits for a slot
            assert core.metrics_dict()["requests_deferred"] == 1
            assert core.abort("x") is True
            assert core.slots()[1]["id_task"] == "x"     # freed only at the next step
            step = core.step()
            fx = [o for o in step if o.request_id == "x"]
            assert len(fx) == 1 and fx[0].finish_reason == "abort" and fx[0].finished
            assert core.slots()[1]["id_task"] == "c"     # the freed slot is taken in that same step
            outs.append(step)
        else:
            core.add(gen(P3, "c", max_tokens=4))
        flat = [o for s in outs for o in s]
        res = run(core)
        a = [o for o in flat if o.request_id == "a"] + res["a"].outs
        c = [o for o in flat if o.request_id == "c"] + res["c"].outs
        return core, r, Result(a), Result(c)

    core, r, a1, c1 = scenario(True)
    _, _, a0, c0 = scenario(False)
    assert a1.tokens == a0.tokens == reference(P1, 8)
    assert a1.text == a0.text
    assert c1.tokens == c0.tokens == reference(P3, 4)
    xi = [i for i, _ in items_of(r.batches, "x")]
    assert len(xi) == 3                          # decoded in the 3 steps before the abort only
    check_no_leaks(core, r)


# ---------------------------------------------------------------------------- KV cache full

def _three(core):
    reqs = [gen(P1, "a", max_tokens=6), gen(P2, "b", max_tokens=7), gen(P3, "c", max_tokens=5)]
    for q in reqs:
        core.add(q)
    return reqs


def test_kv_full_retries_with_smaller_batches():
    core, r = make(n_slots=3, n_batch=8, kv_full_over=3)
    reqs = _three(core)
    res = run(core)
    assert any(sum(len(x.tokens) for x in b) > 3 for b in r.attempts)   # it did hit the limit
    assert all(sum(len(x.tokens) for x in b) <= 3 for b in r.batches)
    for q in reqs:
        assert res[q.id].final.finish_reason == "length" and res[q.id].final.error is None
        assert res[q.id].tokens == reference(q.prompt, q.max_tokens)
        assert res[q.id].final.timings["prompt_n"] == len(q.prompt)
    m = core.metrics_dict()
    assert m["n_requests_failed"] == 0
    assert m["n_decode_total"] == len(r.batches) < len(r.attempts)
    check_no_leaks(core, r)


def test_kv_full_on_a_single_token_fails_only_that_request():
    def hook(rec, i):
        if any(x.rid == "b" for x in rec):
            return KVCacheFullError("no room for b", 1)
        return None

    core, r = make(n_slots=3, n_batch=8, fail_hook=hook)
    reqs = _three(core)
    res = run(core)
    fb = res["b"].final
    assert fb.finish_reason == "error"
    assert isinstance(fb.error, KVCacheFullError)
    assert not items_of(r.batches, "b")
    # the batch was halved down to b's first prompt token alone before b was failed
    assert [b for b in r.attempts if any(x.rid == "b" for x in b)][-1] == [Rec(1, P2[:1], 0, False, "b", True)]
    assert SeqRm(1, 0, -1) in r.ops[3:]
    assert core.scheduler.slots[1].cache == []
    for q in (reqs[0], reqs[2]):
        assert res[q.id].final.finish_reason == "length"
        assert res[q.id].tokens == reference(q.prompt, q.max_tokens)
    assert core.metrics_dict()["n_requests_failed"] == 1
    # the failed slot is usable again
    r.fail_hook = None
    core.add(gen(P2, "b2", max_tokens=3, id_slot=1))
    assert run(core)["b2"].tokens == reference(P2, 3)
    check_no_leaks(core, r)


def test_kv_full_transient_on_embedding_does_not_hang():
    def hook(rec, i):
        return KVCacheFullError("transient", 1) if i == 0 else None

    core, r = make(n_slots=1, n_batch=8, fail_hook=hook)
    core.add(Request(prompt=(5, 6, 7, 8), id="e", kind=RequestKind.EMBED))
    steps, final = 0, None
    while core.has_work() and steps < 50:
        steps += 1
        for o in core.step():
            if o.finished:
                final = o
    assert final is not None, f"no final output after {steps} steps ({len(r.attempts)} decode attempts)"


def test_decode_error_fails_the_batch_later_requests_work():
    def hook(rec, i):
        return DecodeError("boom", -3) if i == 1 else None

    core, r = make(n_slots=2, n_batch=8, fail_hook=hook)
    core.add(gen(P1, "a", max_tokens=5))
    core.add(gen(P2, "b", max_tokens=5))
    core.add(gen(P3, "c", max_tokens=4))
    res = run(core)
    for rid in "ab":
        f = res[rid].final
        assert f.finish_reason == "error" and isinstance(f.error, DecodeError) and str(f.error) == "boom"
    # batch 0: a's whole prompt + b's first chunk; batch 1 (fails): a's decode token + b's last chunk
    assert [(x.rid, x.prefill) for x in r.attempts[1]] == [("a", False), ("b", True)]
    assert res["a"].tokens == reference(P1, 1) and res["b"].tokens == []
    assert res["a"].final.usage["completion_tokens"] == 1
    assert r.ops[2:4] == [SeqRm(0, 0, -1), SeqRm(1, 0, -1)]   # after the 2 admissions
    assert res["c"].final.finish_reason == "length"
    assert res["c"].tokens == reference(P3, 4)
    # a request reusing a failed slot works too (the fake checks its KV is consistent)
    core.add(gen(P1, "d", max_tokens=3))
    rd = run(core)["d"]
    assert rd.tokens == reference(P1, 3) and rd.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    m = core.metrics_dict()
    assert m["n_requests_failed"] == 2 and m["n_decode_total"] == len(r.batches)
    check_no_leaks(core, r)


# ---------------------------------------------------------------------------- validation

def test_validation():
    core, r = make(n_slots=2, n_ctx_slot=16)
    with pytest.raises(ContextLimitError) as ei:
        core.add(gen(range(100, 120), "big"))
    msg = str(ei.value)
    assert "20" in msg and "16" in msg
    assert ei.value.n_tokens == 20 and ei.value.n_ctx == 16
    assert isinstance(ei.value, ValueError)
    with pytest.raises(ContextLimitError):
        core.add(gen(range(100, 116), "eq"))       # == n_ctx_slot: no room to generate
    core.add(gen(range(100, 115), "ok", max_tokens=1))
    with pytest.raises(ValueError):
        Request(prompt=())
    with pytest.raises(ValueError):
        core.add(gen(P1, "slot", id_slot=2))
    with pytest.raises(ValueError, match="duplicate"):
        core.add(gen(P1, "ok"))
    assert r.n_new_sampler - r.n_free_sampler == 1    # only "ok" holds a sampler
    assert core.metrics_dict()["requests_deferred"] == 1
    res = run(core)
    assert list(res) == ["ok"]
    check_no_leaks(core, r)


def test_embedding_input_over_ubatch_is_rejected():
    core, r = make(n_slots=1, n_batch=8, n_ubatch=4, n_ctx_slot=32)
    with pytest.raises(ContextLimitError) as ei:
        core.add(Request(prompt=(1, 2, 3, 4, 5), kind=RequestKind.EMBED))
    assert "5" in str(ei.value) and "4" in str(ei.value)


# ---------------------------------------------------------------------------- outputs, metrics

def test_metrics_add_up():
    core, r = make(n_slots=2, n_batch=6)
    reqs = [gen(P1, "a", max_tokens=3), gen(P2, "b", max_tokens=5), gen(P1 + (90,), "d", max_tokens=2),
            gen(P3, "c", max_tokens=4)]
    for q in reqs:
        core.add(q)
    res = run(core)
    for q in reqs:
        o = res[q.id]
        assert o.tokens == reference(q.prompt, q.max_tokens)
        assert o.text == detok(o.tokens)
        u = o.final.usage
        assert u["prompt_tokens"] == len(q.prompt) and u["completion_tokens"] == q.max_tokens
        assert u["total_tokens"] == len(q.prompt) + q.max_tokens
        assert o.final.timings["predicted_n"] == q.max_tokens
        assert o.final.timings["prompt_n"] + o.final.timings["cache_n"] == len(q.prompt)
    m = core.metrics_dict()
    assert m["n_decode_total"] == len(r.batches)
    assert m["n_busy_slots_total"] == sum(len(b) for b in r.batches)
    assert m["n_tokens_predicted_total"] == sum(q.max_tokens for q in reqs)
    assert m["n_prompt_tokens_processed_total"] == sum(res[q.id].final.timings["prompt_n"] for q in reqs)
    # every prompt token decoded was counted once
    assert m["n_prompt_tokens_processed_total"] == sum(len(x.tokens) for b in r.batches for x in b if x.prefill)
    assert m["n_requests_total"] == 4 and m["n_requests_failed"] == 0
    assert m["n_busy_slots_per_decode"] == pytest.approx(m["n_busy_slots_total"] / m["n_decode_total"])
    assert m["requests_processing"] == 0 and m["requests_deferred"] == 0
    assert res["d"].final.usage["prompt_tokens_details"]["cached_tokens"] > 0    # d reused a's prefix
    assert m["n_tokens_max"] == max(x.pos0 + len(x.tokens) for b in r.batches for x in b)    # the longest slot
    assert m["t_decode_total"] > 0 and m["t_step_python_total"] > 0 and m["python_ms_per_step"] > 0
    assert list(m) == [     # the server's /metrics reads these
        "n_prompt_tokens_processed_total", "t_prompt_processing_total", "n_tokens_predicted_total",
        "t_tokens_generation_total", "n_decode_total", "n_busy_slots_total", "n_tokens_max", "n_requests_total",
        "n_requests_failed", "t_step_python_total", "t_decode_total", "requests_processing", "requests_deferred",
        "n_busy_slots_per_decode", "prompt_cache", "python_ms_per_step"]


def test_logprobs_requested():
    core, r = make(n_slots=2)
    core.add(gen(P1, "a", max_tokens=4, logprobs=True, n_probs=2))
    core.add(gen(P2, "b", max_tokens=4))
    res = run(core)
    a = res["a"]
    assert len(a.logprobs) == 4
    assert all(isinstance(lp, TokenLogprob) for lp in a.logprobs)
    assert [lp.token for lp in a.logprobs] == a.tokens
    assert [lp.logprob for lp in a.logprobs] == [-t / 100.0 for t in a.tokens]
    assert all(len(lp.top) == 2 for lp in a.logprobs)
    assert len(r.logprob_calls) == 4 and all(c[2] == 2 for c in r.logprob_calls)
    assert [c[1] for c in r.logprob_calls] == a.tokens
    assert res["b"].logprobs == []


def test_logprobs_chosen_token_only():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=3, logprobs=True))
    a = run(core)["a"]
    assert [lp.token for lp in a.logprobs] == a.tokens
    assert all(lp.top == [] for lp in a.logprobs)
    assert [c[2] for c in r.logprob_calls] == [0, 0, 0]


def test_post_sampling_probs_asks_the_sampler_not_the_logits():
    core, r = make(n_slots=2)
    core.add(gen(P1, "a", max_tokens=3, n_probs=2, post_sampling_probs=True))
    core.add(gen(P2, "b", max_tokens=3, n_probs=2))
    res = run(core)
    a, b = res["a"], res["b"]
    assert [lp.token for lp in a.logprobs] == a.tokens
    assert all(lp.post_sampling and lp.prob == 1.0 and lp.top_probs == [(lp.token, 1.0)] for lp in a.logprobs)
    assert [c[0] for c in r.post_probs_calls] == a.tokens and all(c[1] == 2 for c in r.post_probs_calls)
    assert [c[1] for c in r.logprob_calls] == b.tokens     # only b's tokens went to the raw logits
    assert not any(lp.post_sampling for lp in b.logprobs)


def test_post_sampling_probs_without_n_probs_costs_nothing():
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=3, post_sampling_probs=True))
    a = run(core)["a"]
    assert a.logprobs == [] and r.post_probs_calls == [] and r.logprob_calls == []


# ---------------------------------------------------------------------------- embeddings

def test_embedding_request():
    core, r = make(n_slots=2, n_batch=8)
    p = (5, 6, 7, 8, 9, 10)
    core.add(Request(prompt=p, id="e", kind=RequestKind.EMBED))
    res = run(core)["e"]
    assert res.final.finish_reason == "stop" and res.final.error is None
    assert res.final.embedding == [6.0, float(sum(p))]
    assert r.batches == [[Rec(0, p, 0, True, "e", True)]]
    assert r.n_new_sampler == 0
    assert core.scheduler.slots[0].cache == [] and core.slots()[0]["n_cached"] == 0
    # the next request on that slot does not reuse it, and clears the KV
    n_ops = len(r.ops)
    core.add(gen(p, "g", max_tokens=2, id_slot=0))
    g = run(core)["g"]
    assert r.ops[n_ops] == SeqRm(0, 0, -1)
    assert g.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert g.tokens == reference(p, 2)


def test_embedding_not_pooled_and_never_split():
    core, r = make(n_slots=2, n_batch=8)
    core.add(gen((1, 2), "g", max_tokens=4))
    seen = core.step()
    p = tuple(range(30, 38))                     # 8 tokens: cannot share a batch with g's decode token
    core.add(Request(prompt=p, id="e", kind=RequestKind.EMBED, pooled=False))
    res = run(core, seen=seen)
    assert res["e"].final.embedding == [[float(t)] for t in p]
    e_items = items_of(r.batches, "e")
    assert len(e_items) == 1 and e_items[0][1].tokens == p and e_items[0][1].logits
    assert e_items[0][0] > items_of(r.batches, "g")[-1][0]
    assert res["g"].tokens == reference((1, 2), 4)
    assert r.embedding_calls == [("e", 0, False, p)]


def test_max_tokens_zero_evaluates_the_prompt_only():
    core, r = make(n_slots=1, n_batch=8)
    core.add(gen(P1, "z", max_tokens=0))
    res = run(core)["z"]
    assert res.tokens == [] and res.final.finish_reason == "length"
    assert res.final.usage["completion_tokens"] == 0
    assert core.scheduler.slots[0].cache == list(P1)   # the prompt is in the cache for reuse


def test_a_tiny_shared_prefix_does_not_claim_a_cached_slot():
    # only the BOS-like first token is shared: below the 10% similarity, the LRU slot is used instead
    core, r = make(n_slots=2, n_batch=64)
    long_a = (1,) + tuple(range(10, 40))
    core.add(gen(long_a, "a", max_tokens=1))
    run(core)
    core.add(gen((1,) + tuple(range(50, 80)), "b", max_tokens=1))
    res = run(core)["b"]
    assert res.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert res.final.id_slot == 1


def test_static_batching_waits_for_the_running_batch():
    core, r = make(n_slots=2, n_batch=64)
    core.scheduler.config = dataclasses.replace(core.scheduler.config, cont_batching=False)
    core.add(gen(P1, "a", max_tokens=6))
    core.step()                                  # a is admitted and prefilled
    core.add(gen(P2, "b", max_tokens=2))
    for _ in range(3):
        core.step()
    assert core.scheduler.slots[1].state is None and core.scheduler.n_waiting == 1   # b waits for a
    res = run(core)
    assert res["b"].final.finish_reason == "length"


def test_one_pooled_embedding_per_decode_without_unified_kv():
    core, r = make(n_slots=3, n_batch=64)
    core.scheduler.config = dataclasses.replace(core.scheduler.config, kv_unified=False)
    for i, p in enumerate((P1, P2, P3)):
        core.add(Request(prompt=p, kind=RequestKind.EMBED, id=f"e{i}"))
    run(core)
    assert all(sum(1 for x in b if x.prefill) == 1 for b in r.batches)


def test_a_fatal_decode_error_is_reported_until_a_decode_succeeds():
    def hook(rec, i):
        return DecodeError("llama_decode: llama.cpp aborted: lost the RPC worker", -100) if i == 0 else None

    core, r = make(n_slots=1, n_batch=8, fail_hook=hook)
    core.add(gen(P1, "a", max_tokens=3))
    res = run(core)
    assert res["a"].final.finish_reason == "error"
    assert "RPC worker" in core.fatal_error
    core.add(gen(P2, "b", max_tokens=2))
    assert run(core)["b"].final.finish_reason == "length"
    assert core.fatal_error is None


# ---------------------------------------------------------------------------- host-RAM prompt cache

PA = tuple(range(100, 112))     # 12 tokens
PB = tuple(range(300, 310))     # 10 tokens, nothing in common with PA


def cache_ops(r: FakeRunner, since: int = 0):
    return [(op.op, op.seq, len(op.tokens)) for op in r.ops[since:] if isinstance(op, CacheOp)]


def test_prompt_cache_lru_replacement_saves_and_a_later_prompt_loads_it_back():
    core, r = make(n_slots=1, n_ctx_slot=64, cache_ram_mib=-1)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA, "a", max_tokens=3))
    ra = run(core)["a"]
    held_a = list(PA) + ra.tokens[:2]
    core.add(gen(PB, "b", max_tokens=3))           # the LRU slot is taken over: A goes to RAM
    rb = run(core)["b"]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert [list(e.tokens) for e in pc.entries] == [held_a]
    assert pc.entries[0].size > 0 and pc.entries[0].data is not None
    n = len(r.ops)
    core.add(gen(PA + (7, 8), "c", max_tokens=3))   # A's tokens come back from RAM
    rc = run(core)["c"]
    assert cache_ops(r, n) == [("save", 0, len(PB) + 2), ("load", 0, len(held_a))]
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)
    assert rc.final.timings["cache_n"] == len(PA) and rc.final.timings["prompt_n"] == 2
    assert rc.tokens == reference(PA + (7, 8), 3)
    # the loaded entry left the cache; B's tokens are there now
    assert [len(e.tokens) for e in pc.entries] == [len(PB) + 2]
    assert (pc.n_saved, pc.n_loaded) == (2, 1)
    check_no_leaks(core, r)


def test_prompt_cache_load_picks_the_entry_that_keeps_and_covers_most():
    core, r = make(n_slots=1, n_ctx_slot=64, cache_ram_mib=-1)
    pc = core.scheduler.prompt_cache
    long_a = PA + tuple(range(500, 530))            # 42 tokens: a 12-token match keeps < 1/4 of it
    for rid, p in (("a", PA), ("b", PB), ("l", long_a[:1] + (9,) * 20), ("x", (5, 6, 7))):
        core.add(gen(p, rid, max_tokens=1))
        run(core)
    assert [e.tokens[:1] for e in pc.entries] == [PA[:1], PB[:1], (PA[0],)]
    n = len(r.ops)
    core.add(gen(PA + (1, 2), "c", max_tokens=2))
    rc = run(core)["c"]
    loads = [op for op in r.ops[n:] if isinstance(op, CacheOp) and op.op == "load"]
    assert len(loads) == 1 and loads[0].tokens[:len(PA)] == PA
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)
    assert rc.tokens == reference(PA + (1, 2), 2)
    # a prompt that keeps less than 1/4 of every entry loads nothing
    n = len(r.ops)
    core.add(gen((PA[0],) + (77,) * 10, "d", max_tokens=1))
    run(core)
    assert "load" not in [o for o, *_ in cache_ops(r, n)]


def test_prompt_cache_not_used_when_the_slot_already_serves_the_prompt():
    core, r = make(n_slots=1, cache_ram_mib=-1)
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    n = len(r.ops)
    core.add(gen(PA + (1,), "b", max_tokens=2))     # similarity keeps the slot: no cache update
    rb = run(core)["b"]
    assert cache_ops(r, n) == []
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)


def test_prompt_cache_skips_tokens_already_cached_and_drops_contained_entries():
    core, r = make(n_slots=1, cache_ram_mib=-1)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA[:6], "a", max_tokens=1))
    run(core)
    core.add(gen(PB, "b", max_tokens=1))            # saves PA[:6]
    run(core)
    core.add(gen(PA, "c", max_tokens=1))            # saves PB, loads PA[:6] (taken out), extends it
    run(core)
    assert [e.tokens[0] for e in pc.entries] == [PB[0]]
    core.add(gen(PB, "d", max_tokens=1))            # saves PA (12 tokens), loads PB
    run(core)
    assert [e.tokens[:len(PA)] for e in pc.entries] == [PA]
    n = len(r.ops)
    core.add(gen(PA[:3] + (9, 9, 9), "e", max_tokens=1))   # PB+gen saved; load PA (keeps 3/12 >= 1/4)
    run(core)
    assert [o for o, *_ in cache_ops(r, n)] == ["save", "load"]
    # PA's entry was taken by the load; PB's is there, and a prefix of it is not saved again
    assert [e.tokens[0] for e in core.scheduler.prompt_cache.entries] == [PB[0]]
    assert pc.alloc(PB[:4]) is None


def test_prompt_cache_size_limit_evicts_the_oldest_and_skips_oversized_entries():
    from pyllama.engine.prompt_cache import PromptCache
    pc = PromptCache(1, 0)          # 1 MiB
    mib = 1024 * 1024

    def put(tokens, size):
        e = pc.alloc(tokens)
        assert e is not None
        e.data, e.size = b"x", size
        pc.commit()
        return e

    a = put((1, 2), mib // 2)
    b = put((3, 4), mib // 3)
    assert pc.entries == [a, b]
    c = put((5, 6), mib // 2)                 # over 1 MiB: the oldest (a) goes
    assert pc.entries == [b, c]
    put((7, 8), 2 * mib)                      # larger than the limit: skipped, nothing evicted
    assert pc.entries == [b, c]
    d = put((3, 4, 5), 100)                   # contains b: b is dropped
    assert pc.entries == [c, d]
    assert pc.alloc((3, 4)) is None           # already contained in d
    e = pc.alloc((9,))
    pc.commit()                               # the runner never wrote it: dropped
    assert e not in pc.entries


def test_prompt_cache_token_limit_scales_with_the_size_limit():
    from pyllama.engine.prompt_cache import PromptCache
    # no size limit (-1): the token limit (the context size) holds
    pc = PromptCache(-1, 10)
    for i in range(4):
        e = pc.alloc(tuple(range(10 * i, 10 * i + 4)))
        e.data, e.size = b"x", 1000
        pc.commit()
    assert pc.n_tokens() <= 10 and [e.tokens[0] for e in pc.entries] == [20, 30]
    # with a size limit, the token limit grows to what the bytes allow at the current bytes/token
    pc = PromptCache(1, 10)
    for i in range(4):
        e = pc.alloc(tuple(range(10 * i, 10 * i + 4)))
        e.data, e.size = b"x", 1000
        pc.commit()
    assert len(pc.entries) == 4


def test_prompt_cache_disabled_with_zero():
    core, r = make(n_slots=1, cache_ram_mib=0)
    assert core.scheduler.prompt_cache is None
    for rid, p in (("a", PA), ("b", PB), ("c", PA)):
        core.add(gen(p, rid, max_tokens=2))
        res = run(core)[rid]
    assert cache_ops(r) == [] and r.n_saves == r.n_loads == 0
    assert res.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert core.metrics_dict()["prompt_cache"] is None


def test_prompt_cache_idle_slots_are_saved_and_cleared_on_a_new_task():
    core, r = make(n_slots=2, cache_ram_mib=-1, cache_idle_slots=True)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA, "a", max_tokens=2))
    ra = run(core)["a"]
    assert ra.final.id_slot == 0
    n = len(r.ops)
    core.add(gen(PB, "b", max_tokens=2))            # slot 1 (LRU); idle slot 0 -> RAM, cleared
    rb = run(core)["b"]
    assert rb.final.id_slot == 1
    assert cache_ops(r, n) == [("save", 0, len(PA) + 1)]
    assert SeqRm(0, -1, -1) in r.ops[n:]
    assert core.scheduler.slots[0].cache == [] and r.kv[0] == []
    n = len(r.ops)
    core.add(gen(PA + (5,), "c", max_tokens=2))     # both slots: slot 0 is LRU and empty -> load
    rc = run(core)["c"]
    assert rc.final.id_slot == 0
    assert ("load", 0, len(PA) + 1) in cache_ops(r, n)
    assert ("save", 1, len(PB) + 1) in cache_ops(r, n)   # idle slot 1 saved after c started
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)
    assert rc.tokens == reference(PA + (5,), 2)
    assert [e.tokens[0] for e in pc.entries] == [PB[0]]
    check_no_leaks(core, r)


def test_prompt_cache_idle_slots_without_unified_kv_are_saved_not_cleared():
    core, r = make(n_slots=2, cache_ram_mib=-1, cache_idle_slots=True, kv_unified=False)
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    n = len(r.ops)
    core.add(gen(PB, "b", max_tokens=2))
    run(core)
    assert cache_ops(r, n) == [("save", 0, len(PA) + 1)]
    assert core.scheduler.slots[0].cache == list(r.kv_tokens(0)) and len(r.kv[0]) == len(PA) + 1
    n = len(r.ops)
    core.add(gen(PA + (5,), "c", max_tokens=2))     # slot 0 still holds A: similarity, no load
    rc = run(core)["c"]
    assert rc.final.id_slot == 0 and "load" not in [o for o, *_ in cache_ops(r, n)]
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)


def test_prompt_cache_idle_slots_need_the_cache():
    core, r = make(n_slots=2, cache_ram_mib=0, cache_idle_slots=True)
    assert not core.scheduler.config.cache_idle_slots


def test_prompt_cache_with_cache_prompt_false_consumes_the_entry_but_reuses_nothing():
    core, r = make(n_slots=1, cache_ram_mib=-1)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    core.add(gen(PB, "b", max_tokens=2))
    run(core)
    assert [e.tokens[0] for e in pc.entries] == [PA[0]]
    n = len(r.ops)
    core.add(gen(PA, "c", max_tokens=2, cache_prompt=False))
    rc = run(core)["c"]
    # as llama-server: B is saved, A's entry is taken (and thrown away), the prompt is evaluated whole
    assert cache_ops(r, n) == [("save", 0, len(PB) + 1)]
    assert [e.tokens[0] for e in pc.entries] == [PB[0]]
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert rc.final.timings["prompt_n"] == len(PA)
    assert rc.tokens == reference(PA, 2)


def test_prompt_cache_embeddings_do_not_update_it():
    core, r = make(n_slots=1, n_batch=16, cache_ram_mib=-1, cache_idle_slots=False)
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    n = len(r.ops)
    core.add(Request(prompt=PB, id="e", kind=RequestKind.EMBED, cache_prompt=False))
    run(core)
    assert cache_ops(r, n) == []


def test_prompt_cache_failed_load_fails_only_that_request():
    core, r = make(n_slots=1, cache_ram_mib=-1)
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    core.add(gen(PB, "b", max_tokens=2))
    run(core)
    r.fail_load = True
    core.add(gen(PA, "c", max_tokens=2))
    rc = run(core)["c"]
    assert rc.final.finish_reason == "error" and isinstance(rc.final.error, StateError)
    assert core.scheduler.slots[0].cache == [] and r.kv[0] == []
    r.fail_load = False
    core.add(gen(PA, "d", max_tokens=2))
    rd = run(core)["d"]
    assert rd.final.finish_reason == "length" and rd.tokens == reference(PA, 2)
    check_no_leaks(core, r)


def test_prompt_cache_costs_nothing_in_steps_without_admission():
    core, r = make(n_slots=1, cache_ram_mib=-1)
    core.add(gen(PA, "a", max_tokens=6))
    core.step()
    pc = core.scheduler.prompt_cache
    calls = []
    pc.commit = lambda: calls.append(1)             # type: ignore[method-assign]
    while core.has_work():
        core.step()
    assert calls == []


def test_prompt_cache_failed_save_skips_the_entry_and_out_of_memory_lowers_the_limit():
    core, r = make(n_slots=1, cache_ram_mib=1)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA, "a", max_tokens=2))
    run(core)
    core.add(gen(PB, "b", max_tokens=2))            # A saved
    run(core)
    assert len(pc.entries) == 1
    r.fail_save = StateError("no")
    core.add(gen(P1, "c", max_tokens=2))            # B's save fails: skipped, the request runs
    rc = run(core)["c"]
    assert rc.final.finish_reason == "length" and len(pc.entries) == 1 and pc.limit_size == 1024 * 1024
    r.fail_save = MemoryError()
    used = pc.size()
    core.add(gen(P2, "d", max_tokens=2))            # out of memory: the limit drops to 40% of the use
    rd = run(core)["d"]
    assert rd.final.finish_reason == "length"
    assert pc.limit_size == int(0.4 * used) and pc.entries == []     # and the cache shrinks to it


def test_prompt_cache_with_a_pinned_slot():
    core, r = make(n_slots=2, cache_ram_mib=-1)
    core.add(gen(PA, "a", max_tokens=2, id_slot=0))
    run(core)
    n = len(r.ops)
    core.add(gen(PA + (1,), "b", max_tokens=2, id_slot=0))   # keeps most of the slot: no cache update
    run(core)
    assert cache_ops(r, n) == []
    n = len(r.ops)
    core.add(gen(PB, "c", max_tokens=2, id_slot=0))          # the slot would lose it all: saved first
    run(core)
    assert [o for o, *_ in cache_ops(r, n)] == ["save"]
    n = len(r.ops)
    core.add(gen(PA + (3,), "d", max_tokens=2, id_slot=0))   # and loaded back
    rd = run(core)["d"]
    assert [o for o, *_ in cache_ops(r, n)] == ["save", "load"]
    assert rd.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)     # b's prompt was PA + (1,)
    assert rd.tokens == reference(PA + (3,), 2)
    # an empty pinned slot is not filled from the cache (llama-server: no similarity to compute)
    assert len(core.scheduler.prompt_cache) == 1
    n = len(r.ops)
    core.add(gen(PB, "e", max_tokens=2, id_slot=1))
    re_ = run(core)["e"]
    # no load into the empty pinned slot; only the idle slot 0 goes to the cache (--cache-idle-slots)
    assert cache_ops(r, n) == [("save", 0, len(PA) + 2)]
    assert re_.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    core.reset_cache()                                       # forgets the RAM cache too
    assert len(core.scheduler.prompt_cache) == 0


# ---------------------------------------------------------------------------- LoRA configurations

LA, LB, LC = (1.0, 0.0), (0.0, 0.5), (2.0, 1.0)


def lora_of(r: FakeRunner, batch_index: int):
    return r.lora_of_batch[batch_index]


def test_lora_one_shared_configuration_batches_as_before():
    """Everyone on one configuration (the default None or one explicit tuple): the same batches."""
    def batches(lora):
        core, r = make(n_slots=3, n_batch=16, n_lora=2)
        for p, rid in ((P1, "a"), (P2, "b"), (P3, "c")):
            core.add(gen(p, rid, max_tokens=5, lora=lora))
        res = run(core)
        for p, rid in ((P1, "a"), (P2, "b"), (P3, "c")):
            assert res[rid].tokens == reference(p, 5, lora)
        check_no_leaks(core, r)
        return r.batches
    base = batches(None)
    assert len(base[0]) == 3 and all(len(b) == 3 for b in base)   # everyone in every decode
    assert [[(x.slot, x.pos0, x.prefill) for x in b] for b in batches(LA)] == \
        [[(x.slot, x.pos0, x.prefill) for x in b] for b in base]


def test_lora_two_configurations_never_share_a_batch_and_match_their_solo_runs():
    core, r = make(n_slots=4, n_batch=32, n_lora=2)
    reqs = [(P1, "a", LA), (P2, "b", LB), (P3, "c", LA), (P4, "d", None)]
    for p, rid, lora in reqs:
        core.add(gen(p, rid, max_tokens=6, lora=lora))
    res = run(core)
    for p, rid, lora in reqs:
        assert res[rid].tokens == reference(p, 6, lora), rid
    lora_of_rid = {rid: (0.0, 0.0) if lora is None else lora for _, rid, lora in reqs}   # None: the default
    for b, lora in zip(r.batches, r.lora_of_batch):     # (the fake runner checks it on every decode too)
        assert {lora_of_rid[x.rid] for x in b} == {lora}
    # a and c (same scales) always decode together
    assert [i for i, _ in items_of(r.batches, "a")] == [i for i, _ in items_of(r.batches, "c")]
    assert LB in r.lora_of_batch and LA in r.lora_of_batch and (0.0, 0.0) in r.lora_of_batch
    check_no_leaks(core, r)


def test_lora_no_configuration_starves():
    """Three configurations: each is served at least every third step, whoever came first."""
    core, r = make(n_slots=4, n_batch=32, n_ctx_slot=128, n_lora=2)
    core.add(gen(P1, "a", max_tokens=30, lora=LA))
    core.add(gen(P2, "b", max_tokens=30, lora=LA))
    run_steps = [core.step() for _ in range(3)]          # a and b run alone for a while
    core.add(gen(P3, "c", max_tokens=10, lora=LB))
    core.add(gen(P4, "d", max_tokens=10, lora=LC))
    seen = [o for outs in run_steps for o in outs]
    n0 = len(r.batches)
    res = run(core, seen=seen)
    later = r.lora_of_batch[n0:]
    assert later[:9] == [LA, LB, LC] * 3 or later[:9] == [LB, LC, LA] * 3, later[:9]
    for lora in (LA, LB, LC):
        idx = [i for i, x in enumerate(later) if x == lora]
        assert idx and idx[0] <= 2, (lora, idx)
        # while the three run together, a configuration waits at most two steps
        while_all = [i for i in idx if i < 3 * 10]
        assert all(j - i <= 3 for i, j in zip(while_all, while_all[1:])), (lora, idx)
    assert res["a"].tokens == reference(P1, 30, LA) and res["b"].tokens == reference(P2, 30, LA)
    assert res["c"].tokens == reference(P3, 10, LB) and res["d"].tokens == reference(P4, 10, LC)
    check_no_leaks(core, r)


def test_lora_long_prefill_of_one_configuration_does_not_stall_the_other():
    core, r = make(n_slots=2, n_batch=4, n_ctx_slot=128, n_lora=1)
    core.add(gen(P2, "a", max_tokens=12, lora=(1.0,)))
    seen = core.step()
    long = tuple(range(60, 100))
    core.add(gen(long, "b", max_tokens=2, lora=(0.0,)))
    res = run(core, seen=seen)
    a_steps = [i for i, _ in items_of(r.batches, "a")]
    b_steps = [i for i, _ in items_of(r.batches, "b")]
    assert a_steps and b_steps and min(b_steps) < max(a_steps)      # interleaved, both progress
    assert not set(a_steps) & set(b_steps)
    assert res["a"].tokens == reference(P2, 12, (1.0,)) and res["b"].tokens == reference(long, 2, (0.0,))
    check_no_leaks(core, r)


def test_lora_cached_prefix_is_reused_only_under_the_same_configuration():
    core, r = make(n_slots=1, n_lora=1)
    core.add(gen(P1, "a", max_tokens=3, lora=(1.0,)))
    run(core)
    core.add(gen(P1, "b", max_tokens=3, lora=(0.5,)))      # same prompt, other scales: no reuse
    rb = run(core)["b"]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert rb.tokens == reference(P1, 3, (0.5,))
    core.add(gen(P1, "c", max_tokens=3, lora=(0.5,)))      # same scales: reused
    rc = run(core)["c"]
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(P1) - 1
    assert rc.tokens == reference(P1, 3, (0.5,))
    check_no_leaks(core, r)


def test_lora_slot_choice_prefers_a_cache_of_the_same_configuration():
    core, r = make(n_slots=2, n_lora=1)
    core.add(gen(P1, "a", max_tokens=2, lora=(1.0,)))
    core.add(gen(P1 + (9,), "b", max_tokens=2, lora=(0.0,)))
    run(core)
    core.add(gen(P1 + (9, 9), "c", max_tokens=2, lora=(1.0,)))
    rc = run(core)["c"]
    assert rc.final.id_slot == 0 and rc.final.usage["prompt_tokens_details"]["cached_tokens"] == len(P1)
    assert rc.tokens == reference(P1 + (9, 9), 2, (1.0,))


def test_lora_prompt_cache_entries_keep_their_configuration():
    core, r = make(n_slots=1, n_ctx_slot=64, cache_ram_mib=-1, n_lora=1)
    pc = core.scheduler.prompt_cache
    core.add(gen(PA, "a", max_tokens=3, lora=(1.0,)))
    run(core)
    core.add(gen(PB, "b", max_tokens=3, lora=(0.0,)))      # A goes to RAM, tagged with its scales
    run(core)
    assert [e.lora for e in pc.entries] == [(1.0,)]
    n = len(r.ops)
    core.add(gen(PA + (7,), "c", max_tokens=3, lora=(0.0,)))    # other scales: A's entry is no use
    rc = run(core)["c"]
    assert ("load", 0, len(PA) + 2) not in cache_ops(r, n)
    assert rc.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert rc.tokens == reference(PA + (7,), 3, (0.0,))
    n = len(r.ops)
    core.add(gen(PA + (8,), "d", max_tokens=3, lora=(1.0,)))    # its own scales: loaded back
    rd = run(core)["d"]
    assert ("load", 0, len(PA) + 2) in cache_ops(r, n)
    assert rd.final.usage["prompt_tokens_details"]["cached_tokens"] == len(PA)
    assert rd.tokens == reference(PA + (8,), 3, (1.0,))
    check_no_leaks(core, r)


def test_lora_validation():
    core, _ = make(n_lora=2)
    with pytest.raises(ValueError, match="2 adapters"):
        core.add(gen(P1, "a", lora=(1.0,)))
    with pytest.raises(ValueError, match="finite"):
        gen(P1, "b", lora=(1.0, float("nan")))
    core0, _ = make()
    with pytest.raises(ValueError, match="0 adapters"):
        core0.add(gen(P1, "c", lora=(1.0,)))
    core0.add(gen(P1, "d", lora=()))        # no adapter: an empty configuration is fine
    assert run(core0)["d"].tokens == reference(P1, 4)


# ---------------------------------------------------------------------------- cache reuse (--cache-reuse)
# llama-server's algorithm: after the common prefix, chunks of the slot's cache that match the
# prompt where the prompt is (the prompt skipped what lies between) move there by a KV shift.
# The fake KV checks after the ops that positions are contiguous and hold slot.cache's tokens.

RX = (1, 5, 6)                     # common prefix
RZ = (60, 61, 62, 63, 64)          # in the cache only
RY = (30, 31, 32, 33)              # cached after RZ, follows RX directly in the new prompt


def _cached(core, r, prompt):
    """Run ``prompt`` alone in slot 0 (1 token generated): the slot then caches exactly it."""
    core.add(gen(prompt, "seed", max_tokens=1))
    run(core)
    assert core.scheduler.slots[0].cache == list(prompt)
    return len(r.ops), len(r.batches)


def test_cache_reuse_moves_a_chunk_earlier_and_prefills_only_the_rest():
    core, r = make(n_slots=1)
    n_ops, nb = _cached(core, r, RX + RZ + RY)
    pb = RX + RY + (44, 45)
    core.add(gen(pb, "b", max_tokens=3, n_cache_reuse=4))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 3, 8), SeqShift(0, 8, 12, -5), SeqRm(0, 7, -1)]
    assert r.batches[nb] == [Rec(0, (44, 45), 7, True, "b", True)]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 7
    assert rb.final.timings["cache_n"] == 7 and rb.final.timings["prompt_n"] == 2
    assert rb.tokens == reference(pb, 3)     # the fake model reads only the KV's tokens
    check_no_leaks(core, r)


def test_cache_reuse_chunk_shorter_than_n_is_not_reused():
    core, r = make(n_slots=1)
    n_ops, nb = _cached(core, r, RX + RZ + RY)
    pb = RX + RY + (44, 45)
    core.add(gen(pb, "b", max_tokens=3, n_cache_reuse=5))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 3, -1)]
    assert r.batches[nb] == [Rec(0, RY + (44, 45), 3, True, "b", True)]
    assert rb.final.timings["cache_n"] == 3 and rb.final.timings["prompt_n"] == 6
    assert rb.tokens == reference(pb, 3)


def test_cache_reuse_off_with_zero_and_by_default():
    for kw in ({}, {"n_cache_reuse": 0}):
        core, r = make(n_slots=1)
        n_ops, nb = _cached(core, r, RX + RZ + RY)
        core.add(gen(RX + RY + (44,), "b", max_tokens=2, **kw))
        rb = run(core)["b"]
        assert r.ops[n_ops:] == [SeqRm(0, 3, -1)]
        assert rb.final.timings["cache_n"] == 3


def test_cache_reuse_needs_cache_prompt():
    core, r = make(n_slots=1)
    n_ops, nb = _cached(core, r, RX + RZ + RY)
    pb = RX + RY + (44,)
    core.add(gen(pb, "b", max_tokens=2, n_cache_reuse=1, cache_prompt=False))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 0, -1)]
    assert r.batches[nb] == [Rec(0, pb, 0, True, "b", True)]
    assert rb.final.timings["cache_n"] == 0 and rb.tokens == reference(pb, 2)


def test_cache_reuse_multiple_chunks_and_the_rest_in_between_is_prefilled():
    core, r = make(n_slots=1)
    A, B, C = (30, 31, 32), (40, 41, 42), (50, 51, 52)
    n_ops, nb = _cached(core, r, RX + (70,) + A + (71, 72) + B + (73,) + C + (74,))
    pb = RX + A + B + (99,) + C
    core.add(gen(pb, "b", max_tokens=3, n_cache_reuse=3))
    rb = run(core)["b"]
    # A: cache [4, 7) -> [3, 6); B: cache [9, 12) -> [6, 9); then prompt[9] = 99 matches nothing, so
    # the walk of the cache goes on without the prompt moving: C (after 99) is not reused
    assert r.ops[n_ops:] == [SeqRm(0, 3, 4), SeqShift(0, 4, 7, -1),
                             SeqRm(0, 6, 9), SeqShift(0, 9, 12, -3),
                             SeqRm(0, 9, -1)]
    assert r.batches[nb] == [Rec(0, (99,) + C, 9, True, "b", True)]
    assert rb.final.timings["cache_n"] == 9 and rb.final.timings["prompt_n"] == 4
    assert rb.tokens == reference(pb, 3)
    check_no_leaks(core, r)


def test_cache_reuse_a_chunk_reaching_the_prompt_end_still_decodes_the_last_token():
    core, r = make(n_slots=1)
    n_ops, nb = _cached(core, r, RX + RZ + RY)
    pb = RX + RY
    core.add(gen(pb, "b", max_tokens=2, n_cache_reuse=2))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 3, 8), SeqShift(0, 8, 12, -5), SeqRm(0, 6, -1)]
    assert r.batches[nb] == [Rec(0, RY[-1:], 6, True, "b", True)]
    assert rb.final.timings["cache_n"] == 6 and rb.final.timings["prompt_n"] == 1
    assert rb.tokens == reference(pb, 2)


def test_cache_reuse_skipped_when_the_memory_cannot_shift():
    core, r = make(n_slots=1, can_shift=False)
    n_ops, nb = _cached(core, r, RX + RZ + RY)
    core.add(gen(RX + RY + (44,), "b", max_tokens=2, n_cache_reuse=2))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 3, -1)]
    assert rb.final.timings["cache_n"] == 3


def test_cache_reuse_only_under_the_same_lora_scales():
    core, r = make(n_slots=1, n_lora=1)
    core.add(gen(RX + RZ + RY, "a", max_tokens=1, lora=(1.0,)))
    run(core)
    n_ops = len(r.ops)
    pb = RX + RY + (44,)
    core.add(gen(pb, "b", max_tokens=2, n_cache_reuse=2, lora=(0.5,)))
    rb = run(core)["b"]
    assert r.ops[n_ops:] == [SeqRm(0, 0, -1)]
    assert rb.final.timings["cache_n"] == 0 and rb.tokens == reference(pb, 2, (0.5,))
    core.add(gen(RX + RZ + RY, "c", max_tokens=1, lora=(0.5,)))
    run(core)
    n_ops = len(r.ops)
    core.add(gen(pb, "d", max_tokens=2, n_cache_reuse=2, lora=(0.5,)))
    rd = run(core)["d"]
    assert [type(op) for op in r.ops[n_ops:]] == [SeqRm, SeqShift, SeqRm]
    assert rd.final.timings["cache_n"] == 7 and rd.tokens == reference(pb, 2, (0.5,))


def test_cache_reuse_field_validated():
    with pytest.raises(ValueError, match="n_cache_reuse"):
        gen(P1, "x", n_cache_reuse=-1)


# ---------------------------------------------------------------------------- one request's failure is its own

@pytest.mark.parametrize("error", [RuntimeError("a bug in one request's sampling"), StateError("sampler")])
def test_an_exception_in_one_requests_sampling_fails_it_alone(error):
    core, r = make(n_slots=2, n_batch=16)
    r.fail_sample["a"] = error
    core.add(gen(P1, "a", max_tokens=4))
    core.add(gen(P2, "b", max_tokens=4))
    res = run(core)
    assert res["a"].final.finish_reason == "error" and res["a"].final.error is error and res["a"].tokens == []
    assert res["b"].final.finish_reason == "length" and res["b"].tokens == reference(P2, 4)
    assert {x.rid for x in r.batches[0]} == {"a", "b"}, "both were in one batch"
    assert core.metrics_dict()["n_requests_failed"] == 1
    check_no_leaks(core, r)


def test_an_exception_in_one_embedding_fails_it_alone():
    core, r = make(n_slots=3, n_batch=32)
    r.fail_embedding["e1"] = OverflowError("(inf) ** p")
    core.add(Request(prompt=P1, id="e1", kind=RequestKind.EMBED))
    core.add(Request(prompt=P2, id="e2", kind=RequestKind.EMBED))
    core.add(gen(P3, "g", max_tokens=3))
    res = run(core)
    assert res["e1"].final.finish_reason == "error" and isinstance(res["e1"].final.error, OverflowError)
    assert res["e1"].final.embedding is None
    assert res["e2"].final.finish_reason == "stop" and res["e2"].final.embedding == [len(P2), sum(P2)]
    assert res["g"].tokens == reference(P3, 3)
    assert {x.rid for x in r.batches[0]} == {"e1", "e2", "g"}
    check_no_leaks(core, r)


def test_an_exception_in_one_requests_logprobs_fails_it_alone():
    core, r = make(n_slots=2, n_batch=16)

    def logprob(row, token, n_top):
        raise ValueError("no such row")

    r.logprob = logprob     # type: ignore[method-assign]
    core.add(gen(P1, "a", max_tokens=3, logprobs=True))
    core.add(gen(P2, "b", max_tokens=3))
    res = run(core)
    assert res["a"].final.finish_reason == "error" and isinstance(res["a"].final.error, ValueError)
    assert res["b"].tokens == reference(P2, 3)
    check_no_leaks(core, r)


# ---------------------------------------------------------------------------- slot files (save/restore/erase)

def test_slot_save_erase_restore(tmp_path):
    core, r = make(n_slots=2)
    core.add(gen(P1, "a", max_tokens=4, id_slot=0))
    run(core)
    held = list(core.scheduler.slots[0].cache)
    path = str(tmp_path / "s0.bin")
    saved = core.save_slot(0, path)
    assert saved == SlotSaved(0, len(held), os.path.getsize(path)) and saved.n_saved == len(P1) + 3
    assert core.erase_slot(0) == SlotErased(0, len(held))
    assert core.scheduler.slots[0].cache == [] and r.kv[0] == []
    assert core.restore_slot(1, path) == SlotRestored(1, len(held), os.path.getsize(path))
    assert core.scheduler.slots[1].cache == held and r.kv_tokens(1) == held
    core.add(gen(P1 + (77,), "b", max_tokens=3))       # served from the restored slot
    rb = run(core)["b"]
    assert rb.final.id_slot == 1 and rb.final.usage["prompt_tokens_details"]["cached_tokens"] == len(P1)
    assert rb.tokens == reference(P1 + (77,), 3)
    check_no_leaks(core, r)


def test_slot_ops_need_an_existing_idle_slot(tmp_path):
    core, r = make(n_slots=2)
    with pytest.raises(ValueError, match="out of range"):
        core.erase_slot(2)
    with pytest.raises(ValueError, match="out of range"):
        core.save_slot(-1, str(tmp_path / "x"))
    core.add(gen(P1, "a", max_tokens=4, id_slot=0))
    seen = core.step()
    for op in (lambda: core.save_slot(0, str(tmp_path / "x")), lambda: core.restore_slot(0, str(tmp_path / "x")),
               lambda: core.erase_slot(0)):
        with pytest.raises(PyllamaError, match="slot 0 is busy"):
            op()
    assert run(core, seen=seen)["a"].tokens == reference(P1, 4)


def test_a_failed_restore_leaves_the_slot_empty_tokens_and_kv(tmp_path):
    core, r = make(n_slots=1)
    core.add(gen(P1, "a", max_tokens=3))
    run(core)
    assert core.scheduler.slots[0].cache
    with pytest.raises(StateError):
        core.restore_slot(0, str(tmp_path / "missing.bin"))
    # the KV is gone, and so is the token list: a cached request must not reuse a stale prefix
    assert core.scheduler.slots[0].cache == [] and r.kv[0] == []
    core.add(gen(P1 + (5,), "b", max_tokens=3))
    rb = run(core)["b"]
    assert rb.final.usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert rb.tokens == reference(P1 + (5,), 3)
    check_no_leaks(core, r)


# ---------------------------------------------------------------------------- LoRA scales through the core

def test_set_lora_scales_is_the_default_of_later_requests():
    core, r = make(n_slots=1, n_lora=2)
    core.set_loras(["x", "y"], (1.0, 0.0))
    core.add(gen(P1, "a", max_tokens=3))
    core.set_lora_scales((0.0, 0.5))                     # "a" keeps the scales it was added with
    core.add(gen(P1, "b", max_tokens=3))
    res = run(core)
    assert res["a"].tokens == reference(P1, 3, (1.0, 0.0))
    assert res["b"].tokens == reference(P1, 3, (0.0, 0.5))
    assert res["b"].final.usage["prompt_tokens_details"]["cached_tokens"] == 0    # other scales: no reuse
    assert core.n_ctx_slot == r.n_ctx_slot and core.can_shift
