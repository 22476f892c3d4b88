"""Do llama.cpp and MLX agree on the next token? One prefill per prompt on each backend.

    python scripts/logits_agreement.py [--chat] [-c CONFIG]

Prints, per prompt, each backend's top-1 token and probability and whether they agree
(same weights: the embedded GGUF on llama.cpp and its lossless MLX import).
"""

from __future__ import annotations

import argparse
import sys

PROMPTS = [
    "The capital of France is",
    "Monday, Tuesday, Wednesday, Thursday,",
    "1, 2, 3, 4, 5,",
    "def add(a, b):\n    return",
    "The opposite of hot is",
    "La capital de Francia es",
    "Water is made of hydrogen and",
    "The first president of the United States was",
    "Once upon a",
    "import numpy as",
]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", default=None)
    parser.add_argument("--chat", action="store_true", help="apply the chat template (default: raw prompts)")
    args = parser.parse_args()
    from mlxgen import hardware

    hardware.gather_facts()  # llama_cpp before numpy (see cli.probe_hardware)
    from mlxgen import logits, session
    from mlxgen.config import load_config

    sessions = {}
    for name in ("llama.cpp", "mlx"):
        cfg = load_config(args.config, {"backend": name, "inference.raw": not args.chat})
        sessions[name] = session.open_session(cfg, session.plan(cfg).choice)
    agree = 0
    print(f"{'prompt':<48} {'llama.cpp top-1':<22} {'mlx top-1':<22} same")
    for prompt in PROMPTS:
        tops = []
        for sess in sessions.values():
            _, ids = sess.prompt(prompt)
            sess.backend.trim(0)
            ops = getattr(sess.backend, "sampling_ops", logits.NUMPY)
            values = logits.to_numpy(sess.backend.prefill(ids), ops)
            probs = logits.NUMPY.softmax(values)
            best = int(probs.argmax())
            tops.append((best, f"{sess.tokenizer.decode([best])!r} {probs[best]:.3f}"))
        same = tops[0][0] == tops[1][0]
        agree += same
        print(f"{prompt!r:<48} {tops[0][1]:<22} {tops[1][1]:<22} {'yes' if same else 'NO'}")
    print(f"top-1 agreement: {agree}/{len(PROMPTS)}")
    for sess in sessions.values():
        sess.close()
    return 0 if agree == len(PROMPTS) else 1


if __name__ == "__main__":
    sys.exit(main())
