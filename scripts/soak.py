"""Soak: many consecutive greedy generations in one process, through the library API.

    python scripts/soak.py                          # llama.cpp, 2,000 runs of 64 tokens
    python scripts/soak.py --backend mlx --runs 40  # the shorter MLX version (CPU here)

One session (one loaded model) runs the same few prompts in turn, greedy, EOS
ignored so every run decodes exactly ``--tokens`` tokens; between runs the KV cache
is trimmed to empty, as a fresh prompt would. After ``--warmup`` runs the resident
memory (VmRSS) is the baseline; at the end it must not have grown by more than
``--max-growth`` (5%), and every run of a prompt must give exactly the text its first
run gave. Prints the figures; exits 1 if either property fails.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time

PROMPTS = [
    "Explain a KV cache in two sentences.",
    "Write a haiku about tea.",
    "List three uses of a paperclip.",
    "What is the capital of France?",
]


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    import resource  # macOS: no /proc; ru_maxrss is the peak, the best there is

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llama.cpp", choices=["llama.cpp", "mlx"])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=20, help="runs before the RSS baseline is taken")
    ap.add_argument("--max-growth", type=float, default=0.05)
    ap.add_argument("--every", type=int, default=100, help="print a progress line every N runs")
    ap.add_argument("--threads", type=int, default=None, help="llm.n_threads (default: one per core)")
    args = ap.parse_args(argv)

    from mlxgen import hardware
    from mlxgen.config import load_config
    from mlxgen.loop import Done
    from mlxgen.session import open_session

    cfg = load_config(None, {"backend": args.backend, "inference.temperature": 0.0, "llm.n_threads": args.threads})
    choice = hardware.detect(hardware.gather_facts(), cfg.backend)
    sess = open_session(cfg, choice)
    prompts = [sess.prompt(p)[1] for p in PROMPTS]
    first: dict[int, str] = {}
    mismatches: list[tuple[int, int, str, str]] = []
    rss0 = None
    t0 = time.perf_counter()  # reset after warm-up
    print(f"soak: backend {sess.backend.name} on {sess.backend.device}, {args.runs} runs x {args.tokens} tokens, "
          f"rss after load {rss_mb():.1f} MB", flush=True)
    try:
        for run in range(args.runs + args.warmup):
            k = run % len(prompts)
            sess.backend.trim(0)
            done = None
            for event in sess.generate(prompts[k], ignore_eos=True, max_tokens=args.tokens):
                if isinstance(event, Done):
                    done = event
            if done.stats.generated_tokens != args.tokens:
                mismatches.append((run, k, f"{done.stats.generated_tokens} tokens", done.reason))
            if k not in first:
                first[k] = done.text
            elif done.text != first[k]:
                mismatches.append((run, k, first[k], done.text))
            if run + 1 == args.warmup:
                gc.collect()
                rss0 = rss_mb()
                t0 = time.perf_counter()
                print(f"soak: warm-up done ({args.warmup} runs): rss {rss0:.1f} MB", flush=True)
            elif rss0 is not None and (run + 1 - args.warmup) % args.every == 0:
                print(f"soak: run {run + 1 - args.warmup}/{args.runs}: rss {rss_mb():.1f} MB, "
                      f"{time.perf_counter() - t0:.0f} s, mismatches {len(mismatches)}", flush=True)
        gc.collect()
        rss1 = rss_mb()  # the model still loaded: the same footing as the baseline
    finally:
        sess.close()
    growth = (rss1 - rss0) / rss0
    elapsed = time.perf_counter() - t0
    print(f"soak: {args.runs} runs after warm-up in {elapsed:.0f} s ({args.runs * args.tokens / elapsed:.0f} tok/s)")
    print(f"soak: rss start {rss0:.1f} MB, end {rss1:.1f} MB, growth {growth * 100:+.2f}% "
          f"(limit {args.max_growth * 100:.0f}%)")
    print(f"soak: greedy text identical across runs: {'yes' if not mismatches else 'NO'} "
          f"({len(mismatches)} mismatches over {len(first)} prompts)")
    for run, k, a, b in mismatches[:5]:
        print(f"  run {run} prompt {k}: {a!r} != {b!r}")
    print(f"soak: threads at exit: {[t.name for t in threading.enumerate()]}")
    ok = growth <= args.max_growth and not mismatches
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
