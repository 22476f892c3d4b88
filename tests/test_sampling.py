"""Samplers: each piece on hand-made distributions, then the composed sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlxgen.config import load_config
from mlxgen.errors import ConfigError
from mlxgen.sampling import SamplingParams, draw, make_sampler, min_p, repetition_penalty, top_k, top_p

# A hand-made distribution over 5 tokens; sorted: id1 .4, id3 .3, id4 .15, id0 .1, id2 .05
PROBS = np.array([0.10, 0.40, 0.05, 0.30, 0.15])
LOGITS = np.log(PROBS).astype(np.float32)


def kept(logits) -> set[int]:
    return {int(i) for i in np.flatnonzero(np.isfinite(np.asarray(logits)))}


def softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def frequencies(sample, logits, n: int, vocab: int) -> np.ndarray:
    counts = np.bincount([sample([], logits) for _ in range(n)], minlength=vocab)
    return counts / n


# ------------------------------------------------------------------------------ greedy


def test_greedy_is_argmax_on_random_logits():
    rng = np.random.default_rng(0)
    sample = make_sampler(SamplingParams(temperature=0))
    for _ in range(50):
        logits = rng.normal(size=37).astype(np.float32)
        assert sample([], logits) == int(np.argmax(logits))


def test_greedy_ignores_filters_and_randomness():
    # top-k/top-p settings do not change the argmax, and no randomness is involved
    sample = make_sampler(SamplingParams(temperature=0, top_k=3, top_p=0.5, seed=None))
    assert {sample([], LOGITS) for _ in range(20)} == {1}


def test_greedy_returns_a_plain_int():
    token = make_sampler(SamplingParams(temperature=0))([], LOGITS)
    assert type(token) is int


# ------------------------------------------------------------------------- temperature


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_draws_follow_softmax(temperature):
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)
    sample = make_sampler(SamplingParams(temperature=temperature, seed=1234))
    freq = frequencies(sample, logits, 4000, 4)
    expected = softmax(logits / temperature)
    np.testing.assert_allclose(freq, expected, atol=0.03)


def test_higher_temperature_is_flatter():
    logits = np.array([2.0, 1.0, 0.0, -1.0], dtype=np.float32)

    def entropy(p):
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    results = []
    for temperature in (0.3, 1.0, 3.0):
        freq = frequencies(make_sampler(SamplingParams(temperature=temperature, seed=7)), logits, 3000, 4)
        results.append((entropy(freq), freq.max()))
    entropies = [e for e, _ in results]
    peaks = [m for _, m in results]
    assert entropies[0] < entropies[1] < entropies[2]
    assert peaks[0] > peaks[1] > peaks[2]
    assert entropies[2] < math.log(4)  # still not uniform


# ------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("k, expected", [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (4, {0, 1, 3, 4})])
def test_top_k_keeps_the_k_largest(k, expected):
    assert kept(top_k(LOGITS, k)) == expected


@pytest.mark.parametrize("k", [0, 5, 99])
def test_top_k_off_or_larger_than_vocab_keeps_everything(k):
    assert kept(top_k(LOGITS, k)) == set(range(5))


def test_top_k_keeps_logit_values_of_kept_tokens():
    out = np.asarray(top_k(LOGITS, 2))
    np.testing.assert_array_equal(out[[1, 3]], LOGITS[[1, 3]])


def test_sampler_with_top_k_draws_only_the_top_k():
    logits = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=np.float32)  # nearly flat
    sample = make_sampler(SamplingParams(temperature=1.0, top_k=2, seed=3))
    freq = frequencies(sample, logits, 2000, 6)
    assert set(np.flatnonzero(freq)) == {4, 5}
    np.testing.assert_allclose(freq[[4, 5]], softmax([0.4, 0.5]), atol=0.04)


# ------------------------------------------------------------------------------- top-p


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.3, {1}),  # .4 alone reaches .3
        (0.6, {1, 3}),  # .4 + .3 = .7 is the first to reach .6
        (0.8, {1, 3, 4}),  # .85
        (0.9, {0, 1, 3, 4}),  # .95
        (0.99, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, expected):
    assert kept(top_p(LOGITS, p)) == expected


def test_top_p_tiny_p_keeps_the_most_likely_token():
    assert kept(top_p(LOGITS, 1e-6)) == {1}


def test_sampler_with_top_p_renormalises_over_the_kept_set():
    sample = make_sampler(SamplingParams(temperature=1.0, top_p=0.6, seed=11))
    freq = frequencies(sample, LOGITS, 4000, 5)
    assert set(np.flatnonzero(freq)) == {1, 3}
    np.testing.assert_allclose(freq[[1, 3]], [0.4 / 0.7, 0.3 / 0.7], atol=0.03)


# ------------------------------------------------------------------------------- min-p


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, {0, 1, 2, 3, 4}),
        (0.3, {1, 3, 4}),  # >= .12
        (0.5, {1, 3}),  # >= .2
        (0.9, {1}),  # >= .36
    ],
)
def test_min_p_drops_tokens_below_p_times_the_best(p, expected):
    assert kept(min_p(LOGITS, p)) == expected


def test_sampler_with_min_p_never_draws_dropped_tokens():
    sample = make_sampler(SamplingParams(temperature=1.0, min_p=0.5, seed=5))
    freq = frequencies(sample, LOGITS, 2000, 5)
    assert set(np.flatnonzero(freq)) == {1, 3}


# ------------------------------------------------------------------------------ draw


@pytest.mark.parametrize("u, token", [(1e-9, 0), (0.2, 0), (0.3, 1), (0.49, 1), (0.6, 2), (1.0, 2)])
def test_draw_is_inverse_cdf_in_vocab_order(u, token):
    logits = np.log(np.array([0.25, 0.25, 0.5])).astype(np.float32)
    assert draw(logits, u) == token


@pytest.mark.parametrize("u", [1e-12, 0.5, 1.0])
def test_draw_never_picks_a_masked_token(u):
    logits = np.array([-np.inf, 0.0, -np.inf, -np.inf], dtype=np.float32)
    assert draw(logits, u) == 1


# ------------------------------------------------------------------ repetition penalty


def test_repetition_penalty_divides_positive_and_multiplies_negative():
    logits = np.array([2.0, -2.0, 1.0, 3.0], dtype=np.float32)
    out = repetition_penalty(2.0, context=64)([0, 1, 0], logits)  # 0 twice: penalised once
    np.testing.assert_allclose(out, [1.0, -4.0, 1.0, 3.0])
    np.testing.assert_array_equal(logits, [2.0, -2.0, 1.0, 3.0])  # input untouched


def test_repetition_penalty_only_looks_at_the_recent_context():
    logits = np.array([2.0, 2.0, 2.0, -2.0], dtype=np.float32)
    out = repetition_penalty(2.0, context=2)([0, 1, 2, 3], logits)
    np.testing.assert_allclose(out, [2.0, 2.0, 1.0, -4.0])


def test_repetition_penalty_with_empty_history_is_identity():
    logits = np.array([2.0, -2.0], dtype=np.float32)
    np.testing.assert_array_equal(repetition_penalty(1.5, context=4)([], logits), logits)


def test_sampler_applies_repetition_penalty_before_greedy():
    logits = np.array([3.0, 2.0, -1.0], dtype=np.float32)
    plain = make_sampler(SamplingParams(temperature=0))
    penalised = make_sampler(SamplingParams(temperature=0, repetition_penalty=2.0, repetition_context=2))
    assert plain([0], logits) == 0
    assert penalised([0], logits) == 1  # 3.0 / 2 = 1.5 < 2.0
    assert penalised([0, 2, 2], logits) == 0  # token 0 is outside the last 2 tokens
    assert penalised.needs_history and not plain.needs_history


def test_sampler_does_not_mutate_backend_logits():
    logits = np.array([3.0, 2.0, -1.0, 0.5], dtype=np.float32)
    before = logits.copy()
    sample = make_sampler(SamplingParams(temperature=0.8, top_k=2, top_p=0.9, repetition_penalty=1.3, seed=0))
    for _ in range(5):
        sample([0, 1, 2], logits)
    np.testing.assert_array_equal(logits, before)


# ------------------------------------------------------------------------------- seeds


def _sequence(params: SamplingParams, n: int = 200) -> list[int]:
    logits = np.zeros(10, dtype=np.float32)  # uniform: every draw is a coin toss
    sample = make_sampler(params)
    return [sample([], logits) for _ in range(n)]


def test_same_seed_same_sequence():
    params = SamplingParams(temperature=1.0, seed=42)
    assert _sequence(params) == _sequence(params)


def test_different_seed_different_sequence():
    assert _sequence(SamplingParams(temperature=1.0, seed=42)) != _sequence(SamplingParams(temperature=1.0, seed=43))


def test_no_seed_is_fresh_randomness_each_run():
    params = SamplingParams(temperature=1.0, seed=None)
    assert _sequence(params) != _sequence(params)


def test_explicit_rng_is_used():
    params = SamplingParams(temperature=1.0, seed=None)
    logits = np.zeros(10, dtype=np.float32)
    a = make_sampler(params, rng=np.random.default_rng(9))
    b = make_sampler(params, rng=np.random.default_rng(9))
    assert [a([], logits) for _ in range(50)] == [b([], logits) for _ in range(50)]


# -------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "field, value",
    [
        ("temperature", -0.1),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", -0.5),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", -0.1),
        ("min_p", 1.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_context", 0),
    ],
)
def test_bad_arguments_raise_config_error_when_the_sampler_is_built(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        make_sampler(SamplingParams(**{field: value}))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0),
        SamplingParams(top_p=1.0, top_k=0, min_p=0.0),
        SamplingParams(top_p=1e-3, min_p=0.99, repetition_penalty=0.5, repetition_context=1),
    ],
)
def test_edge_values_are_accepted(params):
    token = make_sampler(params)([0], LOGITS)
    assert 0 <= token < 5


@pytest.mark.parametrize("temperature", [1e-7, 1e-320])
def test_a_temperature_too_small_to_divide_by_is_refused(temperature):
    with pytest.raises(ConfigError, match="temperature"):
        make_sampler(SamplingParams(temperature=temperature))
    with pytest.raises(ConfigError, match=r"inference.temperature: .* 0 \(greedy\) or a finite number >= 1e-6"):
        load_config(None, {"inference.temperature": temperature})


@pytest.mark.parametrize(
    "field, value",
    [("temperature", float("inf")), ("temperature", float("nan")), ("temperature", "0.2"), ("top_k", 2.5),
     ("top_k", True), ("seed", -1), ("seed", "abc"), ("repetition_context", 2.5), ("repetition_penalty", float("inf"))],
)
def test_one_rule_refuses_bad_types_and_values_everywhere(field, value):
    with pytest.raises(ConfigError, match=f"^{field}: "):
        make_sampler(SamplingParams(**{field: value}))
    if not isinstance(value, str):  # the config loader checks types itself first
        with pytest.raises(ConfigError, match=f"^inference.{field}: "):
            load_config(None, {f"inference.{field}": value})
