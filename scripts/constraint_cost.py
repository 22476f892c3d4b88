"""What a constraint costs per generated token, in CPU time as well as wall time.

`mlxgen bench --json-schema FILE` gives the wall-clock ratio (constrained / plain,
interleaved). On a machine other jobs share, wall time swings by more than the effect,
so this script also measures CPU time, which other processes do not inflate:

- the process's CPU seconds per token, plain and constrained runs interleaved (A B B A …);
- the constraint's own work per token (mask, apply, accept), timed inside the loop.

    python scripts/constraint_cost.py --backend llama.cpp -n 128 -r 6 --json-schema schema.json
    python scripts/constraint_cost.py --backend mlx -n 64 -r 4

Without ``--json-schema`` it uses an array of at least 20 {name, age, city} objects, so
the grammar stays open for every token (a finished grammar only allows EOS, which is cheap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SCHEMA = {"type": "array", "minItems": 20, "items": {
    "type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                     "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                     "city": {"type": "string", "maxLength": 30}},
    "required": ["name", "age", "city"], "additionalProperties": False}}


class Timed:
    """A constraint that times the one it wraps (thread CPU time: what this process's Python spends)."""

    needs_history = False

    def __init__(self, inner) -> None:
        self.inner, self.cpu, self.wall, self.calls = inner, 0.0, 0.0, 0

    def __call__(self, history, logits):
        w, c = time.perf_counter(), time.thread_time()
        out = self.inner(history, logits)
        self.cpu += time.thread_time() - c
        self.wall += time.perf_counter() - w
        self.calls += 1
        return out

    def accept(self, token: int) -> None:
        w, c = time.perf_counter(), time.thread_time()
        self.inner.accept(token)
        self.cpu += time.thread_time() - c
        self.wall += time.perf_counter() - w

    def rollback(self, n: int) -> None:
        self.inner.rollback(n)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="llama.cpp")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-r", type=int, default=6)
    ap.add_argument("--json-schema")
    ap.add_argument("-t", "--threads", type=int, default=1)
    args = ap.parse_args()

    from mlxgen import constraint, hardware
    from mlxgen.config import load_config
    from mlxgen.loop import Done
    from mlxgen.session import open_session

    cfg = load_config(None, {"backend": args.backend, "inference.temperature": 0.0, "llm.n_threads": args.threads})
    sess = open_session(cfg, hardware.detect(hardware.gather_facts(), args.backend))
    schema = json.load(open(args.json_schema)) if args.json_schema else SCHEMA
    grammar = constraint.bind(constraint.make_spec("json_schema", json.dumps(schema)), sess.tokenizer,
                              sess.backend.vocab_size, sess.eos_ids)
    _, ids = sess.prompt("List people with their age and city.")

    def once(constrained: bool):
        timed = Timed(grammar.matcher(sess.ops)) if constrained else None
        sample = sess.sampler(processors=(timed,) if timed else ())
        sess.cache.prepare([])
        w, c = time.perf_counter(), time.process_time()
        done = [e for e in sess.generate(ids, ignore_eos=True, max_tokens=args.n, sample=sample)
                if isinstance(e, Done)][0]
        wall, cpu = time.perf_counter() - w, time.process_time() - c
        assert len(done.trace) == args.n
        if timed:
            assert timed.inner.open_tokens == args.n, timed.inner.open_tokens  # the grammar stayed open
        return wall / args.n, cpu / args.n, timed

    once(False), once(True)  # warm-up
    plain, con, own_cpu, own_wall = [], [], [], []
    for i in range(args.r):
        for kind in ((False, True) if i % 2 == 0 else (True, False)):
            wall, cpu, timed = once(kind)
            (con if kind else plain).append((wall, cpu))
            if timed:
                own_cpu.append(timed.cpu / args.n)
                own_wall.append(timed.wall / args.n)
    sess.close()
    med = statistics.median
    wall_ratio = med(c[0] / p[0] for p, c in zip(plain, con))
    cpu_ratio = med(c[1] / p[1] for p, c in zip(plain, con))
    out = {
        "backend": args.backend, "device": sess.backend.device, "tokens": args.n, "runs": args.r,
        "plain_ms_per_token": {"wall": round(med(p[0] for p in plain) * 1e3, 3), "cpu": round(med(p[1] for p in plain) * 1e3, 3)},
        "constrained_ms_per_token": {"wall": round(med(c[0] for c in con) * 1e3, 3), "cpu": round(med(c[1] for c in con) * 1e3, 3)},
        "constrained_over_plain": {"wall": round(wall_ratio, 4), "cpu": round(cpu_ratio, 4)},
        "constraint_own_us_per_token": {"cpu": round(med(own_cpu) * 1e6, 1), "wall": round(med(own_wall) * 1e6, 1)},
        "constraint_own_share_of_plain_cpu": round(med(own_cpu) / med(p[1] for p in plain), 4),
        "compile_ms": round(grammar.compile_ms, 3),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
