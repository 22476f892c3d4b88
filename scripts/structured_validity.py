"""Structured output on real models: validity, and the same greedy tokens on MLX and llama.cpp.

For every backend named (default: every installed one), on the embedded SmolLM2-135M:

- each of the 50 schemas in json_schemas.py, plus a few regexes and Lark grammars, at
  ``--temperature`` (0.8) with ``--seeds`` (3): every finished output (stop reason
  ``eos``) must parse and validate with ``jsonschema`` (formats checked) / fullmatch the
  regex / parse with the Lark grammar's own reference (a Python regex of it); outputs
  cut by ``--max-tokens`` are counted apart, and must not be reported complete;
- each schema greedily, constrained and unconstrained (``--free-tokens``), so the two
  backends' token ids can be compared where their unconstrained outputs agree.

    python scripts/structured_validity.py                  # both backends, full run
    python scripts/structured_validity.py --limit 5 --seeds 1 --backend llama.cpp
    python scripts/structured_validity.py --backend mlx --out mlx.jsonl &      # in parallel, then:
    python scripts/structured_validity.py --summarize llama.jsonl mlx.jsonl

    # identity on the same numbers: llama.cpp on the embedded weights stored as F32
    # (scripts/make_f16_gguf.py --f32: it then computes in float32, as MLX does), greedy only
    python scripts/structured_validity.py --backend llama.cpp --seeds 0 --llama-model F32.gguf --out f32.jsonl

Writes one JSON record per run to ``--out`` (JSON lines) and prints the counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from json_schemas import SCHEMAS  # noqa: E402

# (name, prompt, kind, value, a Python regex the whole output must match)
OTHERS = [
    ("regex_phone", "Give a phone number.", "regex", r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}"),
    ("regex_date", "When were you born?", "regex", r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])",
     r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])"),
    ("regex_yesno", "Is water wet?", "regex", r"(Yes|No)\. [A-Z][a-z ]{0,40}\.", r"(Yes|No)\. [A-Z][a-z ]{0,40}\."),
    ("regex_words", "Name three colors.", "regex", r"[a-z]+, [a-z]+, [a-z]+", r"[a-z]+, [a-z]+, [a-z]+"),
    ("lark_list", "List some fruits.", "grammar",
     'start: "[" item ("," " " item)* "]"\nitem: /[a-z]{1,12}/', r"\[[a-z]{1,12}(, [a-z]{1,12})*\]"),
    ("lark_sum", "Write an addition.", "grammar",
     'start: num " + " num " = " num\nnum: /[0-9]{1,3}/', r"[0-9]{1,3} \+ [0-9]{1,3} = [0-9]{1,3}"),
    ("lark_kv", "Write a key=value config with two lines.", "grammar",
     'start: line line\nline: /[a-z_]{1,12}/ "=" /[a-z0-9]{1,12}/ "\\n"', r"([a-z_]{1,12}=[a-z0-9]{1,12}\n){2}"),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", action="append", help="llama.cpp and/or mlx (default: every installed one)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--free-tokens", type=int, default=48, help="unconstrained greedy tokens to compare backends")
    ap.add_argument("--limit", type=int, default=None, help="only the first N schemas (and N others)")
    ap.add_argument("--start", type=int, default=0, help="skip the first N cases (split a slow backend over processes)")
    ap.add_argument("--out", default="structured_validity.jsonl")
    ap.add_argument("--llama-model", help="the GGUF llama.cpp runs (default: the embedded model)")
    ap.add_argument("--summarize", nargs="+", metavar="JSONL", help="only summarize earlier runs' files "
                    "(e.g. one per backend, run in parallel)")
    args = ap.parse_args()
    if args.summarize:
        records = [json.loads(line) for path in args.summarize for line in open(path, encoding="utf-8")]
        once = {(r["backend"], r["case"], r["mode"], r["seed"]): r for r in records}  # split runs may overlap
        records = list(once.values())
        names = list(dict.fromkeys(r["backend"] for r in records))
        summary = summarize(records, names)
        print(json.dumps(summary, indent=1))
        return 0 if summary["invalid_finished"] == 0 and summary["claimed_complete_but_invalid"] == 0 else 1

    from mlxgen import backends, hardware

    names = args.backend or backends.installed()
    facts = hardware.gather_facts()
    out = open(args.out, "w", encoding="utf-8")
    records = []
    for name in names:
        t0 = time.perf_counter()
        recs = run_backend(name, facts, args, out)
        records += recs
        print(f"{name}: {len(recs)} runs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    out.close()
    summary = summarize(records, names)
    print(json.dumps(summary, indent=1))
    return 0 if summary["invalid_finished"] == 0 and summary["claimed_complete_but_invalid"] == 0 else 1


def run_backend(name: str, facts, args, out) -> list[dict]:
    import jsonschema

    from mlxgen import constraint, hardware
    from mlxgen.config import load_config
    from mlxgen.loop import Done
    from mlxgen.session import open_session, sampling_params
    from mlxgen.sources import model_source

    model = model_source(args.llama_model) if name == "llama.cpp" and args.llama_model else {}
    cfg = load_config(None, {"backend": name, "inference.temperature": args.temperature,
                             "inference.max_length": args.max_tokens, **model})
    sess = open_session(cfg, hardware.detect(facts, name))
    cases = [(n, p, "json_schema", json.dumps(sc), sc) for n, p, sc in SCHEMAS[: args.limit]]
    cases += [(n, p, k, v, rx) for n, p, k, v, rx in OTHERS[: args.limit]]
    cases = cases[args.start:]
    records: list[dict] = []

    def keep(r: dict) -> None:  # written as it comes: a long run interrupted keeps what finished
        records.append(r)
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
        out.flush()

    def run(ids, params, spec=None, max_tokens=None):
        sess.constraint = constraint.bind(spec, sess.tokenizer, sess.backend.vocab_size, sess.eos_ids) if spec else None
        sample = sess.sampler(params)
        matcher = sample.constraints[0] if sample.constraints else None
        done = [e for e in sess.complete(ids, sample=sample, max_tokens=max_tokens) if isinstance(e, Done)][0]
        return done, matcher

    try:
        for case, prompt, kind, value, check in cases:
            spec = constraint.make_spec(kind, value)
            _, ids = sess.prompt(prompt + (" Answer in JSON." if kind == "json_schema" else ""))
            base = sampling_params(cfg)
            for seed in range(args.seeds):
                done, matcher = run(ids, dataclasses.replace(base, seed=seed), spec)
                keep(record(name, case, kind, "sampled", seed, done, matcher, valid(kind, check, done.text, jsonschema)))
            greedy = dataclasses.replace(base, temperature=0.0)
            done, matcher = run(ids, greedy, spec)
            keep(record(name, case, kind, "greedy", None, done, matcher, valid(kind, check, done.text, jsonschema)))
            free, _ = run(ids, greedy, None, args.free_tokens)
            keep(record(name, case, kind, "free", None, free, None, None))
            print(f"{name} {case}: done", file=sys.stderr, flush=True)
    finally:
        sess.close()
    return records


def valid(kind: str, check, text: str, jsonschema) -> tuple[bool, str]:
    if kind == "json_schema":
        try:
            data = json.loads(text)
        except ValueError as e:
            return False, f"not JSON: {e}"
        try:
            jsonschema.validate(data, check, format_checker=jsonschema.FormatChecker())
        except jsonschema.ValidationError as e:
            return False, f"invalid: {e.message}"
        return True, ""
    return (True, "") if re.fullmatch(check, text) else (False, "no match")


def record(backend, case, kind, mode, seed, done, matcher, validity) -> dict:
    return {"backend": backend, "case": case, "kind": kind, "mode": mode, "seed": seed, "reason": done.reason,
            "complete": matcher.complete if matcher else None, "valid": validity[0] if validity else None,
            "why": validity[1] if validity else "", "tokens": done.tokens, "text": done.text}


def summarize(records: list[dict], names: list[str]) -> dict:
    out: dict = {"per_backend": {}}
    bad = claimed = 0
    for name in names:
        mine = [r for r in records if r["backend"] == name and r["mode"] in ("sampled", "greedy")]
        by_kind = {}
        for kind in ("json_schema", "regex", "grammar"):
            rs = [r for r in mine if r["kind"] == kind and r["mode"] == "sampled"]
            fin = [r for r in rs if r["reason"] == "eos"]
            by_kind[kind] = {"runs": len(rs), "finished": len(fin), "valid": sum(r["valid"] for r in fin),
                             "cut_by_length": sum(r["reason"] == "length" for r in rs),
                             "cut_but_a_full_match": sum(r["reason"] == "length" and r["complete"] and r["valid"]
                                                         for r in rs)}
        bad += sum(1 for r in mine if r["reason"] == "eos" and not r["valid"])
        claimed += sum(1 for r in mine if r["complete"] and not r["valid"])  # any stop reason
        out["per_backend"][name] = by_kind
        out["per_backend"][name]["invalid_examples"] = [
            (r["case"], r["why"], r["text"][:120]) for r in mine if r["reason"] == "eos" and not r["valid"]][:5]
    out["invalid_finished"] = bad
    out["claimed_complete_but_invalid"] = claimed
    if len(names) == 2:
        a, b = names
        pick = lambda n, mode: {r["case"]: r["tokens"] for r in records if r["backend"] == n and r["mode"] == mode}
        free_a, free_b, con_a, con_b = pick(a, "free"), pick(b, "free"), pick(a, "greedy"), pick(b, "greedy")
        both = [c for c in free_a if c in free_b and c in con_a and c in con_b]
        agree = [c for c in both if free_a[c] == free_b[c]]
        out["cross_backend"] = {
            "cases": len(both), "unconstrained_agree": len(agree),
            "constrained_identical_where_unconstrained_agree": sum(con_a[c] == con_b.get(c) for c in agree),
            "constrained_identical_all": sum(con_a[c] == con_b[c] for c in both),
            "differ": [c for c in agree if con_a[c] != con_b.get(c)],
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
