"""GGUF -> MLX: a normal mlx-lm model folder from a llama.cpp file.

    config.json                  mlx-lm model args + per-layer "quantization"
    model.safetensors            MLX affine-quantized weights (weight, scales, biases)
    tokenizer.json               from the GGUF vocabulary (mlxgen.gguf_vocab)
    tokenizer_config.json        chat template, bos/eos tokens
    generation_config.json       eos ids

Q4_0, Q4_1 and Q8_0 blocks are re-laid out as MLX affine groups of 32 with their own
bit width: no loss (``d*q + m`` is MLX's ``scale*q + bias``). Every other type that
``gguf.quants`` can read (K-quants, Q5_x, IQ*, ...) is dequantized and requantized to
MLX ``bits``/``group_size`` (default 4/64). F32/F16/BF16 tensors are kept as they are.

llama.cpp's converter permutes the rows of llama's attn_q/attn_k for its rope layout;
the import undoes that so mlx-lm's standard models give the right logits. On quantized
tensors the permutation is over output rows, so it applies to weight, scales and biases.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mlxgen.errors import ModelError

SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3")

# GGUF tensor name (after "blk.N.") -> mlx-lm / Hugging Face module path
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# Block layouts MLX can take over losslessly: (block bytes, bits)
_LOSSLESS = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q8_0": (34, 8)}
_FLOATS = ("F32", "F16", "BF16")


@dataclass
class Imported:
    """What an import produced, for the caller's summary line."""

    arch: str
    tensors: int
    lossless: int  # tensors re-laid out without loss
    requantized: int  # tensors dequantized and requantized
    kept_float: int


def import_gguf(
    path: Path,
    out: Path,
    bits: int = 4,
    group_size: int = 64,
    progress: Callable[[str], None] | None = None,
) -> Imported:
    """Write the mlx-lm folder for the GGUF at ``path`` into the (empty) folder ``out``."""
    import mlx.core as mx
    from gguf import GGUFReader

    from mlxgen.gguf_check import GGUFFormatError, check

    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        check(path)  # bounds-checked structure first: GGUFReader trusts every count it reads
        reader = GGUFReader(str(path))
    except GGUFFormatError as e:
        raise ModelError(f"{path}: not a readable GGUF file ({e.problem})") from None
    except ModelError:
        raise
    except Exception as e:  # gguf raises ValueError / struct errors on a bad file
        raise ModelError(f"{path}: not a readable GGUF file ({_first_line(e)})") from None
    meta = _Meta(reader, path)
    arch = meta.get("general.architecture", "?")
    if not isinstance(arch, str) or arch not in SUPPORTED_ARCHS:
        raise ModelError(
            f"{path.name}: GGUF architecture {_short(arch)} is not supported yet by the MLX import "
            f"(supported: {', '.join(SUPPORTED_ARCHS)}); use --backend llama.cpp"
        )
    _check_types(reader, path)
    try:
        config = _model_config(meta, arch, reader)
        _check_shapes(reader, config, arch)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    weights: dict[str, "mx.array"] = {}
    quant: dict[str, object] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    stats = Imported(arch, len(reader.tensors), 0, 0, 0)
    total = len(reader.tensors)
    say(f"mlxgen: importing {path.name} ({arch}, {total} tensors) to MLX")
    for i, t in enumerate(reader.tensors, 1):
        name = _hf_name(t.name, path)
        if name is None:
            continue
        kind = t.tensor_type.name
        rows = int(t.shape[-1]) if len(t.shape) > 1 else 1
        cols = int(t.shape[0])
        if kind in _LOSSLESS:
            w, s, b, tbits = _lossless(np.asarray(t.data), kind, rows, cols)
            parts = {"weight": w, "scales": s, "biases": b}
            layer = {"group_size": 32, "bits": tbits, "mode": "affine"}
            stats.lossless += 1
        elif kind in _FLOATS:
            parts = {"weight": _float(t, kind, rows, cols)}
            layer = None
            stats.kept_float += 1
        else:
            parts, layer = _requantize(t, kind, rows, cols, bits, group_size)
            stats.requantized += layer is not None
            stats.kept_float += layer is None
        if arch == "llama" and t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            heads = n_heads if ".attn_q." in t.name else n_kv
            parts = {k: _unpermute(v, heads) for k, v in parts.items()}
        module = name[: -len(".weight")] if name.endswith(".weight") else name
        if name.endswith(".weight"):
            for k, v in parts.items():
                weights[f"{module}.{k}"] = mx.array(v)
        else:  # a bias or other vector: kept as is
            weights[name] = mx.array(parts["weight"])
        if layer is not None:
            quant[module] = layer
        if i % 50 == 0 or i == total:
            say(f"mlxgen:   {i}/{total} tensors")

    if len(quant) > 3:  # at least one quantized layer, each named with its own bits/group
        config["quantization"] = config["quantization_config"] = quant
    config["mlxgen_import"] = {"source": path.name, "lossless": stats.lossless, "requantized": stats.requantized,
                               "kept_float": stats.kept_float}  # ignored by mlx-lm; shown by bench
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_tokenizer(path, out, config["max_position_embeddings"])
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    say(
        f"mlxgen: imported {stats.tensors} tensors: {stats.lossless} lossless (Q4_0/Q4_1/Q8_0 as MLX groups of 32), "
        f"{stats.requantized} requantized to {bits}-bit group {group_size}, {stats.kept_float} kept as float"
    )
    return stats


