"""GGUF -> MLX: a normal mlx-lm model folder from a llama.cpp file.

    config.json                  mlx-lm model args + per-layer "quantization" + "mlxgen_import" (per type)
    model.safetensors            MLX affine-quantized weights (weight, scales, biases)
    tokenizer.json               from the GGUF vocabulary (mlxgen.gguf_vocab)
    tokenizer_config.json        chat template, bos/eos tokens
    generation_config.json       eos ids

Each tensor keeps its own width: Q4_0/Q4_1/Q4_K become 4-bit, Q5_0/Q5_1/Q5_K 5-bit, Q8_0
8-bit MLX groups of 32 holding the file's numbers (mlxgen.backends.gguf_quants); Q6_K,
Q3_K and Q2_K (sub-blocks of 16) are re-quantized near-exactly at a stated bound; other
types gguf.quants reads (IQ*, ...) are requantized to ``bits``/``group_size``; floats stay
floats. Every type's max abs error against gguf's own dequantizer is measured and reported.
Architectures and their tensor names: mlxgen.backends.gguf_arch.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mlxgen.backends import gguf_arch
from mlxgen.backends import gguf_quants as gq_layout
from mlxgen.errors import ModelError, first_line

SUPPORTED_ARCHS = gguf_arch.SUPPORTED_ARCHS
_LOSSLESS = gq_layout.EXACT  # types whose blocks MLX holds as they are
_FLOATS = gq_layout.FLOATS


@dataclass
class Imported:
    """What an import produced, for the caller's summary line."""

    arch: str
    tensors: int
    lossless: int = 0  # tensors re-laid out without loss
    requantized: int = 0  # tensors dequantized and requantized (near-exact or lossy)
    kept_float: int = 0
    types: dict = field(default_factory=dict)  # GGUF type -> {tensors, bits, group_size, exact, max_abs_error}

    def add(self, kind: str, bits: int | None, group: int | None, exact: bool, err: float) -> None:
        row = self.types.setdefault(kind, {"tensors": 0, "bits": bits, "group_size": group, "exact": True,
                                           "max_abs_error": 0.0})
        row["tensors"] += 1
        row["exact"] = row["exact"] and exact and err == 0.0
        row["max_abs_error"] = max(row["max_abs_error"], err)
        if bits is not None:
            row["bits"], row["group_size"] = bits, group


def type_summary(types: dict) -> str:
    """One phrase per GGUF tensor type: "Q4_K x120 exact (4-bit g32), Q6_K x25 max abs error 1.2e-05 (8-bit g32)"."""
    parts = []
    for kind, row in sorted(types.items(), key=lambda kv: -kv[1]["tensors"]):
        how = "exact" if row["exact"] else f"max abs error {row['max_abs_error']:.2g}"
        where = f"{row['bits']}-bit g{row['group_size']}" if row.get("bits") else "float"
        parts.append(f"{kind} x{row['tensors']} {how} ({where})")
    return ", ".join(parts)


def import_note(imported: dict) -> str:
    """bench's footer line for an imported model: per GGUF tensor type, exact or its max abs error."""
    types = imported.get("types")
    if not types:  # a folder imported before per-type reports
        return f"imported from {imported['source']}: " + (
            "lossless" if not imported.get("requantized") else f"{imported['requantized']} tensors requantized")
    return f"imported from {imported['source']}: {type_summary(types)}"


