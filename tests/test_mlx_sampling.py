"""The one sampler definition on numpy and on mx arrays: same token, same random state."""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from mlxgen.backends.mlx_sampling import MLX  # noqa: E402
from mlxgen.sampling import NUMPY, SamplingParams, draw, make_sampler, top_k, top_p  # noqa: E402

PARAMS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0, repetition_penalty=1.3),
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.7, top_k=50, top_p=0.9),
    SamplingParams(temperature=0.8, top_k=1),
    SamplingParams(temperature=1.2, top_p=0.3),
    SamplingParams(temperature=1.0, min_p=0.1),
    SamplingParams(temperature=0.6, top_k=20, top_p=0.95, min_p=0.02, repetition_penalty=1.2, repetition_context=8),
    SamplingParams(temperature=2.0, top_p=0.999),
]


def _logits(rng: np.random.Generator, vocab: int, kind: int) -> np.ndarray:
    if kind == 0:  # smooth
        return (rng.standard_normal(vocab) * 2).astype(np.float32)
    if kind == 1:  # peaked, like a confident model
        x = (rng.standard_normal(vocab) * 3).astype(np.float32)
        x[rng.integers(vocab)] += 15
        return x
    x = rng.standard_normal(vocab).astype(np.float32)  # with ties and -inf (banned) entries
    x[rng.integers(0, vocab, 20)] = 1.5
    x[rng.integers(0, vocab, 5)] = -np.inf
    return x


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}-m{p.min_p}-r{p.repetition_penalty}")
def test_numpy_and_mlx_pick_the_same_token(params: SamplingParams) -> None:
    data = np.random.default_rng(1234)
    picks = set()
    for seed in range(40):
        vocab = int(data.choice([50, 1000, 49152]))
        a = make_sampler(params, np.random.default_rng(seed))
        b = make_sampler(params, np.random.default_rng(seed), ops=MLX)
        assert a.needs_history == b.needs_history == (params.repetition_penalty != 1.0)
        history = [int(i) for i in data.integers(0, vocab, 40)]
        for step in range(4):
            logits = _logits(data, vocab, (seed + step) % 3)
            ta = a(history, logits)
            tb = b(history, mx.array(logits))
            assert isinstance(ta, int) and isinstance(tb, mx.array)  # the mx token stays lazy
            assert ta == int(tb), f"seed {seed} step {step}: numpy {ta} != mlx {int(tb)}"
            picks.add(ta)
            history.append(ta)
    if params.temperature > 0 and params.top_k != 1:
        assert len(picks) > 20  # the draws really vary: the test could fail


def test_filters_agree_elementwise() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        x = (rng.standard_normal(500) * 2).astype(np.float32)
        k = int(rng.integers(1, 500))
        p = float(rng.uniform(0.05, 0.99))
        np.testing.assert_array_equal(top_k(x, k, NUMPY), np.array(top_k(mx.array(x), k, MLX)))
        np.testing.assert_array_equal(top_p(x, p, NUMPY), np.array(top_p(mx.array(x), p, MLX)))
        u = float(1.0 - rng.random())
        assert draw(x, u, NUMPY) == int(draw(mx.array(x), u, MLX))


def test_mlx_sampler_accepts_half_precision_logits() -> None:
    x = np.linspace(-3, 3, 300).astype(np.float16)
    sample = make_sampler(SamplingParams(temperature=0), ops=MLX)
    assert int(sample([], mx.array(x))) == 299
    sample = make_sampler(SamplingParams(temperature=0.5, seed=3), ops=MLX)
    ref = make_sampler(SamplingParams(temperature=0.5, seed=3))
    assert int(sample([], mx.array(x))) == ref([], x.astype(np.float32))
