#!/usr/bin/env python3
"""Decode speed of two MLX model folders, interleaved (A B A B ...), as a ratio.

Used to price the GGUF import's choices on the same weights, e.g. float32 vs float16
K-quant scales:

    python scripts/mlx_folders_speed.py A_FOLDER B_FOLDER [--tokens 64] [--rounds 5]

Greedy decoding with mlx-lm's own generate_step from the same prompt; prints t/s of
each (mean of the rounds) and B/A.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def decode_tps(model, prompt, n: int) -> float:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    steps = generate_step(mx.array(prompt), model, max_tokens=n + 1)
    next(steps)  # prefill and the first token: not timed
    t0 = time.perf_counter()
    for _ in steps:
        pass
    mx.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> None:
    from mlx_lm.utils import load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    models = [load_model(args.a)[0], load_model(args.b)[0]]
    prompt = list(range(1, 33))
    for m in models:  # warm-up
        decode_tps(m, prompt, 8)
    runs: list[list[float]] = [[], []]
    for _ in range(args.rounds):
        for i, m in enumerate(models):
            runs[i].append(decode_tps(m, prompt, args.tokens))
    a, b = (statistics.mean(r) for r in runs)
    print(f"A {args.a.name}: {a:.1f} t/s  B {args.b.name}: {b:.1f} t/s  B/A {b / a:.3f}  "
          f"(tg{args.tokens}, {args.rounds} interleaved rounds)")


if __name__ == "__main__":
    main()
