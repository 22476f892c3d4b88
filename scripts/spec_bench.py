"""Speculative decoding on real weights: token identity and decode speed, plain vs speculative.

Target: the embedded SmolLM2-135M written as F16 (scripts/make_f16_gguf.py); draft: the
Q4_1 file it came from. For each backend, each prompt and each mode (plain, lookup,
draft model, and lookup on the Q4_1 model alone) it runs greedy decoding of N tokens
(EOS ignored, so every run has N), interleaved A B C A B C ... REPS times, and reports:

- whether every speculative run's tokens equal plain decoding's (the first differing
  index and the target's top-2 logit margin there when not);
- decode tok/s (median over reps), the speedup over plain in the same run, acceptance.

    python scripts/spec_bench.py [--backends llama.cpp,mlx] [-n 128] [--reps 3] [--prompts all|chat,copy]
                                 [--draft-tokens 4] [--lookup 8] [--threads 1] [--json OUT]

On a shared machine use --threads 1 (llama.cpp) and read only the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import make_f16_gguf  # noqa: E402

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff for more than a century. Every night its keeper climbed "
    "the narrow spiral stairs, trimmed the wick and polished the great lens until it shone. Ships passing in the "
    "dark relied on its steady beam to avoid the rocks below. When the keeper finally retired, the town decided "
    "to keep the light burning with an automatic lamp, and the keeper's cottage became a small museum."
)
CODE = (
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)\n\n"
    "def variance(values):\n    m = mean(values)\n    total = 0\n    for v in values:\n        total += (v - m) ** 2\n"
    "    return total / len(values)\n"
)
PROMPTS = {
    "chat": "What are three good habits for staying healthy? Answer in a short list.",
    "copy": f"Rewrite the following paragraph exactly, changing only 'century' to 'hundred years':\n\n{PARAGRAPH}",
    "chat2": "Explain in a few sentences why the sky is blue.",
    "copy2": f"Repeat this code exactly, but rename the function mean to average:\n\n{CODE}",
    "summary": f"Summarize this paragraph in two sentences, reusing its words:\n\n{PARAGRAPH}",
}


def open_target(backend: str, path: Path, threads: int, n_ctx: int):
    from mlxgen import session
    from mlxgen.config import load_config
    from mlxgen.sources import model_source

    cfg = load_config(None, {"backend": backend, **model_source(str(path)), "llm.n_ctx": n_ctx,
                             "llm.n_threads": threads, "inference.temperature": 0})
    return session.open_session(cfg, session.plan(cfg).choice)


def draft_speculation(sess, source: Path, k: int, adaptive: bool):
    import dataclasses

    from mlxgen import speculative

    cfg = dataclasses.replace(sess.cfg, inference=dataclasses.replace(sess.cfg.inference, draft=str(source),
                                                                      draft_tokens=k, adaptive_draft=adaptive))
    return speculative.open_draft_model(cfg, sess.choice, sess.backend, sess.tokenizer)


def run_once(sess, ids, n, speculation):
    from mlxgen.loop import Done

    sess.speculation = speculation
    sess.cache.reset()
    done = [e for e in sess.generate(ids, ignore_eos=True, max_tokens=n) if isinstance(e, Done)][0]
    sess.speculation = None
    return done


def margin(sess, ids, tokens, index) -> float:
    """The target's top-2 logit gap where plain and speculative output part (plain steps)."""
    import numpy as np

    from mlxgen.loop import prefill

    sess.cache.reset()
    logits = np.array(prefill(sess.backend, ids + tokens[:index]), dtype=np.float32)
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def bench_backend(name: str, args, f16: Path, q4: Path) -> list[dict]:
    from mlxgen.speculative import Lookup, Speculation

    target = open_target(name, f16, args.threads, 2048)
    small = open_target(name, q4, args.threads, 2048)
    modes = {
        "f16 plain": (target, None),
        "f16 lookup": (target, Speculation(Lookup(min_ngram=args.ngram_min), args.lookup, args.adaptive)),
        "f16 draft": (target, draft_speculation(target, q4, args.draft_tokens, args.adaptive)),
        "q4 plain": (small, None),
        "q4 lookup": (small, Speculation(Lookup(min_ngram=args.ngram_min), args.lookup, args.adaptive)),
    }
    if args.modes != "all":
        keep = set(args.modes.split(",")) | {"f16 plain", "q4 plain"} & {m.split()[0] + " plain" for m in args.modes.split(",")}
        modes = {m: v for m, v in modes.items() if m in keep}
    rows = []
    try:
        for pname in args.prompts:
            _, ids = target.prompt(PROMPTS[pname])
            runs: dict[str, list] = {m: [] for m in modes}
            for _ in range(args.reps):
                for mode, (sess, spec) in modes.items():
                    runs[mode].append(run_once(sess, ids, args.n, spec))
            for mode, dones in runs.items():
                base = runs[mode.split()[0] + " plain"]
                tps = statistics.median(d.stats.decode_tps for d in dones)
                base_tps = statistics.median(d.stats.decode_tps for d in base)
                plain_tokens = base[0].tokens
                same = all(d.tokens == plain_tokens for d in dones)
                row = {"backend": name, "device": target.backend.device, "prompt": pname, "mode": mode,
                       "prompt_tokens": len(ids), "tokens": len(dones[0].tokens), "decode_tps": round(tps, 2),
                       "speedup": round(tps / base_tps, 3), "identical": same,
                       "tps_runs": [round(d.stats.decode_tps, 2) for d in dones]}
                s = dones[0].stats
                if s.drafted_tokens is not None:
                    row.update(drafted=s.drafted_tokens, accepted=s.accepted_tokens,
                               acceptance=round(s.acceptance or 0, 3))
                if not same:
                    bad = next(d for d in dones if d.tokens != plain_tokens)
                    i = next(j for j, (a, b) in enumerate(zip(bad.tokens, plain_tokens)) if a != b)
                    sess = modes[mode][0]
                    row.update(first_difference=i, top2_margin=round(margin(sess, ids, plain_tokens, i), 5))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for sess, spec in modes.values():
            if spec is not None:
                spec.close()
        target.close()
        small.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="llama.cpp,mlx")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--prompts", default="all")
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--lookup", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ngram-min", type=int, default=2, help="lookup: the shortest n-gram that may match")
    ap.add_argument("--adaptive", action="store_true", help="adaptive draft length")
    ap.add_argument("--modes", default="all", help="comma-separated subset of: f16 plain, f16 lookup, ...")
    ap.add_argument("--json", dest="out")
    args = ap.parse_args()
    args.prompts = list(PROMPTS) if args.prompts == "all" else args.prompts.split(",")
    from mlxgen.sources import package_file

    q4 = package_file(*make_f16_gguf.SOURCE)
    f16 = make_f16_gguf.default_out()
    if not f16.exists():
        f16.parent.mkdir(parents=True, exist_ok=True)
        make_f16_gguf.make_f16(q4, f16)
    t0 = time.time()
    rows = [r for b in args.backends.split(",") for r in bench_backend(b, args, f16, q4)]
    print(f"# {time.time() - t0:.0f} s; load average {open('/proc/loadavg').read().split()[:3]}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
