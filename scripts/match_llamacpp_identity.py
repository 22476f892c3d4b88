"""Would MLX greedy-decode llama.cpp's tokens? Teacher-forced, with and without llama.cpp's roundings emulated.

Reads llama.cpp's greedy runs from ``scripts/structured_validity.py --backend llama.cpp --seeds 0``
(the constrained ``greedy`` and unconstrained ``free`` token ids per case), then for each case
runs MLX once over the prompt and llama.cpp's tokens, and asks at every position whether
MLX's argmax (under the constraint's mask, for the constrained run) is llama.cpp's token.
All positions yes = MLX's own greedy decode would give the same ids (up to MLX's
prefill-vs-decode rounding). One prefill per run instead of a decode per token: the
MLX CPU device is slow on this shared machine.

    python scripts/structured_validity.py --backend llama.cpp --seeds 0 --out llama.jsonl
    python scripts/match_llamacpp_identity.py llama.jsonl --cases movie,point --variants off,on
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from json_schemas import SCHEMAS  # noqa: E402
from structured_validity import OTHERS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("llama_jsonl")
    ap.add_argument("--cases", default=None, help="comma-separated case names (default: all in the file)")
    ap.add_argument("--variants", default="off,on", help="off: plain MLX; on: every part of llamacpp_numerics")
    args = ap.parse_args()
    import mlx.core as mx

    from mlxgen import constraint, hardware
    import llamacpp_numerics as mlx_match
    from mlxgen.config import load_config
    from mlxgen.session import open_session

    runs = {(r["case"], r["mode"]): r for r in map(json.loads, open(args.llama_jsonl, encoding="utf-8"))}
    prompts = {n: (p + " Answer in JSON.", "json_schema", json.dumps(s)) for n, p, s in SCHEMAS}
    prompts.update({n: (p, k, v) for n, p, k, v, _ in OTHERS})
    names = args.cases.split(",") if args.cases else list(dict.fromkeys(c for c, _ in runs))
    cfg = load_config(None, {"backend": "mlx", "inference.temperature": 0.0})
    sess = open_session(cfg, hardware.detect(hardware.gather_facts(), "mlx"))
    plain = sess.backend.model
    result = {}
    for variant in args.variants.split(","):
        if variant == "on":
            from mlx_lm.utils import load_model

            plain, _ = load_model(sess.backend.folder)
            print("patched:", "; ".join(mlx_match.match_llamacpp(plain, min_layers=mlx_match.min_layers(plain))),
                  file=sys.stderr)
        per_case = {}
        for name in names:
            prompt, kind, value = prompts[name]
            _, ids = sess.prompt(prompt)
            out = {}
            for mode in ("free", "greedy"):
                toks = runs[(name, mode)]["tokens"]
                logits = np.array(plain(mx.array([ids + toks[:-1]]))[0, len(ids) - 1:].astype(mx.float32))
                matcher = sess.bind(constraint.make_spec(kind, value)).matcher() if mode == "greedy" else None
                first, margin = None, []
                for i, t in enumerate(toks):
                    row = logits[i]
                    if matcher is not None:
                        row = row + np.asarray(matcher.mask())[: row.shape[-1]]
                        matcher.accept(t)
                    best = int(row.argmax())
                    top2 = np.sort(row)[-2:]
                    margin.append(float(top2[1] - top2[0]))
                    if best != t and first is None:
                        first = {"pos": i, "llama": t, "mlx": best, "gap": float(row[best] - row[t])}
                out[mode] = {"tokens": len(toks), "same": first is None, "first_diff": first,
                             "min_margin": min(margin) if margin else None}
            per_case[name] = out
            print(variant, name, json.dumps(out), file=sys.stderr, flush=True)
        agree = [n for n in names if per_case[n]["free"]["same"]]
        result[variant] = {"cases": len(names), "unconstrained_same": len(agree),
                           "constrained_same_where_unconstrained_same": sum(per_case[n]["greedy"]["same"] for n in agree),
                           "constrained_same_all": sum(per_case[n]["greedy"]["same"] for n in names),
                           "differ": [n for n in agree if not per_case[n]["greedy"]["same"]]}
    sess.close()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
