"""`mlxgen bench`: prefill and decode speed per backend, as ratios to a baseline.

Every backend runs the same prompt ids through the shared loop, greedy, with one
warm-up and then interleaved measured runs (A B A B ...), so slow drift of a noisy
machine hits every backend alike. Medians are reported; the first backend listed
is the baseline of the ratios.
"""

from __future__ import annotations

import dataclasses
import statistics

from mlxgen import hardware
from mlxgen.config import Config
from mlxgen.loop import Done

DEFAULT_PROMPT = (
    "Explain, step by step, how a transformer language model turns a prompt into text: "
    "tokenization, embeddings, attention, the KV cache, sampling and detokenization."
)


def run_bench(cfg: Config, names: list[str] | None, prompt: str, runs: int) -> dict:
    from mlxgen import session

    facts = hardware.gather_facts()
    names = names or [hardware.detect(facts, cfg.backend).backend]
    sessions = []
    try:
        for name in names:
            choice = hardware.detect(facts, name)
            sessions.append(session.open_session(dataclasses.replace(cfg, backend=name), choice))
        ids = sessions[0].prompt(prompt)[1]
        samples: dict[str, list[Done]] = {s.choice.backend: [] for s in sessions}
        for s in sessions:
            _once(s, ids)  # warm-up
        for _ in range(runs):
            for s in sessions:
                samples[s.choice.backend].append(_once(s, ids))
    finally:
        for s in sessions:
            s.close()
    rows = []
    for s in sessions:
        done = samples[s.choice.backend]
        rows.append(
            {
                "backend": s.choice.backend,
                "device": s.backend.device,
                "prompt_tokens": len(ids),
                "generated_tokens": statistics.median(d.stats.generated_tokens for d in done),
                "prefill_tps": statistics.median(d.stats.prefill_tps or 0.0 for d in done),
                "decode_tps": statistics.median(d.stats.decode_tps or 0.0 for d in done),
                "runs": len(done),
            }
        )
    base = rows[0]
    for row in rows:
        row["prefill_ratio"] = row["prefill_tps"] / base["prefill_tps"] if base["prefill_tps"] else None
        row["decode_ratio"] = row["decode_tps"] / base["decode_tps"] if base["decode_tps"] else None
    return {"baseline": base["backend"], "max_tokens": cfg.inference.max_length, "rows": rows}


def _once(sess, ids: list[int]) -> Done:
    sess.backend.trim(0)
    for event in sess.generate(ids):
        if isinstance(event, Done):
            return event
    raise AssertionError("the loop ended without a Done event")


def format_table(result: dict) -> str:
    head = f"{'backend':<10} {'device':<24} {'prompt':>6} {'gen':>5} {'prefill tok/s':>14} {'x':>6} {'decode tok/s':>13} {'x':>6}"
    lines = [head, "-" * len(head)]
    for r in result["rows"]:
        lines.append(
            f"{r['backend']:<10} {r['device'][:24]:<24} {r['prompt_tokens']:>6} {r['generated_tokens']:>5.0f} "
            f"{r['prefill_tps']:>14.1f} {r['prefill_ratio'] or 0:>6.2f} {r['decode_tps']:>13.1f} {r['decode_ratio'] or 0:>6.2f}"
        )
    lines.append(f"medians of {result['rows'][0]['runs']} interleaved runs; ratios against {result['baseline']}")
    return "\n".join(lines)
