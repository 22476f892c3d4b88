"""Speculative decoding on a tiny numpy model: greedy is token-identical, sampling is exact.

The heavier version (more runs, more settings) is scripts/spec_chisquare.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import FakeBackend, FakeTokenizer, run
import toy_lm
from toy_lm import ToyLM, chi_square
from mlxgen.errors import ModelError
from mlxgen.loop import generate
from mlxgen.sampling import SamplingParams, make_sampler
from mlxgen.speculative import DraftModel, Lookup, SpecStats, Speculation, speculative_stream

TOK = FakeTokenizer()


def params(**kw) -> SamplingParams:
    return SamplingParams(**{"temperature": 0.0, **kw})


def draft_for(target: ToyLM, mix: float = 0.3, seed: int = 99):
    model = ToyLM(target.vocab_size, seed=seed, base=target, mix=mix)
    return DraftModel(model, target.vocab_size, np.random.default_rng(seed))


def tokens(backend, prompt, sample, n, speculation=None, eos=()):
    backend.trim(0)
    _, done = run(generate(backend, prompt, sample, TOK.decode, max_tokens=n, eos_ids=eos, speculation=speculation))
    return done


PROMPTS = [[1, 2, 3], [0, 0, 1, 5, 2], [4], [3, 1, 4, 1, 5, 2, 2, 5], [5, 4, 3, 2, 1, 0]]


@pytest.mark.parametrize("kind", ["lookup", "draft"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_speculation_is_token_identical(kind, k):
    target = ToyLM(6, seed=1)
    for prompt in PROMPTS:
        plain = tokens(target, prompt, make_sampler(params()), 128)
        cache_after_plain = list(target.cache)
        drafter = Lookup() if kind == "lookup" else draft_for(target)
        spec = tokens(target, prompt, make_sampler(params()), 128, Speculation(drafter, k))
        assert spec.tokens == plain.tokens
        assert target.cache == cache_after_plain  # the same cache state as plain decoding
        assert spec.stats.drafted_tokens > 0 and 0 <= spec.stats.accepted_tokens <= spec.stats.drafted_tokens
        assert sum(spec.from_draft) == spec.stats.accepted_tokens
        assert len(spec.from_draft) == len(spec.trace)


def test_greedy_with_a_history_processor_and_adaptive_length():
    target = ToyLM(6, seed=2)
    p = params(repetition_penalty=1.3)
    for prompt in PROMPTS:
        plain = tokens(target, prompt, make_sampler(p), 64)
        drafter = DraftModel(ToyLM(6, seed=5, base=target, mix=0.2), 6)
        spec = tokens(target, prompt, make_sampler(p), 64, Speculation(drafter, 6, adaptive=True))
        assert spec.tokens == plain.tokens


def test_eos_mid_round_leaves_the_cache_as_plain_decoding_does():
    target = ToyLM(6, seed=1)
    prompt = [1, 2, 3]
    plain = tokens(target, prompt, make_sampler(params()), 40)
    eos = plain.tokens[7]
    first = plain.tokens.index(eos)
    stopped = tokens(target, prompt, make_sampler(params()), 40, eos=[eos])
    cache_plain = list(target.cache)
    spec = tokens(target, prompt, make_sampler(params()), 40, Speculation(Lookup(), 8), eos=[eos])
    assert spec.reason == stopped.reason == "eos" and spec.tokens == stopped.tokens == plain.tokens[:first]
    assert target.cache == cache_plain


def test_never_past_max_tokens_or_the_context():
    for n in range(1, 12):
        target = ToyLM(6, seed=3, n_ctx=10)
        spec = tokens(target, [1, 2], make_sampler(params()), n, Speculation(Lookup(), 4))
        assert len(spec.trace) == min(n, 8)  # the ToyLM asserts the cache never passes n_ctx


def test_a_backend_without_verify_refuses_in_one_line():
    backend = FakeBackend([1, 2, 3])
    with pytest.raises(ModelError, match="cannot verify several positions"):
        run(generate(backend, [1], make_sampler(params()), TOK.decode, max_tokens=4,
                     speculation=Speculation(Lookup(), 4)))


def test_lookup_proposes_what_followed_the_latest_match():
    assert Lookup().propose([7, 8, 9, 1, 7, 8, 9, 2, 5, 7, 8, 9], 2) == ([2, 5], None)
    assert Lookup().propose([1, 2, 3], 4) == ([], None)
    assert Lookup().propose([4, 1, 2, 4], 3) == ([], None)  # no bigram matches
    assert Lookup(min_ngram=1).propose([4, 1, 2, 4], 3) == ([1, 2, 4], None)


# ------------------------------------------------------------------ sampling is exact


def exact_distribution(target: ToyLM, prompt, p: SamplingParams, n: int = 3) -> dict:
    """P(first n tokens) under plain sampling, from the sampler's own distribution."""
    return toy_lm.exact_distribution(target, prompt, make_sampler(p).probs, n)


