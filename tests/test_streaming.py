"""Text-side streaming on its own: the incremental decoder and the stop matcher."""

from __future__ import annotations

import random

import pytest

from conftest import FakeTokenizer, split_bytes
from mlxgen.streaming import REPLACEMENT, IncrementalDecoder, StopMatcher

MIXED = "Hola, ¿qué tal? año — 你好世界 🙂👍🏽 fin"


def stream(tok: FakeTokenizer, ids) -> tuple[list[str], str]:
    dec = IncrementalDecoder(tok.decode)
    deltas = [dec.add(i) for i in ids]
    return deltas, dec.flush()


# --------------------------------------------------------------------- incremental decoder


@pytest.mark.parametrize("char", ["á", "ñ", "你", "🙂"])
def test_multibyte_character_split_into_bytes_is_released_whole(tok, char):
    ids = tok.encode(char)
    assert len(ids) == len(char.encode())  # one token per byte
    deltas, tail = stream(tok, ids)
    assert deltas[:-1] == [""] * (len(ids) - 1)  # nothing until the last byte
    assert deltas[-1] == char
    assert tail == ""


def test_byte_by_byte_stream_equals_full_decode(tok):
    ids = tok.encode(MIXED)
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) + tail == MIXED == tok.decode(ids)
    assert not any(REPLACEMENT in d for d in deltas)


@pytest.mark.parametrize("seed", range(8))
def test_random_token_boundaries_never_break_characters(tok, seed):
    rnd = random.Random(seed)
    sizes = [rnd.randint(1, 5) for _ in range(40)]
    ids = tok.pieces_to_ids(split_bytes(MIXED, sizes))
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) + tail == MIXED
    assert not any(REPLACEMENT in d for d in deltas + [tail])


def test_token_holding_the_end_of_one_character_and_start_of_the_next(tok):
    # "ñ你" = c3 b1 | e4 bd a0  cut as [c3] [b1 e4] [bd a0]
    ids = tok.pieces_to_ids([b"\xc3", b"\xb1\xe4", b"\xbd\xa0"])
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) == "ñ你"
    assert tail == ""
    assert not any(REPLACEMENT in d for d in deltas)  # "ñ" may wait for the next character


def test_flush_releases_an_incomplete_character_at_the_very_end(tok):
    ids = tok.encode("ok") + [tok.piece(b"\xf0\x9f")]  # half an emoji, then the stream ends
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) == "ok"
    assert tail == REPLACEMENT  # the broken bytes are not silently dropped


def test_flush_twice_returns_nothing_new(tok):
    dec = IncrementalDecoder(tok.decode)
    for i in tok.encode("ab") + [0xE4]:
        dec.add(i)
    assert dec.flush() == REPLACEMENT
    assert dec.flush() == ""


def test_decode_window_stays_small(tok):
    # The decoder re-decodes a window of recent tokens, not the whole output.
    seen: list[int] = []

    def decode(ids):
        seen.append(len(ids))
        return tok.decode(ids)

    dec = IncrementalDecoder(decode)
    for i in tok.encode("x" * 500):
        dec.add(i)
    assert max(seen) <= 4


def test_decoder_that_strips_a_leading_space_keeps_spaces_between_tokens():
    # SentencePiece-style: "▁" marks a space, and decode() drops the space at the start.
    vocab = {0: "▁Hello", 1: "▁wor", 2: "ld", 3: "!"}

    def decode(ids):
        return "".join(vocab[i] for i in ids).replace("▁", " ").lstrip(" ")

    dec = IncrementalDecoder(decode)
    text = "".join(dec.add(i) for i in [0, 1, 2, 3]) + dec.flush()
    assert text == "Hello world!"


# -------------------------------------------------------------------------- stop matcher