def import_gguf(
    path: Path,
    out: Path,
    bits: int = 4,
    group_size: int = 64,
    progress: Callable[[str], None] | None = None,
    scale_dtype=None,
    float32: bool = False,
) -> Imported:
    """Write the mlx-lm folder for the GGUF at ``path`` into the (empty) folder ``out``.

    ``bits``/``group_size`` apply only to types with no exact or near-exact MLX layout.
    ``scale_dtype`` None keeps K-quant scales (d*sc, 17 significant bits) exact in float32 and
    the others' float16 scales as they are; np.float16 makes every scale float16 (smaller, and
    Q4_K/Q5_K then carry float16 rounding of d*sc).
    ``float32`` writes every tensor as gguf.quants dequantizes it, in float32: the exact
    GGUF numbers as a reference model (parity measurements), not for use.
    """
    import mlx.core as mx
    from mlxgen.gguf_check import open_reader

    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    reader = open_reader(path)
    meta = _Meta(reader, path)
    arch_name = meta.get("general.architecture", "?")
    if not isinstance(arch_name, str) or arch_name not in SUPPORTED_ARCHS:
        raise ModelError(
            f"{path.name}: GGUF architecture {_short(arch_name)} is not supported yet by the MLX import "
            f"(supported: {', '.join(SUPPORTED_ARCHS)}); use --backend llama.cpp"
        )
    arch = gguf_arch.ARCHS[arch_name]
    _check_types(reader, path)
    try:
        config = gguf_arch.extra_config(arch, meta, reader, _model_config(meta, arch_name, reader))
        if arch_name in ("llama", "qwen2", "qwen3"):
            _check_shapes(reader, config, arch_name)
        expect = gguf_arch.expected_shapes(config)
        _check_against_model(reader, arch, expect)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    n_heads, n_kv = config["num_attention_heads"], config["num_key_value_heads"]

    weights: dict[str, "mx.array"] = {}
    quant: dict[str, object] = {"group_size": group_size, "bits": bits, "mode": "affine"}
    stats = Imported(arch_name, len(reader.tensors))
    total = len(reader.tensors)
    say(f"mlxgen: importing {path.name} ({arch_name}, {total} tensors) to MLX")
    for i, t in enumerate(reader.tensors, 1):
        name = gguf_arch.mlx_name(arch, t.name)
        if name is None:
            if t.name in arch.ignored:
                continue
            raise ModelError(f"{path.name}: tensor {t.name!r} has no MLX counterpart in the import")
        shape = expect[name]
        parts, layer = _convert_tensor(t, shape, bits, group_size, scale_dtype, stats, float32)
        if arch.permuted_qk and t.name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            heads = n_heads if ".attn_q." in t.name else n_kv
            parts = {k: _unpermute(v, heads) for k, v in parts.items()}
        if arch.norms_plus_one and t.name.endswith("norm.weight"):
            parts = {"weight": np.asarray(parts["weight"], dtype=np.float32) - 1}
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
                               "kept_float": stats.kept_float, "types": stats.types,
                               "scale_dtype": np.dtype(scale_dtype).name if scale_dtype else "auto"}  # for bench
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    _write_tokenizer(path, out, config["max_position_embeddings"])
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    say(f"mlxgen: imported {stats.tensors} tensors: {type_summary(stats.types)}")
    return stats


def _convert_tensor(t, shape: tuple, bits: int, group_size: int, scale_dtype, stats: Imported, float32=False):
    """One GGUF tensor -> ({weight[, scales, biases]}, per-layer quantization or None) in the model's shape."""
    import gguf.quants as gq

    kind = t.tensor_type.name
    raw = np.asarray(t.data)
    if float32:
        stats.kept_float += 1
        stats.add(kind, None, None, True, 0.0)
        return {"weight": gq.dequantize(raw, t.tensor_type).astype(np.float32).reshape(shape)}, None
    if len(shape) < 2 or kind in _FLOATS:  # vectors (norms, biases) and float matrices stay float
        dense = _float(t, kind).reshape(shape)
        stats.kept_float += 1
        stats.add(kind, None, None, True, 0.0)
        return {"weight": dense}, None
    cols = int(shape[-1])
    rows = int(np.prod(shape[:-1]))
    if kind in gq_layout.EXACT:
        groups = gq_layout.to_groups(raw, kind, rows, cols, scale_dtype)
        stats.lossless += 1
    else:
        dense = gq.dequantize(raw, t.tensor_type).reshape(rows, cols)
        g = 32 if kind in gq_layout.NEAR else next((g for g in (group_size, 32) if cols % g == 0), None)
        if g is None:  # no MLX group fits the row: keep it float16
            stats.kept_float += 1
            half = dense.astype(np.float16)
            stats.add(kind, None, None, False, float(np.abs(half.astype(np.float32) - dense).max()))
            return {"weight": half.reshape(shape)}, None
        groups = gq_layout.requantize(dense, gq_layout.NEAR.get(kind, bits), g, scale_dtype or np.float16)
        stats.requantized += 1
    err = gq_layout.max_abs_error(groups, raw, kind, rows, cols)
    stats.add(kind, groups.bits, groups.group_size, groups.exact, err)
    lead = tuple(shape[:-1])
    parts = {"weight": groups.weight.reshape(lead + (-1,)), "scales": groups.scales.reshape(lead + (-1,)),
             "biases": groups.biases.reshape(lead + (-1,))}
    return parts, {"group_size": groups.group_size, "bits": groups.bits, "mode": "affine"}