def empirical(target: ToyLM, prompt, p: SamplingParams, drafter_fn, runs: int, seed: int) -> dict:
    sample = make_sampler(p, np.random.default_rng(seed))
    counts: dict = {}
    spec = Speculation(drafter_fn(), 2)
    for _ in range(runs):
        target.trim(0)
        stream = speculative_stream(target, prompt, sample, 4, spec, SpecStats())
        key = tuple(itertools.islice(stream, 3))
        stream.close()
        counts[key] = counts.get(key, 0) + 1
    return counts


SETTINGS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.3, top_k=4, min_p=0.05),
]


@pytest.mark.parametrize("kind", ["draft", "lookup"])
@pytest.mark.parametrize("setting", SETTINGS[:2], ids=["t1", "t0.7-top_p0.9"])
def test_speculative_sampling_matches_plain_sampling(kind, setting):
    """20,000 seeded runs: the first 3 tokens are distributed as plain sampling's (chi-square)."""
    target, prompt = ToyLM(6, seed=4), [2, 3]
    p = SamplingParams(seed=None, **setting)
    expected = exact_distribution(target, prompt, p)
    if kind == "draft":
        def drafter_fn():
            return draft_for(target, mix=0.5, seed=7)
    else:
        def drafter_fn():
            return Lookup(max_ngram=1, min_ngram=1)
        prompt = [2, 3, 1, 2, 3, 5, 2]  # lookup has matches to propose
        expected = exact_distribution(target, prompt, p)
    runs = 20_000
    counts = empirical(target, prompt, p, drafter_fn, runs, seed=11)
    stat, df, pvalue = chi_square(counts, expected, runs)
    assert pvalue > 0.01, f"chi-square {stat:.1f} on {df} df, p = {pvalue:.4f}"


def test_a_wrong_acceptance_rule_fails_the_chi_square(monkeypatch):
    """The test has teeth: 'accept when the target's own sample equals the draft' with the
    draft's sample reused is biased towards the draft, and the chi-square sees it."""
    import mlxgen.speculative as spec_mod

    def biased(sample, history, rows, drafts, q, vocab):
        for j, d in enumerate(drafts):
            yield j, d, True  # always accept the draft
        yield len(drafts), int(sample(history, rows[len(drafts)])), False

    monkeypatch.setattr(spec_mod, "_decide", biased)
    target, prompt = ToyLM(6, seed=4), [2, 3]
    p = SamplingParams(temperature=1.0)
    expected = exact_distribution(target, prompt, p)
    counts = empirical(target, prompt, p, lambda: draft_for(target, mix=0.5, seed=7), 20_000, 11)
    assert chi_square(counts, expected, 20_000)[2] < 1e-6


def test_options_reach_the_session_config():
    from mlxgen.cli import resolve_config

    cfg = resolve_config({"lookup": 5, "adaptive_draft": True})
    assert cfg.inference.lookup == 5 and cfg.inference.adaptive_draft and cfg.inference.draft is None
    cfg = resolve_config({"draft": "d.gguf", "draft_tokens": 6})
    assert cfg.inference.draft == "d.gguf" and cfg.inference.draft_tokens == 6
