"""The shared generation loop, driven by the scripted FakeBackend."""

from __future__ import annotations

import random

import pytest

from conftest import FakeBackend, FakeClock, greedy, run, split_bytes, streamed
import numpy as np

from mlxgen.backends.base import Backend
from mlxgen.errors import PromptError
from mlxgen.loop import STOP_REASONS, Done, Stats, TokenEvent, generate
from mlxgen.sampling import SamplingParams, make_sampler
from mlxgen.streaming import REPLACEMENT

PROMPT = [ord(c) for c in "Q: hi\nA:"]


def gen(tok, backend, prompt=PROMPT, sample=greedy, *, max_tokens=100, **kw):
    return generate(backend, prompt, sample, tok.decode, max_tokens=max_tokens, **kw)


def finish(tok, backend, prompt=PROMPT, **kw) -> tuple[list[TokenEvent], Done]:
    events, done = run(gen(tok, backend, prompt, **kw))
    assert done.reason in STOP_REASONS
    assert streamed(events) == done.text  # the stream and the summary agree
    assert all(e.id >= 0 for e in events[:-1])  # id -1 only for a final held-back tail
    return events, done


@pytest.fixture(params=[False, True], ids=["plain", "pipelined"])
def pipelined(request) -> bool:
    return request.param


def test_the_fake_backend_implements_the_protocol():
    assert isinstance(FakeBackend(), Backend)


# --------------------------------------------------------------------------------- EOS


def test_eos_stops_and_its_text_is_not_emitted(tok, pipelined):
    script = tok.encode("Hi there") + [tok.eos_id] + tok.encode("never")
    backend = FakeBackend(script, vocab_size=tok.vocab_size, pipelined=pipelined)
    events, done = finish(tok, backend, eos_ids=[tok.eos_id])
    assert done.reason == "eos"
    assert done.stop_token == tok.eos_id
    assert done.text == "Hi there"
    assert "<|im_end|>" not in done.text and "never" not in done.text
    assert done.tokens == tok.encode("Hi there")  # EOS is not part of the output tokens
    assert [t for t, _ in done.trace] == script[: len(done.tokens) + 1]  # the trace keeps it
    assert [e.id for e in events] == done.tokens


def test_eos_is_never_fed_back_through_the_cache(tok):
    script = tok.encode("abc") + [tok.eos_id]
    backend = FakeBackend(script, vocab_size=tok.vocab_size)
    finish(tok, backend, eos_ids=[tok.eos_id])
    assert backend.stepped == tok.encode("abc")
    assert backend.cache == PROMPT + tok.encode("abc")


@pytest.mark.parametrize("which", ["<|im_end|>", "<|endoftext|>"])
def test_any_of_several_eos_ids_stops(tok, which):
    eos = [tok.special_ids["<|im_end|>"], tok.special_ids["<|endoftext|>"]]
    script = tok.encode("ok") + [tok.special_ids[which]] + tok.encode("more")
    _, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), eos_ids=eos)
    assert (done.reason, done.text, done.stop_token) == ("eos", "ok", tok.special_ids[which])


def test_special_token_that_is_not_eos_is_just_text(tok):
    script = tok.encode("ok") + [tok.special_ids["<|endoftext|>"], tok.eos_id]
    _, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), eos_ids=[tok.eos_id])
    assert done.text == "ok<|endoftext|>"


def test_eos_as_the_first_token_gives_empty_text(tok):
    events, done = finish(tok, FakeBackend([tok.eos_id], vocab_size=tok.vocab_size), eos_ids=[tok.eos_id])
    assert events == []
    assert (done.reason, done.text, done.tokens) == ("eos", "", [])
    assert done.stats.generated_tokens == 1


# ------------------------------------------------------------------------ stop strings


def test_stop_string_split_across_tokens_never_leaks(tok, pipelined):
    script = tok.encode("abEND") + tok.encode("after")
    backend = FakeBackend(script, vocab_size=tok.vocab_size, pipelined=pipelined)
    events, done = finish(tok, backend, stop=["END"])
    assert done.reason == "stop"
    assert done.text == "ab"
    assert [e.text for e in events] == ["a", "b", "", "", ""]  # "E", "N" held back, "D" completes
    assert not any(ch in e.text for e in events for ch in "END")
    assert done.tokens == tok.encode("abEND")  # generation stops at the completing token


