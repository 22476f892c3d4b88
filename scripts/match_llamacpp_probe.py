"""Probe: which of llama.cpp's CPU numerics, emulated on MLX, bring the two backends' logits together?

Teacher-forced like scripts/parity_mlx_llamacpp.py (same prompts and positions), with the
MLX import of the embedded SmolLM2 Q4_1 patched in steps:

    embed_f32   the embedding rows dequantized in float32 (MLX: float16, the scales' dtype)
    act_q8      activations of every quantized matmul rounded as llama.cpp's CPU dot products
                quantize them: blocks of 32, d = amax/127 (stored fp16), q = round(x/d);
                Q4_1 weights also get llama.cpp's fp16 block sum s = fp16(d * sum(q))
    kv_f16      attention as llama.cpp without flash attention: K, V held in fp16, Q rounded
                to fp16 for K.Q, the softmax rounded to fp16 for V.softmax

    python scripts/match_llamacpp_probe.py --steps none,embed_f32,act_q8,kv_f16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, __import__("os").path.dirname(__file__))
from parity_mlx_llamacpp import PROMPTS, compare, default_gguf, llamacpp_logits  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", default="none,embed_f32,embed_f32+act_q8,embed_f32+act_q8+kv_f16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-positions", type=int, default=1000)
    ap.add_argument("--gguf", default=None, help="another GGUF (default: the embedded SmolLM2 Q4_1)")
    ap.add_argument("--against", choices=["llama.cpp", "mlx"], default="llama.cpp",
                    help="the reference: llama.cpp's logits, or plain MLX's (about the float32 model's: how far "
                         "the roundings alone move MLX)")
    args = ap.parse_args()
    import mlx.core as mx
    from mlx_lm.utils import load_model

    from mlxgen.backends import mlx_convert
    import llamacpp_numerics as mlx_match
    from mlxgen.tokenizer import HFTokenizer

    gguf = Path(args.gguf) if args.gguf else default_gguf()
    tok = HFTokenizer.from_gguf(gguf)
    folder = mlx_convert.import_gguf_cached(gguf)
    seqs, total = [], 0
    for text in PROMPTS:
        ids = tok.encode(text)
        seqs.append(ids)
        total += len(ids)
        if total >= args.min_positions:
            break
    if args.against == "mlx":
        plain, _ = load_model(folder)
        refs = [np.array(plain(mx.array([ids]))[0].astype(mx.float32)) for ids in seqs]
    else:
        refs = [llamacpp_logits(gguf, ids, args.threads) for ids in seqs]
    out = {}
    for step in args.steps.split(","):
        model, _ = load_model(folder)
        parts = [] if step == "none" else step.split("+")
        mins = [p for p, m in model.named_modules() if getattr(m, "bits", None) == 4]  # Q4_1: every 4-bit layer
        mlx_match.match_llamacpp(model, parts, mins)
        t0 = time.perf_counter()
        agree, n, kls, worst, diffs = 0, 0, [], 0.0, []
        for ids, ref in zip(seqs, refs):
            got = np.array(model(mx.array([ids]))[0].astype(mx.float32))
            r = compare(ref, got)
            agree += r["top1_agree"]
            n += r["positions"]
            kls.append(r["kl"])
            worst = max(worst, r["max_abs_logit_diff"])
            diffs.append(np.abs(ref - got).mean(axis=-1))
        kl = np.concatenate(kls)
        out[step] = {"positions": n, "top1_agreement": round(agree / n, 4), "mean_kl": float(kl.mean()),
                     "max_kl": float(kl.max()), "mean_abs_logit_diff": float(np.concatenate(diffs).mean()),
                     "max_abs_logit_diff": worst, "seconds": round(time.perf_counter() - t0, 1)}
        print(step, json.dumps(out[step]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
