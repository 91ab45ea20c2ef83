"""Micro-benchmarks (pytest-benchmark) of the Python-side hot paths.

    pytest benchmarks/test_micro.py                               # measure
    pytest benchmarks/test_micro.py --benchmark-disable -q        # fast: run each once, check results

Every benchmark also asserts that its result is correct, so the fast mode is a plain test.
Self-contained: it does not use tests/conftest.py.  Needs the compiled extension and
``vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf`` (a vocab-only GGUF, no weights);
the EngineCore benchmark uses a fake runner (no llama_decode at all).
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest

import pyllama
from pyllama.detokenize import IncrementalDetokenizer, StopMatcher
from pyllama.engine.core import EngineCore
from pyllama.engine.request import Request
from pyllama.engine.scheduler import BatchItem
from pyllama.params import SamplingParams

ROOT = Path(__file__).resolve().parent.parent
VOCAB = ROOT / "vendor" / "llama.cpp" / "models" / "ggml-vocab-llama-spm.gguf"

# ---------------------------------------------------------------------------------------------
# inputs

_PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog, while {n} engineers argue about tokenizers. "
    "Ünïcödé text — with “curly quotes”, naïve café crème brûlée, 日本語のテキスト, 한국어, "
    "emoji 🙂🚀 and math ∑x² ≤ ∞ — must survive the round trip.\n"
    "def f(x):\n    return {{'key': [x, x ** 2]}}  # code, tabs\tand  double  spaces\n\n"
)


def long_text(n_chars: int = 50_000) -> str:
    parts: List[str] = []
    size = 0
    for n in itertools.count():
        p = _PARAGRAPH.format(n=n)
        parts.append(p)
        size += len(p)
        if size >= n_chars:
            break
    return "".join(parts)


TEXT = long_text()


@pytest.fixture(scope="module")
def vocab():
    if not VOCAB.is_file():
        pytest.skip(f"{VOCAB} not found (run scripts/vendor_llama_cpp.py)")
    model = pyllama.Model(str(VOCAB), pyllama.ModelParams(vocab_only=True))
    yield model.vocab
    model.close()


@pytest.fixture(scope="module")
def text_tokens(vocab) -> List[int]:
    return vocab.tokenize(TEXT, add_special=False, parse_special=False)


# ---------------------------------------------------------------------------------------------
# tokenizer


def test_tokenize_long_text(benchmark, vocab, text_tokens):
    toks = benchmark(vocab.tokenize, TEXT, add_special=False, parse_special=False)
    assert toks == text_tokens
    assert len(toks) > 10_000
    benchmark.extra_info.update(n_chars=len(TEXT), n_tokens=len(toks))


def test_detokenize_long_text(benchmark, vocab, text_tokens):
    text = benchmark(vocab.detokenize, text_tokens)
    assert text == TEXT                                   # the round trip is exact
    benchmark.extra_info.update(n_chars=len(TEXT), n_tokens=len(text_tokens))


# ---------------------------------------------------------------------------------------------
# streaming detokenization + stop strings (what RequestState does per generated token)

N_STREAM = 1000


def _stream(tokens: Sequence[int], piece, stops: Sequence[str]) -> str:
    detok = IncrementalDetokenizer(piece)
    sm = StopMatcher(stops)
    out: List[str] = []
    for t in tokens:
        text, matched = sm.push(detok.push(t))
        out.append(text)
        if matched is not None:
            return "".join(out)
    out.append(sm.push(detok.flush())[0])
    out.append(sm.flush())
    return "".join(out)


@pytest.fixture(scope="module")
def stream_setup(vocab, text_tokens):
    toks = text_tokens[:N_STREAM]
    cache: Dict[int, bytes] = {}

    def piece(t: int) -> bytes:            # cached, like LlamaRunner.piece
        p = cache.get(t)
        if p is None:
            p = cache[t] = vocab.token_to_piece(t, special=False)
        return p

    for t in toks:
        piece(t)
    expected = b"".join(piece(t) for t in toks).decode("utf-8", "replace")
    return toks, piece, expected


def test_incremental_detok_stop_no_match(benchmark, stream_setup):
    toks, piece, expected = stream_setup
    stops = ["</s>", "\nUser:", "<|im_end|>"]          # never in the text: every char goes through KMP
    got = benchmark(_stream, toks, piece, stops)
    assert got == expected
    assert "🙂" in got and "日本語" in got                # multi-byte characters split over byte tokens
    benchmark.extra_info.update(n_tokens=len(toks), n_chars=len(got))


def test_incremental_detok_stop_match(benchmark, stream_setup):
    toks, piece, expected = stream_setup
    stop = "crème brûlée, 日本"
    # the last occurrence within the 1000 tokens: (almost) the whole stream is processed
    cut = expected.rfind(stop)
    assert cut > len(expected) // 2
    # make only that occurrence match: a stop that also includes the (unique) paragraph number
    n_before = expected[:cut].rfind("while ")
    uniq = expected[n_before:cut + len(stop)]
    got = benchmark(_stream, toks, piece, [uniq, "</s>"])
    assert got == expected[:n_before]


# ---------------------------------------------------------------------------------------------
# one EngineCore step with 8 generating slots, fake runner (no llama.cpp)

N_SLOTS = 8
_FAKE_VOCAB = 4096


class FakeSampler:
    __slots__ = ("i",)

    def __init__(self, start: int) -> None:
        self.i = start


class FakeRunner:
    """Implements the engine's Runner protocol; decode returns its rows instantly (no KV: memory ops
    are no-ops, and the benchmark needs no prompt cache, slot files or LoRA)."""

    kv_unified = True
    can_shift = True
    lora_default: Tuple[float, ...] = ()

    def __init__(self, n_slots: int = N_SLOTS, n_ctx_slot: int = 1 << 30, n_batch: int = 512) -> None:
        self.n_slots = n_slots
        self.n_ctx_slot = n_ctx_slot
        self.n_batch = n_batch
        self.n_ubatch = n_batch
        rng = random.Random(0)
        words = ["the", "of", "and", "tokens", "engine", "slot", "café", "日本", "🙂", "x", "\n", "    "]
        # mostly ASCII pieces with a leading space, some multi-byte, a few split UTF-8 sequences
        self._pieces: List[bytes] = []
        for i in range(_FAKE_VOCAB):
            w = rng.choice(words)
            self._pieces.append((" " + w).encode() if i % 7 else w.encode()[:1] if i % 14 else w.encode())
        self._next = 0
        self.n_decoded = 0

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def is_eog(self, token: int) -> bool:
        return False

    def new_sampler(self, request: Request) -> Any:
        self._next += 1
        return FakeSampler(self._next * 101)

    def free_sampler(self, sampler: Any) -> None:
        pass

    def set_loras(self, adapters: Sequence[Any], default: Sequence[float]) -> None:  # pragma: no cover
        raise AssertionError("no LoRA here")

    def set_lora_scales(self, scales: Sequence[float]) -> None:  # pragma: no cover
        raise AssertionError("no LoRA here")

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> None:
        pass

    def seq_shift(self, seq: int, p0: int, p1: int, delta: int) -> None:  # pragma: no cover
        pass

    def save_seq(self, seq: int) -> bytes:  # pragma: no cover
        raise AssertionError("no prompt cache here")

    def load_seq(self, seq: int, data: bytes) -> None:  # pragma: no cover
        raise AssertionError("no prompt cache here")

    def save_seq_file(self, seq: int, path: str, tokens: Sequence[int]) -> int:  # pragma: no cover
        raise AssertionError("no slot files here")

    def load_seq_file(self, seq: int, path: str, n_max: int) -> Tuple[List[int], int]:  # pragma: no cover
        raise AssertionError("no slot files here")

    def decode(self, items: Sequence[BatchItem]) -> List[int]:
        rows, n = [], 0
        for it in items:
            n += len(it.tokens)
            rows.append(n - 1)
        self.n_decoded += n
        return rows

    def sample(self, sampler: FakeSampler, row: int) -> int:
        sampler.i = (sampler.i * 1103515245 + 12345) % _FAKE_VOCAB
        return sampler.i

    def reasoning_end(self, sampler: FakeSampler) -> bool:  # pragma: no cover
        raise AssertionError("no reasoning control here")

    def logprob(self, row: int, token: int, n_top: int) -> Any:  # pragma: no cover - not requested
        raise AssertionError("logprobs were not requested")

    def post_sampling_probs(self, sampler: FakeSampler, token: int, n_top: int) -> Any:  # pragma: no cover
        raise AssertionError("logprobs were not requested")

    def embedding(self, item: BatchItem, row: int, pooled: bool) -> Any:  # pragma: no cover
        raise AssertionError("no embedding requests here")


@pytest.mark.parametrize("stops", [(), ("</s>", "\nUser:")], ids=["no-stop", "2-stops"])
def test_engine_step_8_slots(benchmark, stops):
    runner = FakeRunner()
    core = EngineCore(runner)
    rng = random.Random(1)
    reqs = [Request(prompt=tuple(rng.randrange(_FAKE_VOCAB) for _ in range(32)),
                    sampling=SamplingParams(temperature=0.0), max_tokens=-1, stop=stops, ignore_eos=True)
            for _ in range(N_SLOTS)]
    for r in reqs:
        core.add(r)
    first = core.step()                                  # prefill: 8 prompts in one batch
    assert [len(o.token_ids) for o in first] == [1] * N_SLOTS
    assert runner.n_decoded == 32 * N_SLOTS

    outs = benchmark(core.step)                           # a decode step: 8 tokens, 8 deltas

    assert len(outs) == N_SLOTS
    assert {o.request_id for o in outs} == {r.id for r in reqs}
    for o in outs:
        assert len(o.token_ids) == 1 and not o.finished
    m = core.metrics_dict()
    n_steps = m["n_decode_total"]
    # every step after the prefill decoded exactly one token per slot, and each slot got a token
    assert m["n_busy_slots_total"] == N_SLOTS * n_steps
    assert runner.n_decoded == 32 * N_SLOTS + N_SLOTS * (n_steps - 1)
    for r in reqs:
        st = core.scheduler.by_id[r.id]
        assert len(st.generated) == n_steps and st.stops.matched is None
    benchmark.extra_info.update(n_slots=N_SLOTS, python_ms_per_step=m["python_ms_per_step"])
