"""Tests for pyllama.detokenize (pure Python, no model needed)."""

import random

import pytest

from pyllama.detokenize import IncrementalDetokenizer, StopMatcher


# ---------------------------------------------------------------- helpers

def make_detok(pieces):
    """Detokenizer whose vocabulary is ``pieces`` (token id = list index)."""
    return IncrementalDetokenizer(lambda tid: pieces[tid])


def stream(pieces):
    d = make_detok(pieces)
    outs = [d.push(i) for i in range(len(pieces))]
    return outs, d.flush()


def split_bytes(data, sizes):
    out, pos = [], 0
    for n in sizes:
        out.append(data[pos:pos + n])
        pos += n
    assert pos == len(data)
    return out


# ------------------------------------------------- IncrementalDetokenizer

def test_ascii_passthrough():
    outs, tail = stream([b"Hello", b",", b" world"])
    assert outs == ["Hello", ",", " world"]
    assert tail == ""


@pytest.mark.parametrize("ch", ["é", "€", "🦙"])
def test_multibyte_byte_by_byte(ch):
    data = ch.encode()
    outs, tail = stream([data[i:i + 1] for i in range(len(data))])
    assert outs[:-1] == [""] * (len(data) - 1)
    assert outs[-1] == ch
    assert tail == ""


@pytest.mark.parametrize("sizes", [(1, 3), (2, 2), (3, 1), (1, 1, 2), (4,)])
def test_llama_emoji_splits(sizes):
    pieces = split_bytes("🦙".encode(), sizes)
    outs, tail = stream(pieces)
    assert "".join(outs) == "🦙"
    assert outs[-1] == "🦙"  # never emitted half
    assert all(o == "" for o in outs[:-1])
    assert tail == ""


def test_split_char_with_surrounding_text():
    data = "a€b".encode()  # 61 e2 82 ac 62
    outs, tail = stream([data[:2], data[2:4], data[4:]])
    assert outs == ["a", "€", "b"]
    assert tail == ""


def test_no_half_character_ever_emitted_random_splits():
    text = "Grüße, 世界! 🦙🦙 naïve €5 — ok"
    data = text.encode()
    rng = random.Random(1234)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(0, 15)))
        bounds = [0] + cuts + [len(data)]
        pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]
        outs, tail = stream(pieces)
        assert "\ufffd" not in "".join(outs)
        assert "".join(outs) + tail == text


def test_invalid_lead_byte_is_replaced_immediately():
    outs, tail = stream([b"a\xffb", b"\xfe", b"c"])
    assert outs == ["a\ufffdb", "\ufffd", "c"]
    assert tail == ""


def test_lone_continuation_byte_replaced():
    outs, _ = stream([b"\x80", b"x"])
    assert outs == ["\ufffd", "x"]


def test_incomplete_sequence_broken_by_next_token_does_not_block():
    # e2 82 is a valid prefix of "€" but "A" makes it invalid.
    outs, tail = stream([b"\xe2\x82", b"A", b"B"])
    assert outs[0] == ""
    assert outs[1] == "\ufffdA"
    assert outs[2] == "B"
    assert tail == ""


def test_invalid_sequence_followed_by_valid_multibyte():
    outs, tail = stream([b"\xf0\x9f", "é".encode()])
    assert outs == ["", "\ufffdé"]
    assert tail == ""


def test_surrogate_encoding_is_invalid():
    outs, _ = stream([b"\xed\xa0\x80", b"z"])
    assert "".join(outs).endswith("z")
    assert "\ufffd" in outs[0]


def test_flush_incomplete_tail():
    d = make_detok([b"ok", b"\xf0\x9f\xa6"])
    assert d.push(0) == "ok"
    assert d.push(1) == ""
    assert d.flush() == "\ufffd"
    # flush resets: detokenizer is reusable
    assert d.push(0) == "ok"
    assert d.flush() == ""


def test_flush_empty():
    assert make_detok([]).flush() == ""


def test_reset_drops_buffer():
    d = make_detok([b"\xe2\x82", b"x"])
    d.push(0)
    d.reset()
    assert d.push(1) == "x"
    assert d.flush() == ""


def test_bytearray_piece_accepted():
    d = IncrementalDetokenizer(lambda tid: bytearray(b"hi"))
    assert d.push(0) == "hi"


# ----------------------------------------------------------- StopMatcher

def run_matcher(stops, chunks):
    """Feed chunks; return (emitted text, matched stop)."""
    m = StopMatcher(stops)
    out = []
    for c in chunks:
        text, stop = m.push(c)
        out.append(text)
        if stop is not None:
            return "".join(out), stop
    out.append(m.flush())
    return "".join(out), None


def test_stop_across_chunk_boundaries():
    m = StopMatcher(["</s>"])
    assert m.push("Hello <") == ("Hello ", None)
    assert m.push("/") == ("", None)
    assert m.push("s>") == ("", "</s>")
    assert m.matched == "</s>"
    assert m.done


def test_text_after_stop_dropped():
    m = StopMatcher(["STOP"])
    assert m.push("abcSTOPdef") == ("abc", "STOP")
    # matcher is finished afterwards
    assert m.push("more") == ("", None)
    assert m.flush() == ""


def test_multiple_stops_earliest_wins():
    assert run_matcher(["world", "llo"], ["hello world"]) == ("he", "llo")
    assert run_matcher(["xyz", "b"], ["a", "bxyz"]) == ("a", "b")
    # Both complete at the same position -> longest (earliest start) wins.
    assert run_matcher(["c", "abc"], ["xab", "c"]) == ("x", "abc")
    # Stop that is a prefix of another: same cut, the one completing first
    # is reported.
    assert run_matcher(["abc", "a"], ["xabc"]) == ("x", "a")


