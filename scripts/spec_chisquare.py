"""Speculative sampling is exact: the first tokens' distribution, speculative vs plain, by chi-square.

The heavy version of tests/test_speculative.py: a tiny numpy model (tests/toy_lm.py), the
exact distribution of the first ``--tokens`` generated tokens under plain sampling (from
the sampler's own filtered probabilities), and ``--runs`` seeded speculative runs with a
draft model and with prompt lookup, for several temperature / top-k / top-p / min-p
settings. Also runs plain sampling itself through the same test, as a control.

    python scripts/spec_chisquare.py [--runs 50000] [--tokens 3] [--vocab 6]

Prints one line per case: chi-square statistic, degrees of freedom, p-value, acceptance.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from toy_lm import ToyLM, chi_square, exact_distribution  # noqa: E402

from mlxgen.sampling import SamplingParams, make_sampler  # noqa: E402
from mlxgen.speculative import DraftModel, Lookup, SpecStats, Speculation, speculative_stream  # noqa: E402

SETTINGS = {
    "temp 1.0": dict(temperature=1.0),
    "temp 0.7, top_p 0.9": dict(temperature=0.7, top_p=0.9),
    "temp 1.3, top_k 4, min_p 0.05": dict(temperature=1.3, top_k=4, min_p=0.05),
    "temp 0.5, top_k 3, rep. penalty 1.3": dict(temperature=0.5, top_k=3, repetition_penalty=1.3),
}


def exact(target: ToyLM, prompt, p: SamplingParams, n: int) -> dict:
    return exact_distribution(target, prompt, make_sampler(p).probs, n)


def sample_runs(target, prompt, p, spec, runs, n, seed):
    sample = make_sampler(p, np.random.default_rng(seed))
    counts, stats = {}, SpecStats()
    for _ in range(runs):
        target.trim(0)
        if spec is None:
            from mlxgen.loop import token_stream

            stream = token_stream(target, prompt, sample, n)
        else:
            stream = speculative_stream(target, prompt, sample, n + 1, spec, stats)
        key = tuple(itertools.islice(stream, n))
        stream.close()
        counts[key] = counts.get(key, 0) + 1
    return counts, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50_000)
    ap.add_argument("--tokens", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=6)
    ap.add_argument("--seed", type=int, default=2026)
    args = ap.parse_args()
    target = ToyLM(args.vocab, seed=4)
    cases = {
        "plain (control)": ([2, 3], lambda: None),
        "draft model k=2": ([2, 3], lambda: Speculation(
            DraftModel(ToyLM(args.vocab, seed=7, base=target, mix=0.5), args.vocab, np.random.default_rng(1)), 2)),
        "draft model k=4": ([2, 3], lambda: Speculation(
            DraftModel(ToyLM(args.vocab, seed=8, base=target, mix=0.3), args.vocab, np.random.default_rng(2)), 4)),
        "lookup k=3": ([2, 3, 1, 2, 3, 5, 2, 3], lambda: Speculation(Lookup(max_ngram=2, min_ngram=1), 3)),
    }
    for sname, setting in SETTINGS.items():
        p = SamplingParams(**setting)
        for cname, (prompt, make) in cases.items():
            expected = exact(target, prompt, p, args.tokens)
            counts, stats = sample_runs(target, prompt, p, make(), args.runs, args.tokens, args.seed)
            stat, df, pvalue = chi_square(counts, expected, args.runs)
            acc = f"{stats.accepted}/{stats.drafted} accepted" if stats.drafted else ""
            print(f"{sname:38s} {cname:18s} chi2 {stat:8.1f}  df {df:3d}  p {pvalue:.4f}  {acc}", flush=True)


if __name__ == "__main__":
    main()
