"""Sampling: small pure functions, composed once per run.

    processors (history, logits) -> logits     repetition penalty; constraints (grammar, JSON
                                                schema) also hear each drawn token: ``Constraint``
    temperature                                 0 means argmax
    filters    logits -> logits                 top-k, top-p, min-p (masking with -inf)
    draw       logits, u -> token               inverse CDF in vocabulary order

Every function is written against a tiny array-ops namespace (``NUMPY``), so the
MLX backend can run the very same definitions on ``mx.array`` logits with its own
ops (``mlxgen.backends.mlx_sampling``). The random generator is passed in, never
global; the draw takes one uniform number ``u`` from it, so both array kinds pick
the same token for the same logits and the same random state.

Arguments are checked once, in :func:`make_sampler`, never per token.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from mlxgen import settings

Logits = Any  # np.ndarray or mx.array, shape (vocab,)


class Processor(Protocol):
    """``(history, logits) -> logits``: the one extension point of sampling.

    A processor may set ``needs_history = False`` when it ignores ``history`` (a logit
    bias, banned tokens): the MLX loop then keeps queueing step n+1 before token n
    reaches Python. Without the attribute a processor is assumed to need it.
    """

    def __call__(self, history: Sequence[int], logits: Logits) -> Logits: ...


def needs_history(processor: Any) -> bool:
    return bool(getattr(processor, "needs_history", True))


@runtime_checkable
class Constraint(Protocol):
    """A processor that must hear every token drawn after it masked (a grammar, a JSON schema).

    ``__call__(history, logits)`` masks what the constraint forbids at the next position;
    ``accept(token)`` is told the token the sampler drew there (the loop calls it, through
    the sampler's own ``accept``, once per drawn token, the EOS included);
    ``rollback(n)`` forgets the last ``n`` accepted tokens (speculative decoding rejects
    drafts). A constraint reads no history (``needs_history = False``): on MLX the loop
    still queues step n+1 before token n reaches Python, and computes the mask for n+1
    while the device runs it (``mlxgen.loop.token_stream``).
    """

    needs_history: bool

    def __call__(self, history: Sequence[int], logits: Logits) -> Logits: ...

    def accept(self, token: int) -> None: ...

    def rollback(self, n: int) -> None: ...


def constraints(processors: Iterable[Any]) -> tuple[Constraint, ...]:
    return tuple(p for p in processors if isinstance(p, Constraint))


MIN_TEMPERATURE = 1e-6  # below this, logits / temperature overflows float32: use 0 (greedy)


@dataclass(frozen=True)
class SamplingParams(settings.SamplingFields):
    """The settings of ``mlxgen.settings.TABLE``, as the sampler takes them."""

    def validate(self) -> None:
        settings.check(settings.values(self))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _np_put(x: np.ndarray, idx: Sequence[int], values: np.ndarray) -> np.ndarray:
    out = np.array(x, copy=True)
    out[np.asarray(idx, dtype=np.int64)] = values
    return out


NUMPY = types.SimpleNamespace(
    name="numpy",
    asarray=lambda x: np.asarray(x, dtype=np.float32),
    softmax=_np_softmax,
    sort_desc=lambda x: -np.sort(-x),
    kth_largest=lambda x, k: np.partition(x, x.shape[-1] - k)[x.shape[-1] - k],
    cumsum=np.cumsum,
    where=np.where,
    argmax=lambda x: int(np.argmax(x)),
    count_below=lambda x, t: int(np.count_nonzero(x < t)),
    item=lambda x: x,  # a float32 scalar, as on MLX (NEP 50: u * it stays float32)
    index=lambda x, i: x[i],  # x[i] where i may be a (lazy) scalar
    minimum=min,
    maximum=max,
    take=lambda x, idx: x[np.asarray(idx, dtype=np.int64)],
    put=_np_put,
    neg_inf=float("-inf"),
)


# ----------------------------------------------------------------- the pieces


def repetition_penalty(penalty: float, context: int, ops: Any = NUMPY) -> Processor:
    """CTRL-style penalty (as llama.cpp and transformers): divide positive logits, multiply negative."""

    def process(history: Sequence[int], logits: Logits) -> Logits:
        recent = sorted(set(history[-context:]))
        if not recent:
            return logits
        picked = ops.take(logits, recent)
        penalised = ops.where(picked > 0, picked / penalty, picked * penalty)
        return ops.put(logits, recent, penalised)

    process.name = f"repetition_penalty {penalty:g} over the last {context} tokens"
    return process


def top_k(logits: Logits, k: int, ops: Any = NUMPY) -> Logits:
    """Keep the k largest logits (ties with the k-th are kept too)."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = ops.kth_largest(logits, k)
    return ops.where(logits < kth, ops.neg_inf, logits)


def top_p(logits: Logits, p: float, ops: Any = NUMPY) -> Logits:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    probs = ops.softmax(logits)
    desc = ops.sort_desc(probs)
    before = ops.cumsum(desc) - desc  # mass strictly above each sorted token
    n_keep = ops.maximum(ops.count_below(before, p), 1)
    threshold = ops.index(desc, n_keep - 1)
    return ops.where(probs < threshold, ops.neg_inf, logits)


def min_p(logits: Logits, p: float, ops: Any = NUMPY) -> Logits:
    """Drop tokens whose probability is below p times the most likely one's."""
    if p <= 0.0:
        return logits
    probs = ops.softmax(logits)
    return ops.where(probs < p * probs.max(), ops.neg_inf, logits)


def draw(logits: Logits, u: float, ops: Any = NUMPY) -> int:
    """Inverse-CDF draw in vocabulary order with u in (0, 1]."""
    return draw_probs(ops.softmax(logits), u, ops)


def draw_probs(weights: Logits, u: float, ops: Any = NUMPY) -> int:
    """Inverse-CDF draw from non-negative weights (need not sum to 1) with u in (0, 1].

    Speculative sampling draws from the residual max(0, p - q) with it.
    """
    cdf = ops.cumsum(weights)
    target = u * ops.item(cdf[-1])
    return ops.minimum(ops.count_below(cdf, target), weights.shape[-1] - 1)


def filtered(logits: Logits, params: SamplingParams, ops: Any = NUMPY) -> Logits:
    """Temperature, then top-k, top-p and min-p (masked with -inf): what the draw sees (not greedy)."""
    logits = logits / params.temperature
    logits = top_k(logits, params.top_k, ops)
    logits = top_p(logits, params.top_p, ops)
    return min_p(logits, params.min_p, ops)


# ------------------------------------------------------------------ composition


def make_processors(params: SamplingParams, ops: Any = NUMPY, extra: Iterable[Processor] = ()) -> list[Processor]:
    """The processor chain a run uses: the settings' own (repetition penalty), then ``extra`` in order."""
    procs: list[Processor] = []
    if params.repetition_penalty != 1.0:
        procs.append(repetition_penalty(params.repetition_penalty, params.repetition_context, ops))
    return procs + list(extra)


def make_sampler(
    params: SamplingParams,
    rng: np.random.Generator | None = None,
    ops: Any = NUMPY,
    processors: Iterable[Processor] = (),
) -> Callable[[Sequence[int], Logits], int]:
    """Compose processors, temperature, filters and draw once; return ``sample(history, logits)``.

    ``processors``: the caller's own, run after the settings' (a constraint, a logit bias).
    """
    params.validate()
    rng = rng if rng is not None else np.random.default_rng(params.seed)
    chain = make_processors(params, ops, processors)

    def processed(history: Sequence[int], logits: Logits) -> Logits:
        logits = ops.asarray(logits)
        for proc in chain:
            logits = proc(history, logits)
        return logits

    def sample(history: Sequence[int], logits: Logits) -> int:
        logits = processed(history, logits)
        if params.greedy:
            return ops.argmax(logits)
        return draw(filtered(logits, params, ops), 1.0 - rng.random(), ops)

    listeners = constraints(chain)

    def accept(token: int) -> None:
        for c in listeners:
            c.accept(token)

    def rollback(n: int) -> None:
        for c in listeners:
            c.rollback(n)

    def probs(history: Sequence[int], logits: Logits) -> Logits:
        """The distribution ``sample`` draws from: processors, temperature, filters, softmax (not greedy)."""
        if params.greedy:
            raise ValueError("greedy sampling has no distribution to draw from; compare argmax tokens")
        return ops.softmax(filtered(processed(history, logits), params, ops))

    sample.probs = probs  # speculative sampling needs p and q, not only a drawn token
    sample.params, sample.rng, sample.ops = params, rng, ops
    sample.processors = tuple(chain)
    sample.needs_history = any(needs_history(p) for p in chain)  # False: the loop may run one step ahead (MLX)
    sample.constraints = listeners  # non-empty: the loop must call accept(token) before the next sample
    sample.accept, sample.rollback = accept, rollback
    return sample


def _ignore(token: int) -> None:
    pass


def acceptor(sample: Any) -> Callable[[int], None]:
    """What the loop calls with each drawn token: the sampler's ``accept`` (a no-op for a bare function)."""
    return getattr(sample, "accept", None) or _ignore


def hears_tokens(sample: Any) -> bool:
    """The sampler has constraints: the next draw needs the last token accepted first."""
    return bool(getattr(sample, "constraints", ()))
