#!/usr/bin/env python3
"""mlx-lm's own `stream_generate` vs mlxgen's MLX backend + shared loop, on the same loaded model.

Same weights (the embedded SmolLM2 GGUF imported to MLX, or --config's model), greedy,
the same prompt ids and number of new tokens (EOS ignored), interleaved runs, medians;
mlx-lm is the baseline. mlxgen's side is the full path a user gets: pipelined steps
(mx.async_eval), the sampler on mx arrays, the incremental detokenizer.
This is `mlxgen bench --backends mlx --native` with the native loop first.

    python scripts/bench_mlx.py [--runs 5] [--tokens 64] [--config FILE] [--json]
"""

from __future__ import annotations

import argparse
import json

from mlxgen.bench import DEFAULT_PROMPT, format_table, run_bench
from mlxgen.config import load_config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--config", default=None, help="config file or preset (default: the embedded model)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cfg = load_config(args.config, {"inference.temperature": 0.0, "inference.max_length": args.tokens})
    result = run_bench(cfg, ["mlx"], DEFAULT_PROMPT, args.runs, native=True, native_first=True)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


if __name__ == "__main__":
    main()
