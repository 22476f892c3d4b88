"""What a quantized KV cache (--kv-bits) costs and saves, per backend: bytes, agreement, speed.

    python scripts/kv_quant_eval.py --backend llama.cpp [--positions 1024] [--text FILE]
                                    [--bits 16,8,4] [--depths 2048,8192] [--decode 32 --reps 3]

For each setting (16 = the full-precision cache) it reports:

* **KV bytes** at each depth. llama.cpp: what it allocates for a context of that many
  positions (``kv_cache()``: the same figure as llama.cpp's own "llama_kv_cache: size" log
  line). MLX: the bytes mlx-lm's own cache objects hold after that many positions were
  written into them: random K/V of the model's shapes through ``update_and_fetch`` (no
  forward pass), checked against a real prefill at the first depth that fits ``--check``.
* **Teacher-forced top-1 agreement** with the full-precision cache: the text's tokens go
  through ``verify`` in chunks of ``--chunk`` (every position's logits, the cache holding
  everything before it), and the argmax at each position is compared.
  llama.cpp runs with flash attention on (mlxgen's default; a quantized V cache needs it),
  and ``16-nofa`` (full precision, flash attention off) shows what flash attention alone moves.
* **Decode tok/s** after ``--decode-depth`` cached positions, the settings interleaved
  (A B C C B A …), the median of ``--reps`` runs of ``--decode`` greedy steps (the cache
  trimmed back to that depth between runs).

Shared-box numbers: compare the settings with each other, not with other runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


def open_backend(name: str, bits: int, n_ctx: int, threads: int, no_flash: bool = False):
    from mlxgen import session
    from mlxgen.config import load_config

    cfg = load_config(None, {"backend": name, "llm.n_ctx": n_ctx, "llm.n_threads": threads,
                             "llm.kv_bits": None if bits == 16 else bits, "inference.raw": True,
                             "llm.flash_attn": not no_flash})
    return session.open_session(cfg, session.plan(cfg).choice)


def to_numpy(x):
    import numpy as np

    return np.asarray(x, dtype=np.float32)


def agreement(sessions: dict, ids: list[int], chunk: int, bases=("16", "16-nofa")) -> dict:
    """Teacher forcing, every setting chunk by chunk: top-1 agreement with each base and mean KL(base || setting)."""
    import numpy as np

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    for sess in sessions.values():
        sess.backend.trim(0)
    bases = [b for b in bases if b in sessions]
    same = {b: {n: 0 for n in sessions} for b in bases}
    kl = {b: {n: 0.0 for n in sessions} for b in bases}
    t0 = time.perf_counter()
    for start in range(0, len(ids), chunk):
        rows = {n: log_softmax(to_numpy(s.backend.verify(ids[start : start + chunk]))) for n, s in sessions.items()}
        for base in bases:
            ref = rows[base]
            for n, r in rows.items():
                same[base][n] += int((r.argmax(-1) == ref.argmax(-1)).sum())
                kl[base][n] += float((np.exp(ref) * (ref - r)).sum(-1).sum())
        print(f"{start + chunk} positions ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return {f"vs {b}": {"top1": {n: v / len(ids) for n, v in same[b].items()},
                        "mean_kl": {n: v / len(ids) for n, v in kl[b].items()}} for b in bases}


def mlx_bytes(backend, depth: int) -> int:
    """Bytes of mlx-lm's cache objects after ``depth`` positions of random K/V of this model's shapes."""
    import mlx.core as mx

    cache = backend._new_cache()
    probe = backend._new_cache()  # one real token through the model: each layer's K/V shape
    backend.model(mx.array([[1]]), cache=probe)
    total = 0
    for c, p in zip(cache, probe):
        if hasattr(p, "bits"):  # quantized: the packed shapes, the scales' dtype (what the model computes in)
            _, heads, _, packed = p.keys[0].shape
            kdim, vdim, dtype = packed * 32 // p.bits, p.values[0].shape[-1] * 32 // p.bits, p.keys[1].dtype
        else:
            _, heads, _, kdim = p.keys.shape
            vdim, dtype = p.values.shape[-1], p.keys.dtype
        done = 0
        while done < depth:
            n = min(512, depth - done)
            c.update_and_fetch(mx.random.normal((1, heads, n, kdim)).astype(dtype),
                               mx.random.normal((1, heads, n, vdim)).astype(dtype))
            done += n
        mx.eval(c.state if not hasattr(c, "bits") else [c.keys, c.values])
        total += int(c.nbytes)
    return total


def decode_tps(backend, ids: list[int], depth: int, n: int) -> float:
    """Greedy steps after ``depth`` cached positions (the agreement pass left them in the cache)."""
    from mlxgen.backends.base import n_cached
    from mlxgen.loop import prefill

    if n_cached(backend) >= depth:
        backend.trim(depth)
        tok = ids[depth]
    else:
        backend.trim(0)
        tok = int(to_numpy(prefill(backend, ids[:depth], 0)).argmax())
    if hasattr(backend, "synchronize"):
        backend.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        tok = int(to_numpy(backend.step(tok)).argmax())
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, choices=["llama.cpp", "mlx"])
    p.add_argument("--text", default=DEFAULT_TEXT)
    p.add_argument("--positions", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--bits", default="16,8,4")
    p.add_argument("--depths", default="2048,8192")
    p.add_argument("--check", type=int, default=300, help="MLX: check the byte figure against a real prefill this deep")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--decode-depth", type=int, default=1000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip", default="", help="comma list of parts to skip: bytes,agree,speed")
    p.add_argument("--json", dest="as_json", action="store_true")
    args = p.parse_args()
    from mlxgen import hardware

    hardware.gather_facts()  # llama_cpp before numpy (see cli.probe_hardware)
    skip = set(filter(None, args.skip.split(",")))
    bits = [int(b) for b in args.bits.split(",")]
    depths = [int(d) for d in args.depths.split(",")]
    n_ctx = max(args.positions + args.chunk, args.decode_depth + args.decode + 8)
    settings = [(b, False) for b in bits]
    if args.backend == "llama.cpp" and 16 in bits and any(b != 16 for b in bits):
        settings.insert(1, (16, True))
    label = lambda s: f"{s[0]}{'-nofa' if s[1] else ''}"  # noqa: E731
    sessions = {label(s): open_backend(args.backend, s[0], n_ctx, args.threads, s[1]) for s in settings}
    out = {"backend": args.backend, "text": args.text, "positions": args.positions, "settings": list(sessions)}
    first = next(iter(sessions.values()))
    ids = first.tokenizer.encode(Path(args.text).read_text(encoding="utf-8"))[: args.positions]
    assert len(ids) == args.positions, f"the text has only {len(ids)} tokens"

    if "bytes" not in skip:
        out["kv_bytes"] = {}
        for name, sess in sessions.items():
            if "fa" in name:
                continue
            row = {}
            for depth in depths:
                if args.backend == "llama.cpp":
                    b = open_backend("llama.cpp", int(name), depth, args.threads)
                    row[depth] = b.backend.kv_cache()["bytes"]
                    b.close()
                else:
                    row[depth] = mlx_bytes(sess.backend, depth)
            if args.backend == "mlx" and args.check:  # the synthetic figure against a real prefill
                from mlxgen.loop import prefill

                sess.backend.trim(0)
                prefill(sess.backend, ids[: args.check], 0)
                real, synthetic = sess.backend.kv_cache()["bytes"], mlx_bytes(sess.backend, args.check)
                row[f"check@{args.check}"] = {"prefill": real, "synthetic": synthetic}
            out["kv_bytes"][name] = row
            print(f"kv bytes {name}: {row}", file=sys.stderr, flush=True)

    if "agree" not in skip:
        out["agreement"] = agreement(sessions, ids, args.chunk)

    if "speed" not in skip:
        runs = {name: [] for name in sessions}
        order = list(sessions.items())
        for i in range(args.reps):
            for name, sess in order if i % 2 == 0 else order[::-1]:
                runs[name].append(decode_tps(sess.backend, ids, args.decode_depth, args.decode))
        out["decode_tps"] = {n: statistics.median(r) for n, r in runs.items()}
        out["decode_tps_runs"] = runs
        base = out["decode_tps"]["16"]
        out["decode_vs_16"] = {n: v / base for n, v in out["decode_tps"].items()}

    for sess in sessions.values():
        sess.close()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
