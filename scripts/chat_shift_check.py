"""A scripted long chat in a small context (--context-overflow shift), checked against fresh runs.

    python scripts/chat_shift_check.py --backend llama.cpp [--turns 40] [--ctx 512] [-n 40]
                                       [--checks 100] [--kv-bits 8] [--json]

Runs ``--turns`` scripted user messages through one ``Conversation`` (greedy, chat's
default overflow: shift), with no /reset. After every turn whose context was shifted
(the oldest turns dropped), a second session with an empty cache runs the same prompt
(the kept tokens) fresh, and the two answers are compared token by token: identical, or
the first position where they part and the share of positions that agree.

On llama.cpp the kept turns are moved down in place (``llama_memory_seq_rm`` +
``llama_memory_seq_add``): their keys are re-rotated but their values were computed
with the dropped turns in view, so an answer may differ from a fresh run's. On MLX the
kept tokens are prefilled again, which is what a fresh run does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

TOPICS = ["cats", "the sea", "bread", "rain", "mountains", "the moon", "bicycles", "tea", "winter", "music",
          "trees", "rivers", "coffee", "books", "trains", "gardens", "snow", "the sun", "birds", "chess",
          "apples", "clocks", "bridges", "islands", "deserts", "owls", "candles", "maps", "violins", "honey",
          "volcanoes", "lighthouses", "kites", "forests", "glaciers", "wolves", "lanterns", "harbors", "comets", "tulips"]


def open_session(args):
    from mlxgen import session
    from mlxgen.config import load_config

    cfg = load_config(None, {"backend": args.backend, "llm.n_ctx": args.ctx, "llm.n_threads": args.threads,
                             "llm.kv_bits": args.kv_bits, "inference.temperature": 0.0,
                             "inference.max_length": args.n})
    return session.open_session(cfg, session.plan(cfg).choice)


def compare(a: list[int], b: list[int]) -> dict:
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    n = max(len(a), len(b))
    same = sum(x == y for x, y in zip(a, b))
    return {"identical": first is None, "first_difference": first, "agree": same / n if n else 1.0,
            "len": [len(a), len(b)]}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True, choices=["llama.cpp", "mlx"])
    p.add_argument("--turns", type=int, default=40)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("-n", type=int, default=40, help="max tokens per answer")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kv-bits", type=int, default=None)
    p.add_argument("--checks", type=int, default=100, help="fresh-run comparisons at most (they cost a prefill each)")
    p.add_argument("--json", dest="as_json", action="store_true")
    args = p.parse_args()
    from mlxgen import hardware

    hardware.gather_facts()
    from mlxgen.conversation import Conversation
    from mlxgen.loop import Done
    from mlxgen.repl import turn_line

    chat_sess, fresh_sess = open_session(args), open_session(args)
    conv = Conversation(chat_sess)
    sent: list[list[int]] = []
    complete = chat_sess.complete

    def spy(ids, **kw):  # the prompt ids each turn really sent (after its shift)
        sent.append(list(ids))
        return complete(ids, **kw)

    chat_sess.complete = spy
    drain = lambda events: [e for e in events][-1]  # noqa: E731
    rows, t0, errors = [], time.perf_counter(), []
    for i in range(args.turns):
        message = f"Tell me one short fact about {TOPICS[i % len(TOPICS)]}."
        try:
            turn = conv.turn(message, drain)
        except Exception as e:  # the check is that none happens
            errors.append(f"turn {i + 1}: {type(e).__name__}: {e}")
            break
        row = {"turn": i + 1, "prompt_tokens": turn.prompt_tokens, "reused": turn.reused, "new": turn.new,
               "reason": turn.done.reason, "shift": turn.shift, "cached_after": len(chat_sess.cache.ids)}
        print(f"turn {i + 1}: {turn_line(turn)}", file=sys.stderr, flush=True)
        if turn.shift and sum(1 for r in rows if "fresh" in r) < args.checks:
            fresh_sess.cache.reset()
            sample = fresh_sess.sampler(conv.params)
            done = [e for e in fresh_sess.generate(sent[-1], sample=sample, max_tokens=args.n, overflow="shift")][-1]
            assert isinstance(done, Done)
            ours = [t for t, _ in turn.done.trace]
            row["fresh"] = compare(ours, [t for t, _ in done.trace])
            print(f"  fresh run on the {len(sent[-1])} kept tokens: {row['fresh']}", file=sys.stderr, flush=True)
        rows.append(row)
    checked = [r["fresh"] for r in rows if "fresh" in r]
    summary = {
        "backend": args.backend, "ctx": args.ctx, "n": args.n, "kv_bits": args.kv_bits,
        "turns_done": len(rows), "turns_asked": args.turns, "errors": errors,
        "reasons": {r: sum(x["reason"] == r for x in rows) for r in {x["reason"] for x in rows}},
        "shifted_turns": sum(1 for r in rows if r["shift"]),
        "in_place": sum(1 for r in rows if r["shift"] and r["shift"]["in_place"]),
        "dropped_turns": sum(r["shift"]["dropped_turns"] for r in rows if r["shift"]),
        "max_cached": max((r["cached_after"] for r in rows), default=0),
        "checked": len(checked), "identical": sum(c["identical"] for c in checked),
        "first_differences": [c["first_difference"] for c in checked if not c["identical"]],
        "mean_agree": sum(c["agree"] for c in checked) / len(checked) if checked else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    chat_sess.close()
    fresh_sess.close()
    print(json.dumps({"summary": summary, "turns": rows} if args.as_json else summary, indent=1))
    return 0 if not errors and len(rows) == args.turns else 1


if __name__ == "__main__":
    sys.exit(main())
