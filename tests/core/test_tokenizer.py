"""Tokenizer tests against the real vocabularies vendored with llama.cpp.

1. The ``ggml-vocab-*.gguf.inp/.out`` reference pairs, read and tokenized exactly the
   way ``vendor/llama.cpp/tests/test-tokenizer-0.cpp`` does.
2. The Vocab API on llama-spm (special ids, pieces, errors, parse_special, long text).
3. Incremental UTF-8 detokenization of byte-fallback tokens with a real vocab.
"""
from __future__ import annotations

import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import pyllama
from pyllama.detokenize import IncrementalDetokenizer

MODELS_DIR = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models"

# test-tokenizer-0.cpp splits the .inp file on this separator.
SEP = b"\n__ggml_vocab_test__\n"

# Vocabs that must have reference pairs. All of them are also run by llama.cpp itself
# (tests/CMakeLists.txt: test-tokenizer-0-<name>), so none is expected to fail.
REQUIRED_VOCABS = [
    "llama-spm", "llama-bpe", "phi-3", "qwen2", "gpt-2", "falcon", "deepseek-coder", "deepseek-llm",
    "starcoder", "mpt", "command-r", "refact", "bert-bge", "gemma-4", "qwen35",
]
# Vocabs whose pair fails for a known llama.cpp limitation: name -> reason (xfail, never skip).
# Currently empty: every vendored pair passes.
KNOWN_FAILURES: dict[str, str] = {}

# How detokenize(ids) relates to the input text. test-tokenizer-0 itself only *prints* the
# detokenized text (common_detokenize(ctx, res), i.e. remove_special=False, unparse_special=True)
# and asserts nothing about it, so this is our own, per-vocab-type check:
#   exact  - byte-exact round trip
#   clean  - the vocab has clean_up_tokenization_spaces (llama.cpp's ``clean_spaces``): the
#            decoded text may drop spaces (" ?" -> "?", " 's" -> "'s", ...) but nothing else
#   wpm    - BERT WordPiece: lowercases, strips accents, splits punctuation, emits [UNK]
DETOK_KIND = {
    "llama-spm": "exact", "phi-3": "exact", "qwen2": "exact", "deepseek-coder": "exact",
    "deepseek-llm": "exact", "command-r": "exact", "qwen35": "exact",
    "llama-bpe": "clean", "gpt-2": "clean", "falcon": "clean", "starcoder": "clean", "mpt": "clean",
    "refact": "clean", "gemma-4": "clean",
    "bert-bge": "wpm",
}


def _available_vocabs() -> list[str]:
    names = set()
    for inp in MODELS_DIR.glob("ggml-vocab-*.gguf.inp"):
        name = inp.name[len("ggml-vocab-"):-len(".gguf.inp")]
        if inp.with_suffix(".out").is_file() and (MODELS_DIR / f"ggml-vocab-{name}.gguf").is_file():
            names.add(name)
    return sorted(names)


# Required vocabs are always parametrized: if a pair were missing the test fails (no silent skip).
ALL_VOCABS = sorted(set(REQUIRED_VOCABS) | set(_available_vocabs()))


def _vocab_params():
    for name in ALL_VOCABS:
        marks = [pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=True)] if name in KNOWN_FAILURES else []
        yield pytest.param(name, id=name, marks=marks)


def read_tests(name: str) -> list[tuple[bytes, list[int]]]:
    """Port of read_tests() in test-tokenizer-0.cpp (byte-exact, including its edge cases)."""
    base = MODELS_DIR / f"ggml-vocab-{name}.gguf"
    raw = Path(f"{base}.inp").read_bytes()
    # std::getline semantics: split on '\n'; a trailing newline does not start another line.
    lines = Path(f"{base}.out").read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    texts: list[bytes] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEP, pos)
        if nxt < 0:
            texts.append(raw[pos:])
            break
        texts.append(raw[pos:nxt])
        pos = nxt + len(SEP)

    assert len(texts) == len(lines), f"{name}: input and output files have different number of tests"
    # string_strip() then split on ' ' and std::stoi each piece.
    tests = [(t, [int(x) for x in o.strip().split(b" ") if x]) for t, o in zip(texts, lines)]
    assert tests, f"{name}: no tests found"
    return tests