def test_stop_ends_generation_without_further_steps(tok):
    backend = FakeBackend(tok.encode("xEND") + tok.encode("y" * 20), vocab_size=tok.vocab_size)
    finish(tok, backend, stop=["END"])
    assert len(backend.stepped) == 3  # x, E, N were fed back; D ended it


def test_partial_stop_match_is_released_in_full(tok):
    script = tok.encode("ENX") + [tok.eos_id]
    events, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), eos_ids=[tok.eos_id], stop=["END"])
    assert done.reason == "eos"
    assert done.text == "ENX"
    assert [e.text for e in events] == ["", "", "ENX"]


@pytest.mark.parametrize("ending", ["eos", "length"])
def test_partial_stop_match_at_the_end_is_released(tok, ending):
    script = tok.encode("abEN") + [tok.eos_id]
    backend = FakeBackend(script, vocab_size=tok.vocab_size)
    max_tokens = 4 if ending == "length" else 100
    events, done = finish(tok, backend, max_tokens=max_tokens, eos_ids=[tok.eos_id], stop=["END"])
    assert done.reason == ending
    assert done.text == "abEN"
    assert events[-1].id == -1 and events[-1].text == "EN"  # the held-back text, no new token


def test_stop_inside_multibyte_pieces(tok):
    script = tok.pieces_to_ids(["hel", "lo E", "ND and more"])
    events, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), stop=["END"])
    assert (done.reason, done.text) == ("stop", "hello ")
    assert [e.text for e in events] == ["hel", "lo ", ""]


def test_stop_made_of_a_multibyte_character(tok):
    script = tok.encode("ok 🙂 no")
    _, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), stop=["🙂"])
    assert (done.reason, done.text) == ("stop", "ok ")


def test_earliest_of_several_stop_strings(tok):
    script = tok.encode("one ### two END")
    _, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), stop=["END", "###"])
    assert (done.reason, done.text) == ("stop", "one ")


# ------------------------------------------------------------------------------- UTF-8


@pytest.mark.parametrize("text", ["á", "ñ", "你", "🙂", "añ你🙂", "¿Qué tal, 世界? 👍🏽 ok"])
def test_utf8_split_into_byte_tokens_streams_whole_characters(tok, text):
    script = tok.encode(text) + [tok.eos_id]
    events, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), eos_ids=[tok.eos_id])
    assert not any(REPLACEMENT in e.text for e in events)
    assert streamed(events) == text == tok.decode(done.tokens)
    for e in events:  # each delta is a whole set of characters of the text
        assert e.text == "" or e.text in text


@pytest.mark.parametrize("seed", range(6))
def test_utf8_random_token_boundaries(tok, seed):
    text = "Año nuevo: 你好, 🙂🙂 — ¡olé!"
    rnd = random.Random(seed)
    pieces = split_bytes(text, [rnd.randint(1, 4) for _ in range(30)])
    script = tok.pieces_to_ids(pieces)
    events, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), max_tokens=len(script))
    assert done.reason == "length"
    assert not any(REPLACEMENT in e.text for e in events)
    assert streamed(events) == text == tok.decode(done.tokens)


def test_utf8_with_stop_string_after_multibyte_text(tok):
    script = tok.encode("你好END更多")
    events, done = finish(tok, FakeBackend(script, vocab_size=tok.vocab_size), stop=["END"])
    assert (done.reason, done.text) == ("stop", "你好")
    assert not any(REPLACEMENT in e.text for e in events)


# ------------------------------------------------------------------------------ limits


def test_max_length_stops_with_reason_length(tok, pipelined):
    backend = FakeBackend(tok.encode("abcdefghij"), vocab_size=tok.vocab_size, pipelined=pipelined)
    events, done = finish(tok, backend, max_tokens=5)
    assert done.reason == "length"
    assert done.text == "abcde"
    assert len(done.tokens) == 5 == done.stats.generated_tokens
    assert len(backend.stepped) == 4  # the 5th token is never fed back