# --------------------------------------------------------------------- metadata


class _Meta:
    def __init__(self, reader, path: Path | None = None) -> None:
        self.reader = reader
        self.path = path

    def get(self, key: str, default=None):
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            value = field.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as e:
            raise ModelError(f"{self.path}: GGUF metadata {key} cannot be read ({_first_line(e)})") from None
        return value if value is not None else default


MAX_DIM = 1 << 20  # no real model has a hidden size, head count or vocabulary beyond this


def _short(value) -> str:
    import reprlib

    return reprlib.repr(value)


def _int(meta: _Meta, key: str, default=None, high: int = MAX_DIM) -> int:
    value = meta.get(key, default)
    if value is None:
        raise ModelError(f"GGUF metadata {key} is missing")
    if isinstance(value, list) and value:  # e.g. head_count_kv given per layer
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ModelError(f"GGUF metadata {key} is {_short(value)}, expected an integer from 1 to {high}")
    return value


def _number(meta: _Meta, key: str, default=None) -> float:
    import math

    value = meta.get(key, default)
    if value is None:
        raise ModelError(f"GGUF metadata {key} is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ModelError(f"GGUF metadata {key} is {_short(value)}, expected a positive number")
    return float(value)


def _model_config(meta: _Meta, arch: str, reader) -> dict:
    hidden = _int(meta, f"{arch}.embedding_length")
    heads = _int(meta, f"{arch}.attention.head_count")
    kv = _int(meta, f"{arch}.attention.head_count_kv", heads)
    if heads % kv:
        raise ModelError(f"GGUF metadata {arch}.attention.head_count {heads} is not a multiple of head_count_kv {kv}")
    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise ModelError("GGUF has no token_embd.weight tensor")
    vocab = _int(meta, f"{arch}.vocab_size", int(embd.shape[-1]), high=1 << 24)
    head_dim = _int(meta, f"{arch}.attention.key_length", max(1, hidden // heads))
    if head_dim % 2:
        raise ModelError(f"GGUF head dimension {head_dim} ({arch}.attention.key_length) is odd; rope needs it even")
    config = {
        "model_type": arch,
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[arch]],
        "hidden_size": hidden,
        "num_hidden_layers": _int(meta, f"{arch}.block_count", high=4096),
        "intermediate_size": _int(meta, f"{arch}.feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "rms_norm_eps": _number(meta, f"{arch}.attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab,
        "rope_theta": _number(meta, f"{arch}.rope.freq_base", 10000.0 if arch == "llama" else 1000000.0),
        "max_position_embeddings": _int(meta, f"{arch}.context_length", 4096, high=1 << 31),
        "tie_word_embeddings": "output.weight" not in names,
        "rope_traditional": False,
    }
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ModelError(f"GGUF rope scaling {_short(scaling)} is not supported yet by the MLX import")
        config["rope_scaling"] = {"type": "linear", "factor": _number(meta, f"{arch}.rope.scaling.factor", 1.0)}
    if "rope_freqs.weight" in names:
        raise ModelError("GGUF rope frequency factors (rope_freqs, Llama 3.1+) are not supported yet by the MLX import")
    return config


def _check_shapes(reader, config: dict, arch: str) -> None:
    """Every tensor has the shape the metadata implies, and every layer has what mlx-lm needs."""
    hidden, ffn, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    layers = config["num_hidden_layers"]
    # GGUF order: (columns, rows) for a matrix, (n,) for a vector
    expect = {
        "token_embd.weight": (hidden, vocab), "output.weight": (hidden, vocab), "output_norm.weight": (hidden,),
    }
    per_layer = {
        "attn_norm.weight": (hidden,), "ffn_norm.weight": (hidden,),
        "attn_q.weight": (hidden, q), "attn_k.weight": (hidden, kv), "attn_v.weight": (hidden, kv),
        "attn_output.weight": (q, hidden), "attn_q.bias": (q,), "attn_k.bias": (kv,), "attn_v.bias": (kv,),
        "attn_output.bias": (hidden,), "attn_q_norm.weight": (config["head_dim"],),
        "attn_k_norm.weight": (config["head_dim"],),
        "ffn_gate.weight": (hidden, ffn), "ffn_up.weight": (hidden, ffn), "ffn_down.weight": (ffn, hidden),
    }
    required = ["attn_norm.weight", "ffn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
                "attn_output.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"]
    if arch == "qwen2":
        required += ["attn_q.bias", "attn_k.bias", "attn_v.bias"]
    if arch == "qwen3":
        required += ["attn_q_norm.weight", "attn_k_norm.weight"]
    if config.get("attention_bias"):
        required += ["attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias"]
    names = set()
    for t in reader.tensors:
        m = re.fullmatch(r"blk\.(\d+)\.(.+)", t.name)
        if m:
            if int(m.group(1)) >= layers:
                raise ModelError(f"GGUF tensor {t.name} is past the model's {layers} layers (block_count)")
            want = per_layer.get(m.group(2))
        else:
            want = expect.get(t.name)
        shape = tuple(int(d) for d in t.shape)
        if want is not None and shape != want:
            raise ModelError(f"GGUF tensor {t.name} has shape {list(shape)}, expected {list(want)} from the metadata")
        names.add(t.name)
    for name in ["output_norm.weight"] + [f"blk.{i}.{part}" for i in range(layers) for part in required]:
        if name not in names:
            raise ModelError(f"GGUF tensor {name} is missing")


def _hf_name(gguf_name: str, path: Path) -> str | None:
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, suffix = m.groups()
        if part in _LAYER_NAMES:
            return f"model.layers.{layer}.{_LAYER_NAMES[part]}.{suffix}"
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in _TOP_NAMES:
        return f"{_TOP_NAMES[m.group(1)]}.{m.group(2)}"
    raise ModelError(f"{path.name}: tensor {gguf_name!r} has no MLX counterpart in the import")


def _check_types(reader, path: Path) -> None:
    import gguf.quants as gq

    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind in _LOSSLESS or kind in _FLOATS:
            continue
        traits = getattr(gq, "_type_traits", {}).get(t.tensor_type)
        if traits is None:
            raise ModelError(
                f"{path.name}: tensor {t.name} has type {kind}, which the MLX import cannot read "
                f"(supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0 and the types gguf.quants dequantizes)"
            )


# --------------------------------------------------------------------- tensors


def _lossless(raw: np.ndarray, kind: str, rows: int, cols: int):
    """ggml blocks of 32 -> MLX affine (packed uint32 weight, f16 scales, f16 biases)."""
    block, bits = _LOSSLESS[kind]
    blocks = raw.reshape(rows, cols // 32, block)
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0]
    if kind == "Q8_0":
        q = (np.ascontiguousarray(blocks[..., 2:]).view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        weight = q.reshape(rows, cols).view(np.uint32)
        return weight, d, (d.astype(np.float32) * -128).astype(np.float16), bits
    qs = blocks[..., 4:] if kind == "Q4_1" else blocks[..., 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # element j in the low nibble, j+16 in the high
    packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    weight = np.ascontiguousarray(packed).reshape(rows, cols // 2).view(np.uint32)
    if kind == "Q4_1":
        m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0]
        return weight, d, m, bits
    return weight, d, (d.astype(np.float32) * -8).astype(np.float16), bits


def _float(t, kind: str, rows: int, cols: int) -> np.ndarray:
    data = np.asarray(t.data)
    if kind == "BF16":
        import gguf.quants as gq
        import mlx.core as mx

        return mx.array(gq.dequantize(data, t.tensor_type)).astype(mx.bfloat16)
    shape = (rows, cols) if len(t.shape) > 1 else (cols,)
    return data.reshape(shape)


def _requantize(t, kind: str, rows: int, cols: int, bits: int, group_size: int):
    import gguf.quants as gq
    import mlx.core as mx

    dense = gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(rows, cols) if len(t.shape) > 1 else None
    if dense is None:
        return {"weight": gq.dequantize(np.asarray(t.data), t.tensor_type).reshape(cols)}, None
    for group in (group_size, 32):
        if cols % group == 0:
            w, s, b = mx.quantize(mx.array(dense, dtype=mx.float16), group_size=group, bits=bits)
            return {"weight": w, "scales": s, "biases": b}, {"group_size": group, "bits": bits, "mode": "affine"}
    return {"weight": mx.array(dense, dtype=mx.float16)}, None


def _unpermute(x, n_heads: int):
    """Undo llama.cpp's ``permute`` (convert_hf_to_gguf.py) over the rows of x."""
    rows = x.shape[0]
    rest = tuple(x.shape[1:])
    return (
        x.reshape((n_heads, rows // n_heads // 2, 2) + rest).swapaxes(1, 2).reshape((rows,) + rest)
    )


# --------------------------------------------------------------------- tokenizer


def _write_tokenizer(path: Path, out: Path, context_length: int) -> None:
    from tokenizers import Tokenizer as HF
    from tokenizers.processors import TemplateProcessing

    from mlxgen.tokenizer import HFTokenizer

    tok = HFTokenizer.from_gguf(path)
    hf = HF.from_str(tok.hf.to_str())
    bos = tok.special.get("bos_token")
    if tok.add_bos and tok.bos_id is not None and bos:
        # The GGUF says "add BOS": make the tokenizer.json say so too, for mlx-lm and for us.
        try:
            hf.post_processor = TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, tok.bos_id)]
            )
        except Exception as e:  # tokenizers raises a bare Exception, e.g. for a BOS token with a space
            raise ModelError(f"{path}: BOS token {bos!r} cannot be added by a tokenizer.json ({_first_line(e)})") from None
    hf.save(str(out / "tokenizer.json"))
    tcfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "add_bos_token": bool(tok.add_bos),
        "model_max_length": context_length,
    }
    tcfg.update({k: v for k, v in tok.special.items() if v})
    if tok.chat_template:
        tcfg["chat_template"] = tok.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2), encoding="utf-8")
    gen = {"eos_token_id": list(tok.eos_ids)}
    if tok.bos_id is not None:
        gen["bos_token_id"] = tok.bos_id
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2), encoding="utf-8")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