_MODELS: dict[str, pyllama.Model] = {}


def vocab_for(name: str) -> pyllama.Vocab:
    """Each vocab file is loaded once per module (vocab_only) and closed at module teardown."""
    if name not in _MODELS:
        _MODELS[name] = pyllama.Model(MODELS_DIR / f"ggml-vocab-{name}.gguf", pyllama.ModelParams(vocab_only=True))
    return _MODELS[name].vocab


@pytest.fixture(scope="module", autouse=True)
def _close_models():
    yield
    while _MODELS:
        _MODELS.popitem()[1].close()


@pytest.fixture(scope="module")
def spm() -> pyllama.Vocab:
    return vocab_for("llama-spm")


# ------------------------------------------------------------------ 1. reference pairs

def test_required_vocab_pairs_exist():
    missing = [n for n in REQUIRED_VOCABS if n not in _available_vocabs()]
    assert not missing, f"vendored ggml-vocab pairs missing: {missing}"


def _fmt(vocab, ids):
    return [(t, vocab.token_to_piece(t)) for t in ids]


@pytest.mark.parametrize("name", list(_vocab_params()))
def test_tokenizer_0(name):
    """Same call as test-tokenizer-0: common_tokenize(ctx, text, add_special=false, parse_special=false)."""
    vocab = vocab_for(name)
    tests = read_tests(name)
    failures = []
    for text, expected in tests:
        got = vocab.tokenize(text, add_special=False, parse_special=False)
        if got != expected:
            failures.append(f"{text!r}:\n  expected {_fmt(vocab, expected)}\n  got      {_fmt(vocab, got)}")
    assert not failures, f"{name}: {len(failures)}/{len(tests)} texts tokenized differently:\n" + "\n".join(failures)


def _only_spaces_removed(text: bytes, decoded: bytes) -> bool:
    """True if ``decoded`` is ``text`` with some ASCII spaces deleted (and nothing else changed)."""
    i = 0
    for b in text:
        if i < len(decoded) and decoded[i] == b:
            i += 1
        elif b != 0x20:
            return False
    return i == len(decoded)


_CLEANABLE = re.compile(rb" [?!.,']")


def _wpm_norm(s: str) -> str:
    s = unicodedata.normalize("NFD", s.lower())
    s = "".join(c for c in s if unicodedata.category(c) != "Mn")
    return re.sub(r"\s+", "", s)


@pytest.mark.parametrize("name", list(_vocab_params()))
def test_tokenizer_0_detokenize(name):
    """detokenize(expected ids), with the flags test-tokenizer-0 prints it with, gives the text back."""
    vocab = vocab_for(name)
    kind = DETOK_KIND.get(name, "exact")
    failures = []
    for text, expected in read_tests(name):
        # common_detokenize(ctx, tokens) == llama_detokenize(remove_special=false, unparse_special=true)
        dec = vocab.detokenize_bytes(expected, remove_special=False, unparse_special=True)
        if kind == "exact":
            ok = dec == text
        elif kind == "clean":
            ok = _only_spaces_removed(text, dec) and (dec == text or _CLEANABLE.search(text) is not None)
        else:  # wpm: compare case-/accent-/whitespace-insensitively, unless something became [UNK]
            ok = b"[UNK]" in dec or _wpm_norm(dec.decode()) == _wpm_norm(text.decode())
        if not ok:
            failures.append(f"{text!r} -> {dec!r}")
        # str API agrees with the bytes API
        assert vocab.detokenize(expected, remove_special=False, unparse_special=True) == dec.decode("utf-8", "replace")
    assert not failures, f"{name} ({kind}): detokenize mismatch:\n" + "\n".join(failures)