def test_partial_prefix_released_when_not_a_stop():
    m = StopMatcher(["</s>"])
    assert m.push("a</") == ("a", None)
    assert m.held == "</"
    assert m.push("x") == ("</x", None)
    assert m.held == ""
    assert m.push("</s") == ("", None)
    assert m.push("!") == ("</s!", None)


def test_only_longest_suffix_prefix_held():
    m = StopMatcher(["abab"])
    # "aba" -> held "aba"; then "b" completes.
    assert m.push("xaba") == ("x", None)
    assert m.held == "aba"
    assert m.push("c") == ("abac", None)
    # overlapping self-prefix: "ababab" contains "abab" at 0
    m = StopMatcher(["abab"])
    assert m.push("aba") == ("", None)
    assert m.push("bab") == ("", "abab")


def test_overlapping_prefix_shift():
    # "aab" stop, text "aaab": the match starts at index 1.
    assert run_matcher(["aab"], ["a", "a", "a", "b"]) == ("a", "aab")


def test_stop_at_very_start():
    m = StopMatcher(["<|end|>"])
    assert m.push("<|end|>trailing") == ("", "<|end|>")
    assert run_matcher(["<|end|>"], ["<", "|", "end", "|>"]) == ("", "<|end|>")


def test_no_stops():
    m = StopMatcher([])
    assert m.push("anything </s>") == ("anything </s>", None)
    assert m.flush() == ""
    m = StopMatcher(None)
    assert m.push("x") == ("x", None)


def test_empty_stop_strings_ignored():
    m = StopMatcher(["", "END", ""])
    assert m.stops == ("END",)
    assert m.push("abc") == ("abc", None)
    m = StopMatcher([""])
    assert m.push("abc") == ("abc", None)


def test_empty_push():
    m = StopMatcher(["x"])
    assert m.push("") == ("", None)


def test_held_text_released_by_flush():
    m = StopMatcher(["</s>"])
    assert m.push("bye </") == ("bye ", None)
    assert m.flush() == "</"
    assert m.flush() == ""


def test_holdback_bounded_by_max_stop_len():
    stop = "x" * 50 + "END"
    m = StopMatcher([stop])
    for _ in range(500):
        m.push("x")
        assert len(m.held) <= len(stop) - 1
    assert len(m.held) == 50
    text, s = m.push("END")
    assert s == stop and text == ""


def test_long_stop_many_small_chunks_is_linear():
    # Worst case for naive suffix/prefix checks: "aaaa...ab" with text "aaaa...".
    stop = "a" * 2000 + "b"
    m = StopMatcher([stop])
    emitted = []
    for _ in range(20000):
        t, s = m.push("a")
        assert s is None
        emitted.append(t)
    assert len("".join(emitted)) == 20000 - 2000
    t, s = m.push("b")
    assert s == stop
    assert len("".join(emitted) + t) == 20000 - 2000


def test_unicode_stop_strings():
    assert run_matcher(["🦙!"], ["hi 🦙", "!", "x"]) == ("hi ", "🦙!")


def reference(text, stops):
    """Simple non-streaming reference: text[:earliest find]; the reported stop
    is the one that completes first (longest if several complete together)."""
    stops = [s for s in stops if s]
    found = [s for s in stops if s in text]
    if not found:
        return text, None
    pos = min(text.find(s) for s in found)
    end = min(text.find(s) + len(s) for s in found)
    matched = max((s for s in found if text.find(s) + len(s) == end), key=len)
    return text[:pos], matched


def random_chunks(rng, text):
    if len(text) < 2:
        return [text]
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, len(text) - 1)))
    bounds = [0] + cuts + [len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("seed", range(5))
def test_random_chunking_single_stop_matches_reference(seed):
    rng = random.Random(seed)
    alphabet = "ab</s>"
    for _ in range(300):
        stop = rng.choice(["</s>", "abab", "aab", "a", "s>s", "<<</"])
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        expected = (text[:text.find(stop)], stop) if stop in text else (text, None)
        got = run_matcher([stop], random_chunks(rng, text))
        assert got == expected, (text, stop)


@pytest.mark.parametrize("seed", range(5))
def test_random_chunking_multi_stop_matches_reference(seed):
    # Stop sets where no stop occurs inside another except as a prefix, so
    # the streaming result equals text[:min(find)] exactly.
    stop_sets = [
        ["</s>", "<|im_end|>"],
        ["ab", "ba"],
        ["abc", "bcd", "cda"],
        ["a", "ab", "abc"],
        ["xx", "xy", "yx"],
    ]
    rng = random.Random(100 + seed)
    for _ in range(300):
        stops = rng.choice(stop_sets)
        alphabet = "".join(sorted(set("".join(stops)))) + " "
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        got = run_matcher(stops, random_chunks(rng, text))
        assert got == reference(text, stops), (text, stops)
        if got[1] is not None:
            assert got[0] == text[:min(text.find(s) for s in stops if s in text)]


def test_chunking_independent_even_with_nested_stops():
    # "bc" is inside "abcd": the stop that completes first ("bc") wins,
    # whatever the chunking.
    stops = ["abcd", "bc"]
    assert run_matcher(stops, ["abcd"]) == ("a", "bc")
    assert run_matcher(stops, ["a", "b", "c", "d"]) == ("a", "bc")


def test_detokenizer_and_matcher_pipeline():
    data = "Hé🦙</s>junk".encode()
    pieces = [data[i:i + 1] for i in range(len(data))]
    d = make_detok(pieces)
    m = StopMatcher(["</s>"])
    out, matched = [], None
    for i in range(len(pieces)):
        t, matched = m.push(d.push(i))
        out.append(t)
        if matched:
            break
    assert "".join(out) == "Hé🦙"
    assert matched == "</s>"
