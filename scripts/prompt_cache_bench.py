"""Saved prompt caches: time to first token cold vs with the cache loaded, on each backend.

    python scripts/prompt_cache_bench.py                      # both backends, ~1,500-token document
    python scripts/prompt_cache_bench.py --backends llama.cpp --reps 3 --threads 1

A document of about ``--tokens`` tokens is saved once (`prompt_file.save`, as `mlxgen
cache-prompt` does); each repetition then runs, interleaved, a cold prompt (document +
question, nothing cached) and the same prompt after loading the file. Reported per
backend: the file size, save and load time, the cold TTFT (the loop's: prefill + first
sample), the loaded TTFT (file load + the rest's prefill + first sample) and their ratio,
and whether the greedy tokens are identical. Medians over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SENTENCE = "The committee reviewed the harbour budget, the ferry timetable and the repairs to the old lighthouse. "
QUESTION = "Summarise the committee's work in one sentence."


def greedy(sess, ids, n):
    from mlxgen.sampling import SamplingParams

    done = list(sess.complete(ids, max_tokens=n, sample=sess.sampler(SamplingParams(temperature=0))))[-1]
    return [t for t, _ in done.trace], done.stats


def bench(name: str, tokens: int, reps: int, threads: int, n: int, folder: Path) -> dict:
    from mlxgen import prompt_file, session
    from mlxgen.config import load_config

    cfg = load_config(None, {"backend": name, "llm.n_threads": threads, "llm.n_ctx": max(4096, tokens * 2)})
    sess = session.open_session(cfg, session.plan(cfg).choice)
    try:
        per = len(sess.tokenizer.encode(SENTENCE))
        doc = SENTENCE * max(1, round(tokens / per))
        _, doc_ids = sess.prompt(doc)
        _, ids = sess.prompt(doc + QUESTION)
        path = folder / f"{name}.mlxcache"
        t0 = time.perf_counter()
        sess.cache.fill(doc_ids)
        prefill_s = time.perf_counter() - t0
        size, save_s = prompt_file.save(path, sess)
        greedy(sess, ids, 2)  # warm-up (first-call costs) for both paths
        cold, warm, loads, same, cached = [], [], [], [], []
        for _ in range(reps):
            sess.cache.reset()
            want, stats = greedy(sess, ids, n)
            cold.append(stats.ttft_s)
            sess.cache.reset()
            restored, load_s, _ = prompt_file.load(path, sess)
            got, stats = greedy(sess, ids, n)
            loads.append(load_s)
            warm.append(load_s + stats.ttft_s)
            cached.append(stats.cached_tokens)
            same.append(got == want)
        med = statistics.median
        return {"backend": name, "device": sess.backend.device, "prompt_tokens": len(ids), "doc_tokens": len(doc_ids),
                "cached_tokens": cached[0], "file_bytes": size, "doc_prefill_s": prefill_s, "save_s": save_s,
                "load_s": med(loads), "ttft_cold_s": med(cold), "ttft_loaded_s": med(warm),
                "ratio": med(warm) / med(cold), "tokens_identical": all(same), "reps": reps,
                "ttft_cold_all": cold, "ttft_loaded_all": warm}
    finally:
        sess.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="llama.cpp,mlx")
    ap.add_argument("--tokens", type=int, default=1500, help="document size in tokens (about)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("-n", type=int, default=16, help="tokens generated per run (greedy), compared cold vs loaded")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.backends.split(","):
            row = bench(name, args.tokens, args.reps, args.threads, args.n, Path(tmp))
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{name} ({row['device']}): prompt {row['prompt_tokens']} tokens, {row['cached_tokens']} from "
                      f"the file ({row['file_bytes'] / 2**20:.1f} MiB; saved in {row['save_s'] * 1e3:.0f} ms, "
                      f"loaded in {row['load_s'] * 1e3:.0f} ms) · TTFT cold {row['ttft_cold_s']:.3f} s, loaded "
                      f"{row['ttft_loaded_s']:.3f} s = {row['ratio']:.1%} of cold · greedy tokens identical: "
                      f"{row['tokens_identical']} ({row['reps']} reps, medians)", flush=True)
    return 0 if all(r["tokens_identical"] and r["ratio"] < 0.15 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