@pytest.mark.parametrize("name", ["llama-spm", "llama-bpe", "bert-bge"])
def test_tokenizer_0_multithreaded(name):
    """test-tokenizer-0 tokenizes from several threads at once; results must not depend on it."""
    vocab = vocab_for(name)
    tests = read_tests(name)

    def run(_):
        return [vocab.tokenize(t, add_special=False, parse_special=False) for t, _ in tests]

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(run, range(8)))
    expected = [e for _, e in tests]
    for r in results:
        assert r == expected


# ------------------------------------------------------------------ 2. Vocab API (llama-spm)

def test_spm_basics(spm):
    assert spm.type == "spm"
    assert spm.n_vocab == 32000
    assert spm.bos == 1
    assert spm.eos == 2
    assert spm.add_bos is True
    assert spm.add_eos is False
    assert spm.text(spm.bos) == "<s>"
    assert spm.text(spm.eos) == "</s>"
    assert spm.text(0) == "<unk>"


def test_spm_eog_and_control(spm):
    assert spm.is_eog(spm.eos) is True
    assert spm.is_eog(spm.bos) is False
    assert spm.eos in spm.eog_tokens()
    assert spm.is_control(spm.bos) is True
    assert spm.is_control(spm.eos) is True
    hello = spm.tokenize("Hello", add_special=False)
    assert len(hello) == 1
    assert spm.is_control(hello[0]) is False
    assert spm.is_eog(hello[0]) is False
    # out of range ids are simply "not eog / not control"
    assert spm.is_eog(-1) is False
    assert spm.is_control(spm.n_vocab) is False


def test_spm_token_to_piece(spm):
    (hello,) = spm.tokenize("Hello", add_special=False)
    piece = spm.token_to_piece(hello)
    assert isinstance(piece, bytes)
    assert piece == b" Hello"  # SPM word-start marker rendered as a space
    assert spm.token_to_piece(hello, lstrip=1) == b"Hello"
    assert spm.token_to_piece(spm.bos) == b"<s>"
    assert spm.token_to_piece(spm.bos, special=False) == b""
    assert spm.token_to_piece(13) == b"\n"  # <0x0A> byte-fallback token
    assert spm.text(13) == "<0x0A>"
    assert spm.token_to_piece(3 + 0xF0) == b"\xf0"  # a lone UTF-8 lead byte, still bytes


@pytest.mark.parametrize("bad", [-1, 32000, 10**6])
def test_spm_out_of_range_ids_raise(spm, bad):
    with pytest.raises(pyllama.TokenizeError):
        spm.token_to_piece(bad)
    with pytest.raises(pyllama.TokenizeError):
        spm.detokenize([bad])
    with pytest.raises(pyllama.TokenizeError):
        spm.detokenize([1, 15043, bad])
    with pytest.raises(pyllama.TokenizeError):
        spm.detokenize_bytes([bad])
    with pytest.raises(pyllama.TokenizeError):
        spm.text(bad)
    # TokenizeError is also a ValueError
    with pytest.raises(ValueError):
        spm.token_to_piece(bad)


def test_spm_empty(spm):
    assert spm.tokenize("", add_special=False) == []
    assert spm.tokenize(b"", add_special=False) == []
    assert spm.tokenize("", add_special=False, parse_special=True) == []
    assert spm.tokenize("", add_special=True) == [spm.bos]
    assert spm.detokenize([]) == ""
    assert spm.detokenize_bytes([]) == b""


def test_spm_add_special(spm):
    plain = spm.tokenize("Hello world", add_special=False)
    assert plain == [15043, 3186]
    assert spm.tokenize("Hello world", add_special=True) == [spm.bos] + plain
    assert spm.tokenize("Hello world") == [spm.bos] + plain  # default add_special=True
    # str and UTF-8 bytes are equivalent
    assert spm.tokenize("héllo wörld".encode(), add_special=False) == spm.tokenize("héllo wörld", add_special=False)


