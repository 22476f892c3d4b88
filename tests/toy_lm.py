"""A tiny numpy language model for speculative-decoding tests, and a chi-square p-value.

``ToyLM(vocab, seed)``: the logits after a history are a fixed random function of its
last two tokens, so the model has a real (context-dependent) distribution, a KV cache
of ids that ``trim`` rolls back, and ``verify`` (every position's logits). Two ToyLMs
with nearby seeds/``mix`` make a target and a draft that mostly agree.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import numpy as np


class ToyLM:
    name = "toy"
    verify_note = None
    device = "cpu (toy)"

    def __init__(self, vocab: int = 6, seed: int = 0, n_ctx: int = 4096, scale: float = 1.5,
                 base: "ToyLM | None" = None, mix: float = 0.0) -> None:
        self.vocab_size, self.n_ctx = vocab, n_ctx
        table = np.random.default_rng(seed).normal(size=(vocab + 1, vocab + 1, vocab)) * scale
        if base is not None:  # a draft: mostly the base model's table, plus some noise
            table = (1 - mix) * base.table + mix * table
        self.table = table.astype(np.float32)
        self.cache: list[int] = []
        self.calls = {"prefill": 0, "step": 0, "verify": 0}

    def _row(self, upto: int) -> np.ndarray:
        a = self.cache[upto - 2] if upto >= 2 else self.vocab_size
        b = self.cache[upto - 1]
        return self.table[a, b]

    def _grow(self, ids: Sequence[int]) -> None:
        assert len(self.cache) + len(ids) <= self.n_ctx, "cache past n_ctx"
        self.cache.extend(int(i) for i in ids)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.calls["prefill"] += 1
        self._grow(ids)
        return self._row(len(self.cache)).copy()

    def step(self, token: int) -> np.ndarray:
        self.calls["step"] += 1
        self._grow([token])
        return self._row(len(self.cache)).copy()

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        self.calls["verify"] += 1
        start = len(self.cache)
        self._grow(ids)
        return np.stack([self._row(start + i + 1) for i in range(len(ids))])

    def trim(self, n_tokens: int) -> None:
        del self.cache[max(0, n_tokens):]

    @property
    def n_cached(self) -> int:
        return len(self.cache)

    def close(self) -> None:
        pass


# ------------------------------------------------------------------ chi-square


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square with df degrees of freedom (regularized upper gamma)."""
    a, z = df / 2.0, x / 2.0
    if z <= 0:
        return 1.0
    if z < a + 1:  # series for the lower gamma
        term = total = 1.0 / a
        n = a
        for _ in range(10_000):
            n += 1
            term *= z / n
            total += term
            if term < total * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-z + a * math.log(z) - math.lgamma(a)))
    b, c, d = z + 1 - a, 1e300, 1 / (z + 1 - a)  # continued fraction (Lentz) for the upper gamma
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return h * math.exp(-z + a * math.log(z) - math.lgamma(a))


def chi_square(counts: dict, expected: dict, n: int, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's statistic, degrees of freedom and p-value; cells expected below
    ``min_expected`` are pooled into one."""
    stat, cells, pool_obs, pool_exp = 0.0, 0, 0, 0.0
    for key, p in expected.items():
        e, o = p * n, counts.get(key, 0)
        if e < min_expected:
            pool_obs, pool_exp = pool_obs + o, pool_exp + e
            continue
        stat += (o - e) ** 2 / e
        cells += 1
    stray = sum(o for key, o in counts.items() if key not in expected)  # outcomes of probability 0
    pool_obs += stray
    if pool_exp > 0:
        stat += (pool_obs - pool_exp) ** 2 / pool_exp
        cells += 1
    elif stray:
        return math.inf, cells - 1, 0.0
    return stat, cells - 1, chi2_sf(stat, cells - 1)


def exact_distribution(target: ToyLM, prompt, probs, n: int = 3) -> dict:
    """P(first n tokens) under plain sampling: ``probs(history, logits)`` (a sampler's own
    distribution) multiplied along every sequence of n tokens the target can give."""
    out = {}
    for seq in itertools.product(range(target.vocab_size), repeat=n):
        target.trim(0)
        logits, total, history = target.prefill(prompt), 1.0, list(prompt)
        for tid in seq:
            total *= float(np.asarray(probs(history, logits))[tid])
            if total == 0:
                break
            history.append(tid)
            logits = target.step(tid)
        if total > 0:
            out[seq] = total
    return out