def test_steps_feed_back_each_sampled_token_in_order(tok):
    backend = FakeBackend(tok.encode("hello"), vocab_size=tok.vocab_size)
    _, done = finish(tok, backend, max_tokens=5)
    assert backend.stepped == done.tokens[:-1]
    assert backend.cache == PROMPT + done.tokens[:-1]
    assert [name for name, _ in backend.calls] == ["prefill"] + ["step"] * 4


@pytest.mark.parametrize("prompt_len", [1, 5, 15])
def test_full_context_stops_with_reason_context(tok, pipelined, prompt_len):
    n_ctx = 16
    prompt = tok.encode("p" * prompt_len)
    backend = FakeBackend([], vocab_size=tok.vocab_size, n_ctx=n_ctx, pipelined=pipelined)
    _, done = finish(tok, backend, prompt, max_tokens=1000)  # CacheOverflow would fail the test
    assert done.reason == "context"
    assert backend.max_cache <= n_ctx
    assert prompt_len + len(backend.stepped) <= n_ctx
    assert len(done.tokens) >= n_ctx - prompt_len  # the context is used up, not given up early


def test_context_and_length_limit_together(tok):
    backend = FakeBackend([], vocab_size=tok.vocab_size, n_ctx=16)
    _, done = finish(tok, backend, tok.encode("p" * 10), max_tokens=3)
    assert done.reason == "length"
    assert len(done.tokens) == 3


def test_prompt_longer_than_the_context_is_a_prompt_error(tok):
    backend = FakeBackend([], vocab_size=tok.vocab_size, n_ctx=16)
    with pytest.raises(PromptError, match="16"):
        list(gen(tok, backend, tok.encode("p" * 21)))
    assert backend.calls == []  # refused before any work


def test_prompt_filling_the_whole_context_is_a_prompt_error(tok):
    backend = FakeBackend([], vocab_size=tok.vocab_size, n_ctx=16)
    with pytest.raises(PromptError):
        list(gen(tok, backend, tok.encode("p" * 16)))
    assert backend.calls == []


def test_empty_prompt_is_a_prompt_error(tok):
    backend = FakeBackend([], vocab_size=tok.vocab_size)
    with pytest.raises(PromptError, match="empty"):
        list(gen(tok, backend, []))
    assert backend.calls == []


# ---------------------------------------------------------------------------- prefill


@pytest.mark.parametrize("length, chunk, sizes", [(25, 8, [8, 8, 8, 1]), (16, 8, [8, 8]), (7, 8, [7]), (3, 1, [1, 1, 1])])
def test_prefill_is_chunked_and_covers_the_prompt_in_order(tok, length, chunk, sizes):
    prompt = [(i * 7) % 256 for i in range(length)]
    backend = FakeBackend(tok.encode("ok"), vocab_size=tok.vocab_size, n_ctx=64)
    _, done = finish(tok, backend, prompt, max_tokens=2, prefill_chunk=chunk)
    prefills = backend.kinds("prefill")
    assert [len(p) for p in prefills] == sizes
    assert backend.prefilled == prompt
    first_step = next(i for i, (name, _) in enumerate(backend.calls) if name == "step")
    assert first_step == len(prefills)  # all prefill before any step
    assert done.text == "ok"


def test_sampler_sees_prompt_plus_generated_history(tok):
    seen: list[list[int]] = []

    def recording(history, logits):
        seen.append(list(history))
        return greedy(history, logits)

    recording.needs_history = True
    backend = FakeBackend(tok.encode("xyz"), vocab_size=tok.vocab_size)
    _, done = finish(tok, backend, sample=recording, max_tokens=3)
    assert seen == [PROMPT, PROMPT + done.tokens[:1], PROMPT + done.tokens[:2]]


# ------------------------------------------------------------------------- interrupts


def test_keyboard_interrupt_inside_the_backend_ends_with_interrupted(tok):
    backend = FakeBackend(tok.encode("abcdefgh"), vocab_size=tok.vocab_size, interrupt_at_step=3)
    events, done = finish(tok, backend)
    assert done.reason == "interrupted"
    assert done.text == "abc"  # tokens 0..2 were out before step 3 raised
    assert done.tokens == tok.encode("abc")
    assert done.stats.generated_tokens == 3


def test_keyboard_interrupt_inside_the_backend_releases_held_back_text(tok):
    backend = FakeBackend(tok.encode("abEN"), vocab_size=tok.vocab_size, interrupt_at_step=4)
    _, done = finish(tok, backend, stop=["END"])
    assert (done.reason, done.text) == ("interrupted", "abEN")