def test_spm_parse_special(spm):
    parsed = spm.tokenize("<s>Hello", add_special=False, parse_special=True)
    assert parsed[0] == spm.bos
    assert parsed.count(spm.bos) == 1
    literal = spm.tokenize("<s>Hello", add_special=False, parse_special=False)
    assert spm.bos not in literal
    assert len(literal) > len(parsed)  # "<", "s", ">" as plain text
    assert spm.detokenize(literal) == "<s>Hello"
    assert spm.tokenize("Hello</s>", add_special=False, parse_special=True)[-1] == spm.eos
    assert spm.eos not in spm.tokenize("Hello</s>", add_special=False, parse_special=False)
    # special tokens are rendered only with unparse_special
    assert spm.detokenize(parsed, unparse_special=True).startswith("<s>")
    assert "<s>" not in spm.detokenize(parsed, unparse_special=False)


def test_spm_detokenize_remove_special(spm):
    ids = spm.tokenize("Hello world", add_special=True, parse_special=False) + [spm.eos]
    assert spm.detokenize(ids, remove_special=False, unparse_special=True) == "<s> Hello world</s>"
    # llama.cpp keeps the SPM leading space when it strips a BOS (remove_space=false after BOS)
    assert spm.detokenize(ids, remove_special=True, unparse_special=True) == " Hello world</s>"  # add_eos is False
    assert spm.detokenize(ids[1:-1]) == "Hello world"


def test_spm_long_text(spm):
    base = "The quick brown fox jumps over the lazy dog. héllo wörld 🦙 你好\n\tcode() {}\n"
    text = (base * (100_000 // len(base) + 1))[:100_000]
    assert len(text) == 100_000
    ids = spm.tokenize(text, add_special=False)
    assert len(ids) > 20_000
    assert all(0 <= t < spm.n_vocab for t in ids)
    assert spm.detokenize(ids) == text
    assert spm.detokenize_bytes(ids) == text.encode()
    with_bos = spm.tokenize(text, add_special=True)
    assert with_bos == [spm.bos] + ids
    # tokenization is deterministic and safe from several threads (the GIL is released in C)
    with ThreadPoolExecutor(max_workers=4) as ex:
        for r in ex.map(lambda _: spm.tokenize(text, add_special=False), range(4)):
            assert r == ids


def test_spm_tokenize_rejects_non_text(spm):
    with pytest.raises(TypeError):
        spm.tokenize(5, add_special=False)


def test_huge_token_ids_are_tokenize_errors(spm):
    with pytest.raises(pyllama.TokenizeError):
        spm.token_to_piece(2**40)
    with pytest.raises(pyllama.TokenizeError):
        spm.detokenize([2**70])
    import numpy as np
    assert spm.token_to_piece(np.int64(1)) == spm.token_to_piece(1)


def test_spm_tokenize_rejects_none(spm):
    with pytest.raises(TypeError):
        spm.tokenize(None)


def test_vocab_not_constructible():
    with pytest.raises(TypeError):
        pyllama.Vocab()


# ------------------------------------------------------------------ 3. incremental UTF-8

@pytest.mark.parametrize("text", ["héllo wörld 🦙 你好", "🦙🦙 a🦙b 😶‍🌫️ Ελληνικά ✅", "你好世界"])
def test_incremental_detokenizer_real_vocab(spm, text):
    ids = spm.tokenize(text, add_special=False)
    pieces = [spm.token_to_piece(t, special=False) for t in ids]
    # byte fallback: at least one piece is not valid UTF-8 on its own (a split character)
    split = []
    for p in pieces:
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            split.append(p)
    if "🦙" in text:
        assert split, f"expected byte-fallback pieces for {text!r}: {pieces}"
        assert len([p for p in pieces if len(p) == 1 and p[0] >= 0x80]) >= 4  # 🦙 = 4 byte tokens

    det = IncrementalDetokenizer(lambda t: spm.token_to_piece(t, special=False))
    chunks = [det.push(t) for t in ids]
    chunks.append(det.flush())
    for c in chunks:
        assert "\ufffd" not in c, chunks
    joined = "".join(chunks)
    assert joined == b"".join(pieces).decode("utf-8")
    # token_to_piece(lstrip=0) keeps the SPM prefix space of the first word; llama_detokenize drops it
    assert joined == " " + spm.detokenize(ids)
    assert spm.detokenize(ids) == text
    # pieces of a split character are held back, never emitted half
    if split:
        assert "" in chunks[:-1]
