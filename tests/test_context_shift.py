"""--context-overflow shift on fake backends: the loop goes on past a full context, chat drops
its oldest turns, and what the session believes is cached is what the backend holds.

Two fakes: one that can only trim and prefill (the re-prefill path, as MLX) and one that
also shifts in place (``base.Shift``, as llama.cpp). Real backends: tests/test_kv_cache.py.
"""

from __future__ import annotations

import pytest

from conftest import FakeBackend, greedy, run
from mlxgen.backends.base import Shift
from mlxgen.loop import apply_shifts, generate
from mlxgen.prompt_cache import PromptCache, dropped_span

from test_conversation import RecordingBackend, cache_is_true, drain, make_conv


class ShiftingFake(FakeBackend):
    """FakeBackend that also drops positions in place (``base.Shift``) and says what it holds."""

    @property
    def n_cached(self) -> int:
        return len(self.cache)

    def shift(self, start: int, n: int) -> bool:
        self.calls.append(("shift", (start, n)))
        del self.cache[start : start + n]
        return True


def decode(ids):
    return "".join(chr(i) for i in ids)


@pytest.mark.parametrize("cls", [FakeBackend, ShiftingFake])
@pytest.mark.parametrize("pipelined", [False, True])
def test_shift_goes_past_a_full_context(cls, pipelined):
    backend = cls(script=[], n_ctx=32, filler=ord("x"), pipelined=pipelined)
    prompt = list(range(65, 75))  # 10 tokens
    tokens, done = run(generate(backend, prompt, greedy, decode, max_tokens=100, overflow="shift", keep=4))
    assert done.reason == "length" and len(done.tokens) == 100
    assert backend.max_cache <= 32  # the fake raises past n_ctx
    assert done.stats.context_shifts == len(done.shifts) >= 3
    assert done.stats.dropped_tokens == sum(d for _, d in done.shifts)
    assert all(kept == 4 for kept, _ in done.shifts)  # the first `keep` positions are never dropped
    # the cache holds the prompt and the tokens stepped, less what the shifts dropped
    assert backend.cache == apply_shifts(prompt + done.tokens[:-1], done.shifts)
    assert backend.cache[:4] == prompt[:4]
    shifted = [arg for name, arg in backend.calls if name == "shift"]
    if cls is ShiftingFake:  # in place: no token is prefilled again
        assert shifted == done.shifts and backend.prefilled == prompt
    else:  # trimmed to `keep` and the kept tokens prefilled again
        assert not shifted and len(backend.prefilled) > len(prompt)
        assert ("trim", 4) in backend.calls


def test_stop_ends_at_a_full_context():
    backend = FakeBackend(script=[], n_ctx=32, filler=ord("x"))
    _, done = run(generate(backend, list(range(65, 75)), greedy, decode, max_tokens=100, overflow="stop"))
    assert done.reason == "context" and not done.shifts and done.stats.context_shifts == 0
    assert done.stats.as_dict()["context_shifts"] == 0


def test_dropped_span_finds_the_turns_a_chat_dropped():
    system, t1, t2, new = [1, 2, 3], [10, 11, 12, 13], [20, 21, 22], [30, 31]
    held = system + t1 + t2
    assert dropped_span(held, system + t2 + new, 3) == len(t1)
    assert dropped_span(held, system + [99] + new, 3) == 0  # nothing of the cache lines up again
    assert dropped_span(held, held + new, len(held)) == 0


def test_prepare_shifts_in_place_only_when_asked():
    backend = ShiftingFake(n_ctx=64)
    cache = PromptCache(backend)
    system, t1, t2 = [1, 2, 3], [10, 11, 12, 13], [20, 21, 22]
    backend.prefill(system + t1 + t2)
    cache.record(system + t1 + t2)
    assert cache.prepare(system + t2 + [30]) == 3 and cache.shifted == 0  # not asked: the rest is prefilled again
    backend.trim(0)
    backend.prefill(system + t1 + t2)
    cache.record(system + t1 + t2)
    assert cache.prepare(system + t2 + [30], shift=True) == len(system + t2)
    assert cache.shifted == len(t1) and backend.cache == system + t2


@pytest.mark.parametrize("in_place", [False, True])
def test_forty_turn_chat_in_a_small_context_runs_to_the_end(in_place):
    class Shifting(RecordingBackend):
        def shift(self, start, n):
            del self.cache[start : start + n]
            return True

    conv, backend = make_conv(n_ctx=240, answer="fine, thanks", max_length=16,
                              backend_cls=Shifting if in_place else RecordingBackend)
    conv.set_system("Be brief.")
    assert isinstance(backend, Shift) == in_place
    shifted_turns, plain_new = 0, []
    for i in range(40):
        turn = conv.turn(f"question {i}?", drain)
        assert turn.done.reason == "eos" and turn.done.text == "fine, thanks"
        cache_is_true(conv, backend)
        assert len(backend.cache) < 240
        if turn.shift:
            shifted_turns += 1
            assert turn.dropped_turns >= 1 and turn.dropped_tokens > 0
            assert (turn.shifted > 0) == in_place
            if in_place:  # only the new message is prefilled: the kept turns moved down in the cache
                assert turn.new <= max(plain_new) + 1
            else:  # the kept turns are prefilled again
                assert turn.new > max(plain_new) + 20
            assert turn.prompt_tokens <= 120  # dropped until the prompt takes half the context
        elif i:
            plain_new.append(turn.new)
    assert shifted_turns >= 5
    assert len(conv.messages) == 80  # /save still has every turn; the context holds the latest
    assert conv.start > 0


def test_chat_default_is_shift_and_the_stats_line_says_so():
    from mlxgen.repl import turn_dict, turn_line

    conv, _ = make_conv(n_ctx=90, answer="ok ok ok", max_length=8)
    turns = [conv.turn(f"message number {i}", drain) for i in range(6)]
    shifted = next(t for t in turns if t.shift)
    assert "context shift: dropped the oldest" in turn_line(shifted)
    assert "the rest prefilled again" in turn_line(shifted)
    data = turn_dict(6, "x", shifted)["context_shift"]
    assert data["dropped_turns"] >= 1 and data["in_place"] is False
    assert turn_dict(1, "x", turns[0])["context_shift"] is None
