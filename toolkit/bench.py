"""`mlxgen bench`: prefill and decode speed, as ratios to a baseline measured in the same run.

Each contestant runs the same prompt ids for the same number of new tokens (EOS is
ignored, so every run decodes exactly ``max_tokens``), greedy. After one warm-up each,
runs are interleaved (A B A B ...) so a noisy machine's drift hits all alike, and
medians are reported. Contestants are mlxgen's loop on each backend and, with
``native=True``, each backend library's own generation loop on the same loaded model
(llama-cpp-python's ``Llama.generate``, mlx-lm's ``stream_generate``).
The first contestant is the baseline of the ratios.

    prefill tok/s = prompt tokens / time to the first sampled token
    decode tok/s  = (new tokens - 1) / time from the first to the last token
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Iterable

from mlxgen import hardware
from mlxgen.config import Config
from mlxgen.loop import Done

DEFAULT_PROMPT = (
    "Explain, step by step, how a transformer language model turns a prompt into text: "
    "tokenization, embeddings, attention, the KV cache, sampling and detokenization. "
    "Then write a long story about a lighthouse keeper who finds a message in a bottle."
)

Measure = Callable[[list[int], int], tuple[float, float]]  # (ids, new tokens) -> (prefill tok/s, decode tok/s)


def time_stream(tokens: Iterable, prompt_tokens: int, limit: int) -> tuple[float, float]:
    """Time a native loop from outside: its first ``limit`` tokens -> (prefill tok/s, decode tok/s)."""
    t0 = time.perf_counter()
    times: list[float] = []
    for _ in tokens:
        times.append(time.perf_counter())
        if len(times) == limit:
            break
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return prompt_tokens / (times[0] - t0), decode


def mlxgen_measure(sess) -> Measure:
    def measure(ids: list[int], n: int) -> tuple[float, float]:
        sess.backend.trim(0)
        for event in sess.generate(ids, ignore_eos=True, max_tokens=n):
            if isinstance(event, Done):
                return event.stats.prefill_tps or 0.0, event.stats.decode_tps or 0.0
        raise AssertionError("the loop ended without a Done event")

    return measure


def run_bench(
    cfg: Config,
    names: list[str] | None,
    prompt: str,
    runs: int,
    native: bool = False,
    native_first: bool = False,
    facts: hardware.Facts | None = None,
) -> dict:
    facts = facts or hardware.gather_facts()  # first: it imports llama_cpp before numpy (see cli.probe_hardware)
    from mlxgen import session

    names = names or [hardware.detect(facts, cfg.backend).backend]
    sessions, contestants = [], []
    try:
        for name in names:
            sess = session.open_session(dataclasses.replace(cfg, backend=name), hardware.detect(facts, name))
            sessions.append(sess)
            ours = (f"mlxgen {name}", sess.backend.device, mlxgen_measure(sess))
            theirs = getattr(sess.backend, "native_measure", None)
            if native and theirs is None:
                raise AssertionError(f"backend {name} has no native loop to compare with")
            pair = [ours] + ([(f"native {name}", sess.backend.device, theirs)] if native else [])
            contestants += pair[::-1] if native_first else pair
        ids = sessions[0].prompt(prompt)[1]
        n = cfg.inference.max_length
        results: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in contestants}
        for _, _, measure in contestants:
            measure(ids, n)  # warm-up
        for _ in range(runs):
            for label, _, measure in contestants:
                results[label].append(measure(ids, n))
    finally:
        for sess in sessions:
            sess.close()
    rows = [
        {
            "label": label,
            "device": device,
            "prefill_tps": statistics.median(r[0] for r in results[label]),
            "decode_tps": statistics.median(r[1] for r in results[label]),
            "prefill_runs": [r[0] for r in results[label]],
            "decode_runs": [r[1] for r in results[label]],
        }
        for label, device, _ in contestants
    ]
    base = rows[0]
    for row in rows:
        row["prefill_ratio"] = row["prefill_tps"] / base["prefill_tps"] if base["prefill_tps"] else None
        row["decode_ratio"] = row["decode_tps"] / base["decode_tps"] if base["decode_tps"] else None
    return {"baseline": base["label"], "prompt_tokens": len(ids), "new_tokens": n, "runs": runs, "rows": rows}


def format_table(result: dict) -> str:
    head = f"{'':<18} {'device':<22} {'prefill tok/s':>14} {'ratio':>6} {'decode tok/s':>13} {'ratio':>6}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['label']:<18} {r['device'][:22]:<22} {r['prefill_tps']:>14.1f} {r['prefill_ratio'] or 0:>6.3f} "
            f"{r['decode_tps']:>13.1f} {r['decode_ratio'] or 0:>6.3f}"
        )
    lines.append(
        f"prompt {result['prompt_tokens']} tokens, {result['new_tokens']} new tokens (EOS ignored), greedy; "
        f"medians of {result['runs']} interleaved runs; ratios against {result['baseline']}"
    )
    return "\n".join(lines)