def test_keyboard_interrupt_during_prefill_ends_with_no_text(tok):
    backend = FakeBackend(tok.encode("abc"), vocab_size=tok.vocab_size)

    def prefill(ids):
        raise KeyboardInterrupt

    backend.prefill = prefill
    events, done = finish(tok, backend)
    assert events == []
    assert (done.reason, done.text, done.tokens) == ("interrupted", "", [])
    assert done.stats.generated_tokens == 0 and done.stats.decode_tps is None


def test_keyboard_interrupt_thrown_in_at_a_yield(tok):
    backend = FakeBackend(tok.encode("abcdefgh"), vocab_size=tok.vocab_size)
    stream = gen(tok, backend)
    got = [next(stream) for _ in range(3)]
    steps_before = len(backend.stepped)
    rest = [stream.throw(KeyboardInterrupt)] + list(stream)
    done = rest[-1]
    assert isinstance(done, Done)
    assert done.reason == "interrupted"
    assert done.text == "abc" == streamed(got + rest[:-1])
    assert len(backend.stepped) == steps_before  # nothing more was computed
    with pytest.raises(StopIteration):
        next(stream)


def test_keyboard_interrupt_thrown_in_keeps_held_back_stop_prefix(tok):
    stream = gen(tok, FakeBackend(tok.encode("abEND"), vocab_size=tok.vocab_size), stop=["END"])
    got = [next(stream) for _ in range(3)]  # "a", "b", "" (E held back)
    assert streamed(got) == "ab"
    rest = [stream.throw(KeyboardInterrupt)] + list(stream)
    assert rest[-1].reason == "interrupted"
    assert rest[-1].text == "abE" == streamed(got + rest[:-1])


# ------------------------------------------------------------------------------ stats


def test_stats_from_a_fake_clock(tok):
    clock = FakeClock(start=50.0)
    script = tok.encode("hello") + [tok.eos_id]
    backend = FakeBackend(script, vocab_size=tok.vocab_size, clock=clock, prefill_cost=0.5, step_cost=0.1)
    events, done = finish(tok, backend, eos_ids=[tok.eos_id], clock=clock)
    s = done.stats
    assert s.prompt_tokens == len(PROMPT)
    assert s.generated_tokens == 6 == len(done.trace)  # 5 text tokens + EOS
    assert s.prefill_s == pytest.approx(0.5)
    assert s.ttft_s == pytest.approx(0.5)
    assert s.decode_s == pytest.approx(0.5)  # 5 steps of 0.1 s after the first token
    assert s.decode_tps == pytest.approx(10.0)
    assert s.prefill_tps == pytest.approx(len(PROMPT) / 0.5)
    assert [e.time for e in events] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert [t for _, t in done.trace] == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    assert s.load_s is None  # the caller fills it in


def test_stats_with_the_real_clock_are_non_negative(tok):
    backend = FakeBackend(tok.encode("abcdef"), vocab_size=tok.vocab_size)
    _, done = finish(tok, backend, max_tokens=6)
    s = done.stats
    assert s.prompt_tokens == len(PROMPT) and s.generated_tokens == 6
    assert min(s.prefill_s, s.ttft_s, s.decode_s) >= 0
    assert s.ttft_s >= s.prefill_s
    assert s.decode_tps is None or s.decode_tps > 0
    d = s.as_dict()
    assert set(d) >= {"prompt_tokens", "generated_tokens", "prefill_s", "ttft_s", "decode_s", "decode_tps"}


def test_decode_tps_needs_two_tokens():
    assert Stats(generated_tokens=1, decode_s=0.0).decode_tps is None
    assert Stats(generated_tokens=3, decode_s=0.5).decode_tps == pytest.approx(4.0)
    assert Stats(prompt_tokens=10, prefill_s=0.0).prefill_tps is None


# ---------------------------------------------------------------------- both pipelines


