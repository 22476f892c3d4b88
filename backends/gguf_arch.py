"""GGUF architectures -> mlx-lm models: tensor names, config.json and per-tensor fix-ups.

    GGUF arch   mlx-lm model_type   what differs from llama
    llama       llama               Q/K rows permuted by llama.cpp's converter (undone here);
                                    rope_freqs (Llama 3.1/3.2) -> rope_scaling "llama3", parameters
                                    recovered from the factors and checked against them
    qwen2       qwen2               q/k/v biases
    qwen3       qwen3               q/k norms
    gemma3      gemma3_text         norms stored as 1+w by llama.cpp (mlx-lm adds the 1 itself);
                                    post-attention / pre- and post-FFN norms; sliding-window layers
    phi3        phi3                fused attn_qkv and ffn_up (= [gate; up])
    qwen2moe    qwen2_moe           stacked experts (SwitchGLU), a gated shared expert
    qwen3moe    qwen3_moe           stacked experts, q/k norms, top-k weights renormalised

The Mistral family is written as ``llama`` by llama.cpp's converter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from mlxgen.errors import ModelError

_ATTN = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
_DENSE_FFN = {
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_MOE_FFN = {
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.switch_mlp.gate_proj",
    "ffn_up_exps": "mlp.switch_mlp.up_proj",
    "ffn_down_exps": "mlp.switch_mlp.down_proj",
}
_SHARED_EXPERT = {
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
}
_GEMMA3 = {
    **_ATTN,
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_PHI3 = {
    "attn_norm": "input_layernorm",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_up": "mlp.gate_up_proj",
    "ffn_down": "mlp.down_proj",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass(frozen=True)
class Arch:
    gguf: str
    model_type: str
    hf_class: str
    layer_names: dict = field(default_factory=dict)
    norms_plus_one: bool = False  # llama.cpp stores 1+w (gemma); mlx-lm adds the 1 itself
    permuted_qk: bool = False  # llama.cpp's converter permuted Q/K rows for its rope (llama)
    ignored: tuple = ()  # GGUF tensors folded into config.json (rope_freqs)


ARCHS = {
    "llama": Arch("llama", "llama", "LlamaForCausalLM", {**_ATTN, **_DENSE_FFN}, permuted_qk=True,
                  ignored=("rope_freqs.weight",)),
    "qwen2": Arch("qwen2", "qwen2", "Qwen2ForCausalLM", {**_ATTN, **_DENSE_FFN}),
    "qwen3": Arch("qwen3", "qwen3", "Qwen3ForCausalLM", {**_ATTN, **_DENSE_FFN}),
    "gemma3": Arch("gemma3", "gemma3_text", "Gemma3ForCausalLM", _GEMMA3, norms_plus_one=True),
    "phi3": Arch("phi3", "phi3", "Phi3ForCausalLM", _PHI3),
    "qwen2moe": Arch("qwen2moe", "qwen2_moe", "Qwen2MoeForCausalLM", {**_ATTN, **_MOE_FFN, **_SHARED_EXPERT}),
    "qwen3moe": Arch("qwen3moe", "qwen3_moe", "Qwen3MoeForCausalLM", {**_ATTN, **_MOE_FFN}),
}
SUPPORTED_ARCHS = tuple(ARCHS)


def mlx_name(arch: Arch, gguf_name: str) -> str | None:
    """The mlx-lm parameter path for a GGUF tensor name (None: not a model tensor here)."""
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", gguf_name)
    if m:
        layer, part, suffix = m.groups()
        if part in arch.layer_names:
            return f"model.layers.{layer}.{arch.layer_names[part]}.{suffix}"
        return None
    m = re.fullmatch(r"(\w+)\.(weight|bias)", gguf_name)
    if m and m.group(1) in TOP_NAMES:
        return f"{TOP_NAMES[m.group(1)]}.{m.group(2)}"
    return None


# ----------------------------------------------------------------------- config.json


def extra_config(arch: Arch, meta, reader, base: dict) -> dict:
    """Architecture-specific config.json entries on top of the common ones in ``base``."""
    a = arch.gguf
    cfg = dict(base, model_type=arch.model_type, architectures=[arch.hf_class])
    names = {t.name for t in reader.tensors}
    if a == "llama":
        cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        if "rope_freqs.weight" in names:
            t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
            factors = np.asarray(t.data, dtype=np.float32).reshape(-1)
            scaling = llama3_rope_scaling(factors, cfg["rope_theta"], cfg["head_dim"])
            if scaling is not None:
                cfg["rope_scaling"] = scaling
    elif a == "gemma3":
        window = meta.get(f"{a}.attention.sliding_window")
        pattern = meta.get(f"{a}.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            raise ModelError("GGUF gemma3 per-layer sliding_window_pattern arrays are not supported yet by the MLX import")
        cfg.update(
            rope_local_base_freq=float(meta.get(f"{a}.rope.freq_base_swa", 10000.0)),
            # llama.cpp: 1/sqrt(head_dim), except the 27B (62 layers): 1/sqrt(hidden/heads)
            query_pre_attn_scalar=(cfg["hidden_size"] // cfg["num_attention_heads"]
                                   if cfg["num_hidden_layers"] == 62 else cfg["head_dim"]),
            sliding_window=int(window) if window else cfg["max_position_embeddings"],
            sliding_window_pattern=int(pattern) if window else 1,
        )
    elif a == "phi3":
        if {"rope_factors_long.weight", "rope_factors_short.weight"} & names:
            raise ModelError("GGUF phi3 LongRoPE factors (rope_factors_long/short) are not supported yet by the MLX import")
        n_rot = meta.get(f"{a}.rope.dimension_count", cfg["head_dim"])
        cfg["partial_rotary_factor"] = n_rot / cfg["head_dim"]
        cfg["original_max_position_embeddings"] = cfg["max_position_embeddings"]
        cfg.pop("head_dim")
    elif a in ("qwen2moe", "qwen3moe"):
        experts = meta.get(f"{a}.expert_count")
        used = meta.get(f"{a}.expert_used_count")
        ffn = meta.get(f"{a}.expert_feed_forward_length")
        for key, v in (("expert_count", experts), ("expert_used_count", used), ("expert_feed_forward_length", ffn)):
            if not isinstance(v, int) or v < 1:
                raise ModelError(f"GGUF metadata {a}.{key} is {v!r}, expected a positive integer")
        cfg.update(num_experts=experts, num_experts_per_tok=used, moe_intermediate_size=ffn)
        if a == "qwen2moe":
            shared = meta.get(f"{a}.expert_shared_feed_forward_length", ffn)
            cfg["shared_expert_intermediate_size"] = int(shared)
        else:
            cfg.update(decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True)
    return cfg


def llama3_rope_scaling(factors: np.ndarray, base: float, dims: int, context: int = 8192) -> dict | None:
    """Recover Llama 3's rope_scaling (factor, low/high_freq_factor) from llama.cpp's rope_freqs tensor.

    llama.cpp divides each rotary frequency by its factor; mlx-lm's Llama3RoPE computes the
    same factors from four numbers. Only low/high_freq_factor divided by the original context
    matter, so that context is fixed (8192) and the two ratios are fitted; the result is
    checked against every factor. None when the factors are all 1 (no scaling).
    """
    f = factors.astype(np.float64)
    refuse = ModelError(f"GGUF rope_freqs ({f.size} factors) do not follow Llama 3's rope scaling; "
                        "the MLX import cannot express them")
    if f.shape != (dims // 2,) or not np.all(np.isfinite(f)) or f.min() <= 0:
        raise refuse
    factor = float(f.max())
    if abs(factor - 1) < 1e-6:
        return None
    wavelen = 2 * math.pi * base ** (np.arange(0, dims, 2) / dims)
    low = np.isclose(f, factor, rtol=1e-5)
    high = np.isclose(f, 1.0, rtol=1e-5)
    mid = ~(low | high)
    if mid.sum() >= 2:  # s = (1/wavelen - a) / (b - a), a = low_ff / context, b = high_ff / context
        s = (1 / f[mid] - 1 / factor) / (1 - 1 / factor)
        alpha, beta = np.polyfit(1 / wavelen[mid], s, 1)
        a = -beta / alpha
        b = a + 1 / alpha
    else:  # no smooth band to fit: put the band edges between the neighbouring wavelengths
        hi_edge = wavelen[high].max() if high.any() else wavelen.min() / 2
        lo_edge = wavelen[low].min() if low.any() else wavelen.max() * 2
        mid_wl = wavelen[mid]
        b = 1 / (math.sqrt(hi_edge * (mid_wl.min() if mid.any() else lo_edge)))
        a = 1 / (math.sqrt(lo_edge * (mid_wl.max() if mid.any() else hi_edge)))
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": float(a * context),
               "high_freq_factor": float(b * context), "original_max_position_embeddings": context}
    got = llama3_factors(scaling, base, dims)
    if not np.allclose(got, f, rtol=1e-4, atol=1e-6):
        raise refuse
    return scaling


def llama3_factors(scaling: dict, base: float, dims: int) -> np.ndarray:
    """The per-frequency divisors mlx-lm's Llama3RoPE applies (numpy twin of its formula)."""
    factor, lf, hf = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    ctx = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi * base ** (np.arange(0, dims, 2) / dims)
    out = np.where(wavelen > ctx / lf, factor, 1.0)
    medium = (wavelen > ctx / hf) & (wavelen < ctx / lf)
    smooth = (ctx / wavelen - lf) / (hf - lf)
    return np.where(medium, 1 / ((1 - smooth) / factor + smooth), out)


# ----------------------------------------------------------------------- shapes


def expected_shapes(config: dict) -> dict[str, tuple]:
    """Every parameter mlx-lm's model for ``config`` has, with its float shape (nothing is allocated)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    shapes = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}
    if config.get("tie_word_embeddings", True):
        shapes = {k: v for k, v in shapes.items() if not k.startswith("lm_head.")}
    return shapes
