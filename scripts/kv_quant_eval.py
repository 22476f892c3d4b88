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

Settings (``--bits``): ``16`` full precision, ``8``/``4`` the quantized cache, ``8g64`` MLX's
8-bit cache with quantization group 64 (mlx-lm's default; mlxgen's is 32), ``8-norot`` MLX's
8-bit cache without the rotation of the keys (``mlxgen.backends.mlx.rotate_keys``): mlx-lm's
``QuantizedKVCache`` as it is. Two references show how far a change that is *not*
quantization moves the argmax on the same model, i.e. the floor under any agreement figure:
llama.cpp's ``16-nofa`` (flash attention off), and MLX's ``16-f16kv``/``16-bf16kv`` (the
cache's K/V rounded to float16/bfloat16, what mlx-lm holds on a Mac; compute stays float32)
and ``16-q8g64`` (K/V quantized to 8 bits, group 64, and back: the storage rounding alone).
At each disagreement the script reports the reference's own top-2 gap: a flip where the two
best tokens were 0.02 apart is a near-tie, not a lost prediction.

``--text`` takes a comma list; ``--positions`` tokens of each are teacher-forced on a fresh
cache and the counts pooled. ``--model`` runs another GGUF (e.g. ``make_f16_gguf.py``'s F16
file: no 8-bit activation rounding in llama.cpp's matmuls).

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


def open_backend(name: str, bits: int, n_ctx: int, threads: int, no_flash: bool = False, model: str | None = None):
    from mlxgen import session
    from mlxgen.config import load_config
    from mlxgen.sources import model_source

    cfg = load_config(None, {"backend": name, "llm.n_ctx": n_ctx, "llm.n_threads": threads,
                             "llm.kv_bits": None if bits == 16 else bits, "inference.raw": True,
                             "llm.flash_attn": not no_flash, **(model_source(model) if model else {})})
    return session.open_session(cfg, session.plan(cfg).choice)


def open_setting(name: str, label: str, n_ctx: int, threads: int, model: str | None):
    """A session for one --bits label: 16, 8, 4, 8g64 (MLX group 64), 8-norot (MLX keys not rotated),
    16-nofa (llama.cpp), and on MLX 16-f16kv/16-bf16kv/16-q8g64 (K/V rounded as stored, attention unchanged)."""
    head, _, variant = label.partition("-")  # "8g32" -> ("8g32", ""), "16-bf16kv" -> ("16", "bf16kv")
    bits, _, group = head.partition("g")
    sess = open_backend(name, int(bits), n_ctx, threads, no_flash=variant == "nofa", model=model)
    if group:  # MLX: another quantization group
        sess.backend.kv_group = int(group)
        sess.backend.trim(0)
    if variant == "norot":  # MLX: keys cached as the model computes them (mlx-lm's QuantizedKVCache alone)
        from mlxgen.backends.mlx import unrotate_keys

        unrotate_keys(sess.backend.model)
        sess.backend.rotated = 0
    rounding = variant if variant not in ("", "nofa", "norot") else None
    if rounding:
        import mlx.core as mx
        from mlx_lm.models.cache import KVCache

        def rounded(x):
            if rounding in ("f16kv", "bf16kv"):
                return x.astype(mx.float16 if rounding == "f16kv" else mx.bfloat16).astype(x.dtype)
            bits, group = (int(v) for v in rounding[1:].split("g"))  # q8g64: quantized and back, as MLX stores it
            return mx.dequantize(*mx.quantize(x, group_size=group, bits=bits), group_size=group, bits=bits)

        class RoundedKV(KVCache):  # K/V rounded as they are stored; attention is the full-precision kernel
            def update_and_fetch(self, keys, values):
                return super().update_and_fetch(rounded(keys), rounded(values))

        plain = sess.backend._new_cache
        sess.backend._new_cache = lambda: [RoundedKV() if type(c) is KVCache else c for c in plain()]
        sess.backend.trim(0)
    return sess


def to_numpy(x):
    import numpy as np

    return np.asarray(x, dtype=np.float32)


def agreement(sessions: dict, texts: list[list[int]], chunk: int, bases=("16", "16-nofa")) -> dict:
    """Teacher forcing, every setting chunk by chunk, each text on a fresh cache.

    Per base: top-1 agreement of each setting, mean KL(base || setting), and the base's own
    top-2 gap at each disagreement (median, max) with the share of all positions that close.
    """
    import numpy as np

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    bases = [b for b in bases if b in sessions]
    same = {b: {n: 0 for n in sessions} for b in bases}
    kl = {b: {n: 0.0 for n in sessions} for b in bases}
    gaps = {b: {n: [] for n in sessions} for b in bases}
    all_gaps = {b: [] for b in bases}
    total, t0 = 0, time.perf_counter()
    for ids in texts:
        for sess in sessions.values():
            sess.backend.trim(0)
        for start in range(0, len(ids), chunk):
            rows = {n: log_softmax(to_numpy(s.backend.verify(ids[start : start + chunk]))) for n, s in sessions.items()}
            for base in bases:
                ref = rows[base]
                top2 = np.sort(ref, -1)[:, -2:]
                gap = top2[:, 1] - top2[:, 0]
                all_gaps[base].extend(gap.tolist())
                for n, r in rows.items():
                    differ = r.argmax(-1) != ref.argmax(-1)
                    same[base][n] += int((~differ).sum())
                    gaps[base][n].extend(gap[differ].tolist())
                    kl[base][n] += float((np.exp(ref) * (ref - r)).sum(-1).sum())
            total += len(rows[bases[0]])
            print(f"{total} positions ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    def gap_stats(base, n):
        g = gaps[base][n]
        return {"flips": len(g), "median": statistics.median(g) if g else None, "max": max(g) if g else None,
                "positions_this_close": sum(x <= max(g) for x in all_gaps[base]) / total if g else 0.0}

    return {f"vs {b}": {"top1": {n: v / total for n, v in same[b].items()},
                        "mean_kl": {n: v / total for n, v in kl[b].items()},
                        "gap_at_flips": {n: gap_stats(b, n) for n in sessions if n != b}} for b in bases}


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
    p.add_argument("--text", default=DEFAULT_TEXT, help="a file, or a comma list of files (pooled)")
    p.add_argument("--model", help="a GGUF file instead of the embedded model")
    p.add_argument("--positions", type=int, default=1024, help="teacher-forced positions per text")
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--bits", default="16,8,4", help="comma list: 16, 8, 4, 8g64 (MLX group 64), 8-norot (MLX), 16-nofa (llama.cpp), "
                   "16-f16kv, 16-bf16kv, 16-q8g64 (MLX)")
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
    labels = args.bits.split(",")
    depths = [int(d) for d in args.depths.split(",")]
    n_ctx = max(args.positions + args.chunk, args.decode_depth + args.decode + 8)
    if args.backend == "llama.cpp" and "16" in labels and len(labels) > 1 and "16-nofa" not in labels:
        labels.insert(labels.index("16") + 1, "16-nofa")
    sessions = {lab: open_setting(args.backend, lab, n_ctx, args.threads, args.model) for lab in labels}
    files = args.text.split(",")
    out = {"backend": args.backend, "model": args.model or "embedded", "texts": files,
           "positions_per_text": args.positions, "settings": list(sessions)}
    first = next(iter(sessions.values()))
    texts = [first.tokenizer.encode(Path(f).read_text(encoding="utf-8"))[: args.positions] for f in files]
    for f, ids in zip(files, texts):
        assert len(ids) == args.positions, f"{f} has only {len(ids)} tokens"
    ids = texts[0]

    if "bytes" not in skip:
        out["kv_bytes"] = {}
        for name, sess in sessions.items():
            if "-" in name:  # a variant of 16 or 8: same bytes as its plain setting (or not a cache type)
                continue
            row = {}
            for depth in depths:
                if args.backend == "llama.cpp":
                    b = open_backend("llama.cpp", int(name), depth, args.threads, model=args.model)
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
        out["agreement"] = agreement(sessions, texts, args.chunk)

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
