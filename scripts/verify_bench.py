#!/usr/bin/env python3
"""Check `mlxgen bench`'s llama.cpp figures against measurements that share none of its code.

1. `mlxgen bench --backend llama.cpp -p P -n N -r R -o json` in a subprocess.
2. In this process, plain llama-cpp-python on the same GGUF, context and threads, the
   same token trace: a bare loop of `Llama.eval` calls, timed two ways:
   - wall clock around the calls (pp: one eval of P tokens; tg: N single-token evals),
   - llama.cpp's own counters (`llama_perf_context`: t_p_eval_ms / n_p_eval for the
     prompt batch, t_eval_ms / n_eval for the single-token decodes).
The two sides alternate ``--rounds`` times so machine drift hits both. Exits 1 if a bench
mean is off by more than ``--tolerance`` from llama.cpp's own timing.

    python scripts/verify_bench.py [-p 512] [-n 128] [-r 5] [--rounds 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def bench(args) -> dict[str, list[float]]:
    cmd = [sys.executable, "-m", "mlxgen", "bench", "--backend", "llama.cpp", "-p", str(args.p), "-n", str(args.n),
           "-r", str(args.r), "--ctx", str(args.ctx), "-o", "json"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    data = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return {r["kind"]: r["samples_ts"] for r in data["results"] if r["loop"] == "mlxgen"}


def independent(args, llm, trace: list[int]) -> dict[str, list[float]]:
    import llama_cpp

    out: dict[str, list[float]] = {"pp": [], "tg": [], "pp_llama": [], "tg_llama": []}
    ctx = llm.ctx
    for _ in range(args.r + 1):  # the first round is a warm-up
        llm.reset()
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        llm.eval(trace[: args.p])
        llama_cpp.llama_synchronize(ctx)  # llama.cpp books its timings here
        pp_wall = time.perf_counter() - t0
        pp_perf = llama_cpp.llama_perf_context(ctx)

        llm.reset()
        llama_cpp.llama_perf_context_reset(ctx)
        t0 = time.perf_counter()
        for token in trace[: args.n]:
            llm.eval([token])
            llama_cpp.llama_synchronize(ctx)
        tg_wall = time.perf_counter() - t0
        tg_perf = llama_cpp.llama_perf_context(ctx)
        if _ == 0:
            continue
        out["pp"].append(args.p / pp_wall)
        out["tg"].append(args.n / tg_wall)
        out["pp_llama"].append(1e3 * pp_perf.n_p_eval / pp_perf.t_p_eval_ms)
        # single-token decodes are counted as "eval", except the first one after a reset
        out["tg_llama"].append(1e3 * (tg_perf.n_eval + tg_perf.n_p_eval) / (tg_perf.t_eval_ms + tg_perf.t_p_eval_ms))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tolerance", type=float, default=0.10)
    args = ap.parse_args()

    import llama_cpp  # before numpy: see mlxgen.cli.probe_hardware

    from mlxgen import bench as benchmod
    from mlxgen.config import load_config
    from mlxgen.hardware import available_cpus
    from mlxgen.sources import resolve_gguf
    from mlxgen.tokenizer import HFTokenizer

    cfg = load_config(None, {"llm.n_ctx": args.ctx})
    path = resolve_gguf(cfg.llm)
    threads = args.threads or available_cpus()
    llm = llama_cpp.Llama(str(path), n_ctx=args.ctx, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          logits_all=False, verbose=False)
    tok = HFTokenizer.from_gguf(path)
    special = tok.hf.get_added_tokens_decoder().keys()
    trace = benchmod.random_trace(42, max(args.p, args.n), min(tok.vocab_size, llm.n_vocab()), special)

    ours: dict[str, list[float]] = {"pp": [], "tg": []}
    theirs: dict[str, list[float]] = {"pp": [], "tg": [], "pp_llama": [], "tg_llama": []}
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr)
        for k, v in bench(args).items():
            ours[k] += v
        for k, v in independent(args, llm, trace).items():
            theirs[k] += v

    mean = statistics.fmean
    ok = True
    print(f"{path.name}, {threads} threads, pp{args.p} / tg{args.n}, {args.rounds} rounds x {args.r} runs, "
          f"pid {os.getpid()}")
    print(f"{'test':<6} {'mlxgen bench':>14} {'bare eval loop':>15} {'llama.cpp own':>14} {'bench/own':>10}")
    for kind in ("pp", "tg"):
        ratio = mean(ours[kind]) / mean(theirs[f"{kind}_llama"])
        ok &= abs(ratio - 1) <= args.tolerance
        print(f"{kind + str(args.p if kind == 'pp' else args.n):<6} {mean(ours[kind]):>14.1f} "
              f"{mean(theirs[kind]):>15.1f} {mean(theirs[kind + '_llama']):>14.1f} {ratio:>10.3f}")
    print("agree within {:.0%}: {}".format(args.tolerance, "yes" if ok else "NO"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