@pytest.mark.parametrize("case", ["eos", "stop", "length", "context"])
def test_pipelined_backend_gives_the_same_result(tok, case):
    script = tok.encode("abc END def") + [tok.eos_id]
    kw = {
        "eos": dict(eos_ids=[tok.eos_id]),
        "stop": dict(stop=["END"]),
        "length": dict(max_tokens=6),
        "context": dict(),
    }[case]
    n_ctx = len(PROMPT) + (9 if case == "context" else 40)
    results = []
    for pipelined in (False, True):
        backend = FakeBackend(script, vocab_size=tok.vocab_size, n_ctx=n_ctx, pipelined=pipelined)
        _, done = finish(tok, backend, **kw)
        assert backend.max_cache <= backend.n_ctx
        results.append((done.reason, done.text, done.tokens))
    assert results[0] == results[1]
    assert results[0][0] == case


# ---------------------------------------------------------------------- real samplers


def _flat_backend(tok, pipelined=False):
    vocab = tok.vocab_size
    letters = np.full(vocab, -30.0, dtype=np.float32)
    letters[ord("a") : ord("z") + 1] = 0.0  # 26 equally likely letters
    return FakeBackend(vocab_size=vocab, logits_fn=lambda k: letters, pipelined=pipelined)


def test_seeded_sampling_through_the_loop_is_reproducible(tok):
    def text(seed):
        sample = make_sampler(SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=seed))
        return finish(tok, _flat_backend(tok), sample=sample, max_tokens=40)[1].text

    assert text(7) == text(7)
    assert text(7) != text(8)
    assert set(text(7)) <= set("abcdefghijklmnopqrstuvwxyz")


@pytest.mark.parametrize("penalty", [1.0, 1.3], ids=["no-history", "with-history"])
def test_real_sampler_gives_the_same_tokens_plain_and_pipelined(tok, penalty):
    params = SamplingParams(temperature=0.9, repetition_penalty=penalty, seed=3)
    results = []
    for pipelined in (False, True):
        backend = _flat_backend(tok, pipelined)
        _, done = finish(tok, backend, sample=make_sampler(params), max_tokens=30)
        results.append(done.tokens)
    assert results[0] == results[1]


# ------------------------------------------------------------------ cached prefix


def test_cached_prefix_is_not_prefilled_again(tok, pipelined):
    backend = FakeBackend(tok.pieces_to_ids("ok"), pipelined=pipelined)
    backend.prefill(PROMPT[:5])  # a previous turn left these in the cache
    backend.calls.clear()
    _, done = finish(tok, backend, max_tokens=2, cached=5)
    assert backend.prefilled == PROMPT[5:]
    assert backend.cache[: len(PROMPT)] == PROMPT
    assert (done.stats.prompt_tokens, done.stats.cached_tokens, done.stats.prefilled_tokens) == (len(PROMPT), 5, len(PROMPT) - 5)
    assert done.text == "ok"


def test_cached_prefix_counts_against_the_context(tok):
    backend = FakeBackend(n_ctx=len(PROMPT) + 3)
    backend.prefill(PROMPT[:4])
    _, done = finish(tok, backend, max_tokens=50, cached=4)
    assert done.reason == "context" and backend.max_cache <= backend.n_ctx


@pytest.mark.parametrize("cached", [-1, len(PROMPT), len(PROMPT) + 1])
def test_cached_must_leave_a_new_token(tok, cached):
    with pytest.raises(ValueError, match="must be new"):
        list(gen(tok, FakeBackend(), cached=cached))


class ExtendingBackend(FakeBackend):
    """A backend that can extend its cache without computing logits (as MLX does)."""

    def extend(self, ids):
        self.calls.append(("extend", tuple(ids)))
        self._grow([int(i) for i in ids])


def test_non_final_prefill_chunks_extend_the_cache_without_logits(tok):
    backend = ExtendingBackend(tok.pieces_to_ids("ok"), n_ctx=64)
    prompt = list(range(1, 30))
    backend.prefill(prompt[:3])  # cached from before
    backend.calls.clear()
    _, done = finish(tok, backend, prompt, max_tokens=2, prefill_chunk=10, cached=3)
    assert [(name, arg) for name, arg in backend.calls if name != "step"] == [
        ("extend", tuple(prompt[3:13])), ("extend", tuple(prompt[13:23])), ("prefill", tuple(prompt[23:]))
    ]
    assert backend.cache[: len(prompt)] == prompt and done.text == "ok"
