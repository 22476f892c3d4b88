"""One rank of a distributed-vs-single-process check (run it under mlx.launch, or alone for the baseline).

    python scripts/distributed_check.py FOLDER OUT.npz [--positions 200] [--greedy 64] [--seed 7]

Loads the MLX model folder through mlxgen's MLX backend (sharded when started as a rank),
teacher-forces a fixed random token sequence and records the logits at every position
(a prefill of the first token, then one step per token), then runs the shared loop greedy
for ``--greedy`` tokens and sampled (temperature 0.8, top-p 0.9, ``--seed``) for as many.
Rank 0 writes OUT.npz: logits (positions, vocab), greedy ids, sampled ids, seconds per
step, the control bytes rank 0 broadcast and the group size. Other ranks write nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--positions", type=int, default=200)
    ap.add_argument("--greedy", type=int, default=64)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import mlx.core as mx

    from mlxgen.backends import mlx as mlxb
    from mlxgen.config import Config, LLMConfig, MLXSource
    from mlxgen.loop import generate
    from mlxgen.sampling import SamplingParams, make_sampler

    backend = mlxb.load(Path(args.folder), Config(backend="mlx", llm=LLMConfig(n_ctx=4096, mlx=MLXSource())))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, min(backend.vocab_size, 250), size=args.positions).tolist()
    rows = [np.array(backend.prefill(ids[:1]), dtype=np.float32)]
    t0 = time.perf_counter()
    for tid in ids[1:]:
        rows.append(np.array(backend.step(tid), dtype=np.float32))
    step_s = (time.perf_counter() - t0) / max(1, len(ids) - 1)

    def tokens(params: SamplingParams, seed: int) -> list[int]:
        backend.trim(0)
        sample = make_sampler(params, rng=np.random.default_rng(seed), ops=backend.sampling_ops)
        events = list(generate(backend, ids[:8], sample, lambda t: "", max_tokens=args.greedy, eos_ids=()))
        return [tid for tid, _ in events[-1].trace]

    greedy = tokens(SamplingParams(temperature=0), 0)
    sampled = tokens(SamplingParams(temperature=0.8, top_p=0.9), args.seed)
    ranks = getattr(backend, "ranks", 1)
    sent = getattr(backend, "sent_bytes", 0)
    backend.close()
    np.savez(args.out, logits=np.stack(rows), greedy=np.array(greedy), sampled=np.array(sampled),
             step_s=step_s, sent_bytes=sent, ranks=ranks)
    mx.synchronize()


if __name__ == "__main__":
    main()
