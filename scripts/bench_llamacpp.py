#!/usr/bin/env python3
"""llama-cpp-python's own `Llama.generate` loop vs mlxgen's loop, on the same `Llama` object.

Same weights, context and thread count; greedy; the same prompt ids and number of new
tokens (EOS ignored); interleaved runs, medians; the native loop is the baseline.
mlxgen's side is the full path a user gets: shared loop, numpy sampler, incremental
detokenizer. This is `mlxgen bench --backends llama.cpp --native` with the native loop first.

    python scripts/bench_llamacpp.py [--runs 7] [--tokens 128] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json

from mlxgen.bench import DEFAULT_PROMPT, format_table, run_bench
from mlxgen.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    overrides = {"inference.temperature": 0.0, "inference.max_length": args.tokens, "llm.n_threads": args.threads}
    cfg = load_config(None, overrides)  # the embedded preset
    result = run_bench(cfg, ["llama.cpp"], DEFAULT_PROMPT, args.runs, native=True, native_first=True)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
