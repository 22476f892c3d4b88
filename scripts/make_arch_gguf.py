#!/usr/bin/env python3
"""Tiny random-weight GGUFs of each architecture the MLX import maps, as llama.cpp's converter writes them.

Real tensor names and metadata keys (gguf.constants), a byte-level BPE vocabulary that
llama.cpp and mlxgen both read, F16 matrices (or any type via scripts/quantize_gguf.py).
The weights are random, scaled so the next-token distribution is peaked (teacher-forced
top-1 agreement between engines is then a meaningful test of the mapping).

    python scripts/make_arch_gguf.py OUT_DIR [--arch gemma3 ...] [--dim 256] [--type Q4_K_M]

Architectures: llama (plain), llama-rope-freqs (Llama 3.1-style rope factors), mistral
(= llama, sliding-window-free), gemma3 (6 layers: 5 sliding, 1 global), phi3, qwen2moe, qwen3moe.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from gguf_writer import add_shape, finish

ARCHS = ("llama", "llama-rope-freqs", "mistral", "gemma3", "phi3", "qwen2moe", "qwen3moe")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}


def byte_tokens() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: every byte is one token (no merges)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return sorted(chr(c) for c in cs)


def write_arch_gguf(out: Path, arch: str, *, dim: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                    head_dim: int = 64, ffn: int = 512, experts: int = 4, used: int = 2, seed: int = 0,
                    matrix_type=np.float16) -> Path:
    """Write the tiny ``arch`` model (F16 or F32 matrices, F32 vectors) to ``out``."""
    import gguf

    from mlxgen.backends.gguf_arch import llama3_factors

    if arch == "mistral":  # Mistral 7B's shape in small: 4 query heads per KV head, rope base 1e6
        heads, kv_heads, head_dim, seed = 8, 2, 32, seed + 1
    rng = np.random.default_rng(seed)
    gguf_arch = {"llama-rope-freqs": "llama", "mistral": "llama"}.get(arch, arch)
    if gguf_arch == "gemma3":
        layers = max(layers, 6)
    w = gguf.GGUFWriter(str(out), gguf_arch)
    w.add_name("tiny random model")  # (llama.cpp special-cases vocabularies by model name, e.g. "phi3")
    tokens = byte_tokens() + ["Ġt"] + SPECIALS  # llama.cpp needs at least one merge
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS))
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    vocab = len(tokens)
    base = 1000000.0 if arch == "mistral" else 10000.0
    add_shape(w, dim=dim, layers=layers, ffn=ffn, heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
              eps=1e-6, rope_base=base)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    if gguf_arch == "gemma3":
        w.add_sliding_window(16)  # short, so the windows matter within a prompt
    if gguf_arch in ("qwen2moe", "qwen3moe"):
        w.add_expert_count(experts)
        w.add_expert_used_count(used)
        w.add_expert_feed_forward_length(ffn // 2)
        if gguf_arch == "qwen2moe":
            w.add_expert_shared_feed_forward_length(ffn)

    def mat(name: str, rows: int, cols: int, scale: float = 1.0, lead: tuple = ()) -> None:
        data = rng.standard_normal(lead + (rows, cols)) * (scale / math.sqrt(cols))
        w.add_tensor(name, data.astype(matrix_type))

    def vec(name: str, n: int, around: float = 1.0, spread: float = 0.2) -> None:
        w.add_tensor(name, (around + spread * rng.standard_normal(n)).astype(np.float32))

    norm_one = 2.0 if gguf_arch == "gemma3" else 1.0  # gemma: llama.cpp stores 1 + w (w around 1 here)
    q, kv = heads * head_dim, kv_heads * head_dim
    # gemma ties the output to the embedding: a small embedding (x sqrt(dim) on input) and a
    # strong final norm, so the layers (not the input token) decide the next token
    mat("token_embd.weight", vocab, dim, scale=math.sqrt(dim) if gguf_arch != "gemma3" else 1.0)
    vec("output_norm.weight", dim, 4.0 if gguf_arch == "gemma3" else norm_one)
    if gguf_arch != "gemma3":  # gemma ties the output to the embedding
        mat("output.weight", vocab, dim, scale=6.0)
    if arch == "llama-rope-freqs":
        w.add_tensor("rope_freqs.weight", llama3_factors(LLAMA3_ROPE, base, head_dim).astype(np.float32))
    for i in range(layers):
        b = f"blk.{i}"
        vec(f"{b}.attn_norm.weight", dim, norm_one)
        vec(f"{b}.ffn_norm.weight", dim, norm_one)
        if gguf_arch == "phi3":
            mat(f"{b}.attn_qkv.weight", q + 2 * kv, dim, 2.0)
            mat(f"{b}.ffn_up.weight", 2 * ffn, dim)  # [gate; up]
            mat(f"{b}.ffn_down.weight", dim, ffn)
            mat(f"{b}.attn_output.weight", dim, q)
            continue
        mat(f"{b}.attn_q.weight", q, dim, 2.0)
        mat(f"{b}.attn_k.weight", kv, dim, 2.0)
        mat(f"{b}.attn_v.weight", kv, dim)
        mat(f"{b}.attn_output.weight", dim, q)
        if gguf_arch in ("gemma3", "qwen3moe"):
            vec(f"{b}.attn_q_norm.weight", head_dim, norm_one)
            vec(f"{b}.attn_k_norm.weight", head_dim, norm_one)
        if gguf_arch == "gemma3":
            vec(f"{b}.post_attention_norm.weight", dim, 3.0)
            vec(f"{b}.post_ffw_norm.weight", dim, 3.0)
        if gguf_arch == "qwen2moe":
            for name, n in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                vec(f"{b}.{name}.bias", n, 0.0, 0.1)
        if gguf_arch in ("qwen2moe", "qwen3moe"):
            e_ffn = ffn // 2
            mat(f"{b}.ffn_gate_inp.weight", experts, dim, 2.0)
            mat(f"{b}.ffn_gate_exps.weight", e_ffn, dim, lead=(experts,))
            mat(f"{b}.ffn_up_exps.weight", e_ffn, dim, lead=(experts,))
            mat(f"{b}.ffn_down_exps.weight", dim, e_ffn, lead=(experts,))
            if gguf_arch == "qwen2moe":
                vec(f"{b}.ffn_gate_inp_shexp.weight", dim, 0.0, 1 / math.sqrt(dim))
                mat(f"{b}.ffn_gate_shexp.weight", ffn, dim)
                mat(f"{b}.ffn_up_shexp.weight", ffn, dim)
                mat(f"{b}.ffn_down_shexp.weight", dim, ffn)
        else:
            mat(f"{b}.ffn_gate.weight", ffn, dim)
            mat(f"{b}.ffn_up.weight", ffn, dim)
            mat(f"{b}.ffn_down.weight", dim, ffn)
    finish(w)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--arch", action="append", choices=ARCHS, help="repeatable (default: all)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--type", default=None, help="re-quantize with llama.cpp (Q4_K_M, Q6_K, ...); default F16")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for arch in args.arch or ARCHS:
        path = args.out_dir / f"tiny-{arch}.F16.gguf"
        write_arch_gguf(path, arch, dim=args.dim, layers=args.layers, seed=args.seed)
        if args.type:
            from quantize_gguf import quantize

            final = args.out_dir / f"tiny-{arch}.{args.type}.gguf"
            quantize(path, final, args.type)
            path.unlink()
            path = final
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
