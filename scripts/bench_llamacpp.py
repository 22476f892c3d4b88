#!/usr/bin/env python3
"""mlxgen's loop on llama.cpp vs llama-cpp-python's own `Llama.generate`, side by side.

Both drive the *same* `Llama` object (same weights, context and thread count),
greedy, for the same prompt ids and the same number of new tokens (EOS ignored),
interleaved A B A B ... so machine noise hits both alike. mlxgen's side is the full
path a user gets: shared loop, numpy sampler, incremental detokenizer.

    python scripts/bench_llamacpp.py [--runs 7] [--tokens 128] [--threads N] [--json]

Prefill tok/s = prompt tokens / time to the first sampled token.
Decode tok/s  = (new tokens - 1) / time from the first to the last token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from mlxgen import hardware, sources
from mlxgen.backends.llamacpp import LlamaCppBackend
from mlxgen.config import load_config
from mlxgen.loop import Done, generate
from mlxgen.sampling import SamplingParams, make_sampler
from mlxgen.tokenizer import Tokenizer

PROMPT = (
    "<|im_start|>user\nWrite a long, detailed story about a lighthouse keeper who finds a "
    "message in a bottle, and describe every room of the lighthouse.<|im_end|>\n<|im_start|>assistant\n"
)


def run_mlxgen(backend: LlamaCppBackend, tok: Tokenizer, ids: list[int], n: int) -> tuple[float, float]:
    backend.trim(0)
    sample = make_sampler(SamplingParams(temperature=0.0))
    for event in generate(backend, ids, sample, tok.decode, max_tokens=n, eos_ids=()):
        if isinstance(event, Done):
            s = event.stats
            assert s.generated_tokens == n, s
            return s.prefill_tps, s.decode_tps
    raise AssertionError


def run_native(backend: LlamaCppBackend, ids: list[int], n: int) -> tuple[float, float]:
    llm = backend._llm
    llm.reset()  # no prefix reuse: prefill the whole prompt like mlxgen does
    t0 = time.perf_counter()
    times = []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        times.append(time.perf_counter())
        if len(times) == n:
            break
    return len(ids) / (times[0] - t0), (n - 1) / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=hardware.available_cpus())
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cfg = load_config(None)  # the embedded preset
    path = sources.resolve_gguf(cfg.llm)
    tok = Tokenizer.from_gguf(path)
    backend = LlamaCppBackend(path, n_ctx=cfg.llm.n_ctx, n_threads=args.threads)
    ids = tok.encode(PROMPT)
    run_mlxgen(backend, tok, ids, args.tokens)  # warm-up both
    run_native(backend, ids, args.tokens)
    ours, native = [], []
    for _ in range(args.runs):
        ours.append(run_mlxgen(backend, tok, ids, args.tokens))
        native.append(run_native(backend, ids, args.tokens))
    backend.close()

    med = lambda rows, i: statistics.median(r[i] for r in rows)  # noqa: E731
    result = {
        "model": str(path.name),
        "threads": args.threads,
        "prompt_tokens": len(ids),
        "new_tokens": args.tokens,
        "runs": args.runs,
        "native_prefill_tps": med(native, 0),
        "mlxgen_prefill_tps": med(ours, 0),
        "prefill_ratio": med(ours, 0) / med(native, 0),
        "native_decode_tps": med(native, 1),
        "mlxgen_decode_tps": med(ours, 1),
        "decode_ratio": med(ours, 1) / med(native, 1),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['model']}, {args.threads} threads, prompt {len(ids)} tokens, {args.tokens} new, medians of {args.runs}")
    print(f"prefill tok/s  Llama.generate {result['native_prefill_tps']:8.1f}   mlxgen {result['mlxgen_prefill_tps']:8.1f}   ratio {result['prefill_ratio']:.3f}")
    print(f"decode  tok/s  Llama.generate {result['native_decode_tps']:8.1f}   mlxgen {result['mlxgen_decode_tps']:8.1f}   ratio {result['decode_ratio']:.3f}")


if __name__ == "__main__":
    main()