# --------------------------------------------------------------------- metadata


class _Meta:
    """The file's metadata, read with ``gguf_check.field_value`` (errors name the file)."""

    def __init__(self, reader, path: Path | None = None) -> None:
        self.reader = reader
        self.path = path

    def get(self, key: str, default=None):
        from mlxgen.gguf_check import field_value

        return field_value(self.reader, key, default, self.path)


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
    ffn_default = meta.get(f"{arch}.expert_feed_forward_length")  # MoE files may have no dense FFN size
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": _int(meta, f"{arch}.block_count", high=4096),
        "intermediate_size": _int(meta, f"{arch}.feed_forward_length", ffn_default),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "rms_norm_eps": _number(meta, f"{arch}.attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab,
        "rope_theta": _number(meta, f"{arch}.rope.freq_base", 10000.0 if arch in ("llama", "gemma3", "phi3") else 1000000.0),
        "max_position_embeddings": _int(meta, f"{arch}.context_length", 4096, high=1 << 31),
        "tie_word_embeddings": "output.weight" not in names,
        "rope_traditional": False,
    }
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        if scaling != "linear":
            raise ModelError(f"GGUF rope scaling {_short(scaling)} is not supported yet by the MLX import")
        config["rope_scaling"] = {"type": "linear", "factor": _number(meta, f"{arch}.rope.scaling.factor", 1.0)}
    return config


def _check_against_model(reader, arch, expect: dict) -> None:
    """Every GGUF tensor fits the mlx-lm model's parameter, and every parameter has a tensor."""
    seen = set()
    for t in reader.tensors:
        name = gguf_arch.mlx_name(arch, t.name)
        if name is None:
            if t.name in arch.ignored:
                continue
            raise ModelError(f"tensor {t.name!r} has no MLX counterpart in the import")
        want = expect.get(name)
        got = tuple(int(d) for d in reversed(t.shape))
        if want is None:
            raise ModelError(f"GGUF tensor {t.name} has no place in mlx-lm's {arch.model_type} model")
        if int(np.prod(got)) != int(np.prod(want)) or (len(want) > 1 and got[-1] != want[-1]):
            raise ModelError(f"GGUF tensor {t.name} has shape {list(t.shape)}, expected {list(reversed(want))} from the metadata")
        seen.add(name)
    for name in expect:
        if name not in seen:
            gname = next((g for g, m in _reverse_names(arch, name)), name)
            raise ModelError(f"GGUF tensor {gname} is missing")


def _reverse_names(arch, name: str):
    """The GGUF name of an mlx-lm parameter (for messages)."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        for g, path in arch.layer_names.items():
            if path == m.group(2):
                yield f"blk.{m.group(1)}.{g}.{m.group(3)}", name
    for g, path in gguf_arch.TOP_NAMES.items():
        if name == f"{path}.weight":
            yield f"{g}.weight", name


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


def _float(t, kind: str) -> np.ndarray:
    """A float (or small quantized) tensor as float numbers, in GGUF's flat order."""
    import gguf.quants as gq

    data = np.asarray(t.data)
    if kind in ("F32", "F16"):
        return data.reshape(-1)
    values = gq.dequantize(data, t.tensor_type).reshape(-1)
    if kind == "BF16":  # kept as bfloat16 (numpy has no such type)
        import mlx.core as mx

        return mx.array(values).astype(mx.bfloat16)
    return values.astype(np.float16)


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
            raise ModelError(f"{path}: BOS token {bos!r} cannot be added by a tokenizer.json ({first_line(e)})") from None
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