def feed_all(matcher: StopMatcher, chunks) -> tuple[str, bool]:
    out = []
    for chunk in chunks:
        text, hit = matcher.feed(chunk)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def test_stop_split_across_chunks_never_leaks():
    m = StopMatcher(["END"])
    outs = [m.feed(c) for c in ["ab", "E", "N", "D", "tail"]]
    assert outs[0] == ("ab", False)
    assert outs[1] == ("", False) and outs[2] == ("", False)  # "E", "EN" held back
    assert outs[3] == ("", True)
    assert "E" not in "".join(t for t, _ in outs[:4])


def test_partial_match_that_is_not_a_stop_is_released_in_full():
    m = StopMatcher(["END"])
    assert m.feed("E") == ("", False)
    assert m.feed("N") == ("", False)
    assert m.feed("X") == ("ENX", False)


def test_flush_releases_held_back_partial_match():
    m = StopMatcher(["END"])
    assert m.feed("abcEN") == ("abc", False)
    assert m.flush() == "EN"
    assert m.flush() == ""


def test_text_before_the_stop_in_the_same_chunk_is_emitted_and_after_is_not():
    assert StopMatcher(["END"]).feed("helloENDworld") == ("hello", True)


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["world", "lo"])
    assert m.feed("hello world") == ("hel", True)


def test_overlapping_prefix_is_held_correctly():
    # "AAB": after "AAA" only the last "AA" can still start a match
    m = StopMatcher(["AAB"])
    assert m.feed("A") == ("", False)
    assert m.feed("A") == ("", False)
    assert m.feed("A") == ("A", False)
    assert m.feed("B") == ("", True)


def test_no_stops_passes_everything_through():
    m = StopMatcher([])
    assert m.feed("END") == ("END", False)
    assert StopMatcher([""]).feed("x") == ("x", False)  # empty stop strings are ignored


def test_multibyte_stop_string():
    m = StopMatcher(["🙂"])
    assert m.feed("hi ") == ("hi ", False)
    assert m.feed("🙂 more") == ("", True)


@pytest.mark.parametrize("seed", range(10))
def test_random_chunking_emits_exactly_the_text_before_the_first_stop(seed):
    rnd = random.Random(seed)
    stops = ["<END>", "###", "Fin."]
    body = "".join(rnd.choice(["a", "b", "<", "E", "#", "N", "D", ">", "F", "i", "n", ".", " "]) for _ in range(60))
    text = body + rnd.choice(stops) + "after the stop"
    cuts = sorted(rnd.sample(range(1, len(text)), 15))
    chunks = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
    first = min(i for i in (text.find(s) for s in stops) if i >= 0)
    assert feed_all(StopMatcher(stops), chunks) == (text[:first], True)


@pytest.mark.parametrize("seed", range(5))
def test_random_chunking_without_a_stop_releases_everything(seed):
    rnd = random.Random(seed)
    text = "".join(rnd.choice("ENDX ") for _ in range(80)).replace("END", "EN D")
    cuts = sorted(rnd.sample(range(1, len(text)), 20))
    chunks = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
    assert feed_all(StopMatcher(["END"]), chunks) == (text, False)


class _Out:
    def __init__(self, tty: bool) -> None:
        self.tty, self.data = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.data += text

    def flush(self) -> None:
        pass


@pytest.mark.parametrize(
    "tty, end, text, shown",
    [
        (False, "exact", "hello", "hello"),  # piped: exactly the text (issue 18)
        (False, "exact", "line\n", "line\n"),
        (True, "exact", "hello", "hello\n"),  # a terminal: the prompt starts on its own line
        (True, "exact", "line\n", "line\n"),  # ... without a doubled newline
        (False, "line", "answer", "answer\n"),  # chat: one answer per line
    ],
)
def test_stream_ends_with_a_newline_only_where_it_belongs(monkeypatch, tty, end, text, shown):
    from mlxgen import render
    from mlxgen.loop import Done, Stats, TokenEvent

    out = _Out(tty)
    monkeypatch.setattr(render.sys, "stdout", out)
    events = iter([TokenEvent(1, text, 0.0), Done("eos", text, [1], Stats())])
    render.stream(events, end=end)
    assert out.data == shown
