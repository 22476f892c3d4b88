"""Applying llguidance's bitmask to logits, three ways, on numpy and MLX (interleaved, medians).

    python scripts/mask_apply_speed.py

table:      logits + table[mask bytes]  (a 256 x 8 table of {0, -inf}; what mlxgen.constraint uses)
unpackbits: numpy's unpackbits, then where(bits, logits, -inf)
shifts:     the mask as uint32 words, (w >> arange(32)) & 1, then where   (MLX only)
"""

from __future__ import annotations

import statistics
import time

import numpy as np

V, REPEAT = 49152, 300


def main() -> None:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=V // 8, dtype=np.uint8).tobytes()
    logits = rng.normal(size=V).astype(np.float32)
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    table = np.where(bits == 1, 0.0, -np.inf).astype(np.float32)
    ways = {
        "numpy table": lambda: logits + table[np.frombuffer(raw, np.uint8)].reshape(-1)[:V],
        "numpy unpackbits": lambda: np.where(np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:V] == 1,
                                             logits, -np.inf),
    }
    try:
        import mlx.core as mx

        lx, mtable, shifts = mx.array(logits), mx.array(table), mx.arange(32, dtype=mx.uint32)

        def mx_table():
            return mx.eval(lx + mx.take(mtable, mx.array(np.frombuffer(raw, np.uint8)), axis=0).reshape(-1)[:V])

        def mx_unpack():
            m = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:V].astype(bool)
            return mx.eval(mx.where(mx.array(m), lx, -mx.inf))

        def mx_shifts():
            w = mx.array(np.frombuffer(raw, np.uint32))
            return mx.eval(mx.where(((w[:, None] >> shifts) & 1).reshape(-1)[:V].astype(mx.bool_), lx, -mx.inf))

        ways.update({"mlx table": mx_table, "mlx unpackbits": mx_unpack, "mlx shifts": mx_shifts})
    except ImportError:
        pass
    times = {k: [] for k in ways}
    for i in range(REPEAT):
        for name, f in ways.items() if i % 2 else reversed(list(ways.items())):
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    for name, t in times.items():
        print(f"{name:<18} median {statistics.median(t) * 1e6:7.1f} µs")


if __name__ == "__main__":
    main()
