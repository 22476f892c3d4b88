"""The one generation loop every backend runs through.

Two layers, as in mlx-lm: ``token_stream`` turns a backend and a sampler into token
ids (prefill, then one cached step per token); ``generate`` turns those ids into
events: text deltas, EOS and stop handling, limits, timings. It never prints.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence, Union

from mlxgen.backends.base import Backend, Extend, Pipelined, Shift
from mlxgen.backends.base import prefill_chunk as backend_chunk
from mlxgen.errors import PromptError
from mlxgen.sampling import acceptor, hears_tokens
from mlxgen.streaming import IncrementalDecoder, StopMatcher

Sampler = Callable[[Sequence[int], object], object]  # (history, logits) -> token (int or lazy scalar)

STOP_REASONS = ("eos", "stop", "length", "context", "interrupted")
PREFILL_CHUNK = 512  # prompt tokens per prefill call, unless the backend names its own ``prefill_chunk``


@dataclass(frozen=True)
class TokenEvent:
    id: int
    text: str  # text released to the stream at this token ("" while held back)
    time: float  # seconds since the loop started


@dataclass
class Stats:
    prompt_tokens: int = 0  # the whole prompt
    cached_tokens: int = 0  # of those, reused from the KV cache (not prefilled)
    generated_tokens: int = 0  # every sampled token, the EOS that ended generation included
    prefill_s: float = 0.0
    ttft_s: float | None = None  # prefill + first sample; None: no token came (Ctrl-C in the prefill)
    decode_s: float = 0.0  # first token to last token
    load_s: float | None = None  # filled in by the caller, which did the loading
    drafted_tokens: int | None = None  # speculative decoding: tokens the drafter proposed (None: not speculative)
    accepted_tokens: int | None = None  # of those, kept by the target
    draft: str | None = None  # what drafted: "draft model", "lookup"
    context_shifts: int = 0  # times a full context dropped its oldest tokens mid-answer (--context-overflow shift)
    dropped_tokens: int = 0  # positions those shifts dropped

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else None

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens run through the model in this call."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tps(self) -> float | None:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else None

    @property
    def decode_tps(self) -> float | None:
        steps = self.generated_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else None

    def as_dict(self) -> dict:
        spec = {} if self.drafted_tokens is None else {
            "draft": self.draft,
            "drafted_tokens": self.drafted_tokens,
            "accepted_tokens": self.accepted_tokens,
            "acceptance": self.acceptance,
        }
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prefilled_tokens": self.prefilled_tokens,
            "generated_tokens": self.generated_tokens,
            "load_s": self.load_s,
            "prefill_s": self.prefill_s,
            "prefill_tps": self.prefill_tps,
            "ttft_s": self.ttft_s,
            "decode_s": self.decode_s,
            "decode_tps": self.decode_tps,
            "context_shifts": self.context_shifts,
            "dropped_tokens": self.dropped_tokens,
            **spec,
        }


@dataclass(frozen=True)
class Done:
    reason: str  # one of STOP_REASONS
    text: str
    tokens: list[int]
    stats: Stats
    stop_token: int | None = None  # the EOS id that ended generation
    trace: list[tuple[int, float]] = field(default_factory=list)  # (token, seconds) incl. EOS
    from_draft: list[bool] = field(default_factory=list)  # speculative runs: per trace entry, proposed by the draft
    shifts: list[tuple[int, int]] = field(default_factory=list)  # context shifts: (kept, dropped) positions each


def apply_shifts(ids: Sequence[int], shifts: Sequence[tuple[int, int]]) -> list[int]:
    """What the cache holds after ``shifts``: each drops ``dropped`` ids after the first ``kept``."""
    ids = list(ids)
    for kept, dropped in shifts:
        del ids[kept : kept + dropped]
    return ids


Event = Union[TokenEvent, Done]


def fill(backend: Backend, ids: Sequence[int], chunk: int | None = None) -> None:
    """Run ``ids`` through the cache in chunks, no logits wanted (an ``Extend`` backend computes none).

    Chunks of ``chunk`` tokens (else the backend's ``prefill_chunk``, else 512).
    """
    chunk = chunk or backend_chunk(backend, PREFILL_CHUNK)
    put = backend.extend if isinstance(backend, Extend) else backend.prefill
    for start in range(0, len(ids), chunk):
        put(ids[start : start + chunk])


def prefill(backend: Backend, prompt: Sequence[int], cached: int = 0, chunk: int | None = None):
    """Run ``prompt[cached:]`` through the cache in chunks (:func:`fill`); the last position's logits."""
    chunk = chunk or backend_chunk(backend, PREFILL_CHUNK)
    last = range(cached, len(prompt), chunk)[-1]
    fill(backend, prompt[cached:last], chunk)
    return backend.prefill(prompt[last : last + chunk])


class ContextShift:
    """Room in a full cache (``--context-overflow shift``): drop half of what follows the first ``keep``
    positions, as llama.cpp's context shift does, and go on.

    A ``Shift`` backend moves the kept tokens down in place (llama.cpp); any other trims to
    ``keep`` and prefills the kept tokens again (MLX), which is what a fresh run on them computes.
    """

    def __init__(self, backend: Backend, keep: int, chunk: int | None = None) -> None:
        self.backend, self.keep, self.chunk = backend, keep, chunk
        self.shifts: list[tuple[int, int]] = []  # (kept, dropped) per shift

    def make_room(self, held: list[int]) -> None:
        """Before a step: if the cache (holding ``held``) is full, drop the oldest after ``keep``; ``held`` follows."""
        if len(held) < self.backend.n_ctx:
            return
        keep = min(self.keep, len(held) // 2)
        drop = max(1, (len(held) - keep) // 2)
        if not (isinstance(self.backend, Shift) and self.backend.shift(keep, drop)):
            self.backend.trim(keep)
            fill(self.backend, held[keep + drop :], self.chunk)
        del held[keep : keep + drop]
        self.shifts.append((keep, drop))


def token_stream(
    backend: Backend,
    prompt: Sequence[int],
    sample: Sampler,
    limit: int,
    prefill_chunk: int | None = None,
    on_prefilled: Callable[[], None] | None = None,
    cached: int = 0,
    shift: ContextShift | None = None,
) -> Iterator[int]:
    """Yield up to ``limit`` sampled token ids; never step past what ``limit`` needs.

    The backend already holds the first ``cached`` prompt tokens in its KV cache
    (a chat's earlier turns, a bench depth); only the rest is prefilled.
    A ``Pipelined`` backend (MLX) gets the next step queued before the current token
    is handed out, so the device works while Python streams text, unless the sampler
    needs the history (a processor reads it). Every drawn token is given to the
    sampler's ``accept`` (its constraints) before the next draw; with constraints the
    next *step* is still queued first, and only its sampling waits for the token, so
    the constraint's mask is computed while the device runs the step.
    ``shift``: a full cache drops its oldest tokens before a step instead of ending the stream.
    """
    history, held = list(prompt), list(prompt)  # held: what the cache holds (history less what shifts dropped)

    def step(token, tid: int | None = None):
        if shift is not None:
            shift.make_room(held)
        logits = backend.step(token)
        if tid is not None:
            held.append(tid)
        return logits

    accept, constrained = acceptor(sample), hears_tokens(sample)
    token = sample(history, prefill(backend, prompt, cached, prefill_chunk))
    if on_prefilled:
        on_prefilled()
    lookahead = isinstance(backend, Pipelined) and not getattr(sample, "needs_history", True)
    for n in range(1, limit + 1):
        if lookahead and n < limit:
            logits = step(token)
            queued = None if constrained else sample(history, logits)
            backend.schedule(logits if constrained else queued)
        tid = int(token)
        if lookahead and n < limit:
            held.append(tid)
        accept(tid)
        history.append(tid)
        yield tid
        if n == limit:
            return
        if not lookahead:
            token = sample(history, step(tid, tid))
        else:
            token = sample(history, logits) if constrained else queued


def check_prompt(prompt: Sequence[int], n_ctx: int) -> None:
    """A prompt must have a token and leave room in the context for one more."""
    if not prompt:
        raise PromptError("the prompt is empty")
    if len(prompt) >= n_ctx:
        raise PromptError(
            f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}: shorten it or raise llm.n_ctx (--ctx)"
        )


def generate(
    backend: Backend,
    prompt: Sequence[int],
    sample: Sampler,
    decode: Callable[[Sequence[int]], str],
    *,
    max_tokens: int,
    eos_ids: Sequence[int] = (),
    stop: Sequence[str] = (),
    prefill_chunk: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
    cached: int = 0,
    speculation=None,
    overflow: str = "stop",
    keep: int = 0,
) -> Iterator[Event]:
    """Prefill, sample, stream; stop on EOS, a stop string, max_tokens or a full context.

    ``cached``: the backend's KV cache already holds ``prompt[:cached]`` (the caller
    trimmed it to that); at least one prompt token must be new.
    Ctrl-C (KeyboardInterrupt, raised inside or thrown in at a yield) ends the stream
    with reason ``interrupted`` and the text so far.
    ``speculation`` (``mlxgen.speculative.Speculation``): draft tokens and verify them in
    one pass (``speculative_stream``) instead of one step per token; the same output.
    ``overflow``: a full context ends the stream (``"stop"``, reason ``context``) or drops the
    oldest tokens after the first ``keep`` and goes on (``"shift"``; not with speculation).
    """
    check_prompt(prompt, backend.n_ctx)
    if not 0 <= cached < len(prompt):
        raise ValueError(f"cached={cached}: at least one of the {len(prompt)} prompt tokens must be new")
    room = backend.n_ctx - len(prompt)
    eos = frozenset(eos_ids)
    detok, stopper = IncrementalDecoder(decode), StopMatcher(stop)
    stats = Stats(prompt_tokens=len(prompt), cached_tokens=cached)
    pieces: list[str] = []
    tokens: list[int] = []
    trace: list[tuple[int, float]] = []
    reason, stop_token = "length", None
    t0 = clock()

    def prefilled() -> None:
        stats.prefill_s = clock() - t0

    shift = ContextShift(backend, keep, prefill_chunk) if overflow == "shift" and speculation is None else None
    limit = max_tokens if shift else min(max_tokens, room)
    if speculation is None:
        stream, spec = token_stream(backend, prompt, sample, limit, prefill_chunk, prefilled, cached, shift), None
    else:
        from mlxgen.speculative import SpecStats, speculative_stream

        spec = SpecStats()
        stream = speculative_stream(backend, prompt, sample, limit, speculation, spec, prefill_chunk, prefilled, cached)
    try:
        for tid in stream:
            now = clock() - t0
            if not trace:
                stats.ttft_s = now
            trace.append((tid, now))
            if tid in eos:
                reason, stop_token = "eos", tid
                break
            tokens.append(tid)
            text, hit = stopper.feed(detok.add(tid))
            pieces.append(text)
            yield TokenEvent(tid, text, now)
            if hit:
                reason = "stop"
                break
        else:
            reason = "length" if len(tokens) >= max_tokens else "context"
    except KeyboardInterrupt:
        reason = "interrupted"
    finally:
        stream.close()  # a speculative stream rolls its cache back to the tokens handed out
    if reason != "stop":
        tail, hit = stopper.feed(detok.flush())
        tail += "" if hit else stopper.flush()
        reason = "stop" if hit else reason
        if tail:
            pieces.append(tail)
            yield TokenEvent(-1, tail, clock() - t0)  # id -1: held-back text, no new token
    stats.generated_tokens = len(trace)
    if len(trace) > 1:
        stats.decode_s = trace[-1][1] - trace[0][1]
    from_draft: list[bool] = []
    if spec is not None:
        stats.drafted_tokens, stats.accepted_tokens, stats.draft = spec.drafted, spec.accepted, speculation.drafter.name
        from_draft = spec.from_draft[: len(trace)]
    shifts = shift.shifts if shift else []
    stats.context_shifts, stats.dropped_tokens = len(shifts), sum(d for _, d in shifts)
    yield Done(reason, "".join(pieces), tokens, stats, stop_token, trace, from_draft, shifts)
