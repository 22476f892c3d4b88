"""MLX arithmetic rounded the way llama.cpp's CPU backend rounds it (a measurement aid, not a feature).

Measured (scripts/match_llamacpp_probe.py): on the embedded SmolLM2 Q4_1 these roundings do not
bring MLX's logits closer to llama.cpp's (teacher-forced top-1 agreement 0.975 -> 0.956 with
act_q8); on a tiny random 2-layer Q4_1 model they close about half of the gap. See the README.

llama.cpp and MLX run a GGUF import on the same weights, but not on the same numbers:

    embed_f32   MLX dequantizes embedding rows in its scales' dtype (float16); llama.cpp
                in float32. Here: float32.
    act_q8      llama.cpp's CPU dot products for Q4_0/Q4_1/Q5_x/Q8_0 weights multiply
                activations quantized to 8 bits per block of 32 (d = amax/127 stored as
                fp16, q = round(x/d); Q4_1/Q5_1 also use the block sum s = fp16(d * sum q)).
                MLX multiplies float activations. Here: the same rounding before every
                quantized matmul of group size 32 (the output layer, tied to the
                embedding, included).
    kv_f16      without flash attention llama.cpp holds K and V in fp16, rounds Q to fp16
                for K.Q and the softmax to fp16 for V.softmax; MLX keeps float32. Here:
                the same roundings (llama-style attention only).

    rope        llama.cpp's rope angles: position x theta_scale^i as repeated float32 products.

``match_llamacpp(model, parts)`` patches a loaded mlx-lm model in place: the modules' classes
are swapped for subclasses, nothing global changes.
"""

from __future__ import annotations

from typing import Iterable

import mlx.core as mx
import mlx.nn as nn

PARTS = ("embed_f32", "act_q8", "kv_f16", "rope")
BLOCK = 32


def q8_blocks(x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """x rounded as llama.cpp's quantize_row_q8_1 (AVX2 path): (x as dequantized, q per block sums, d)."""
    shape = x.shape
    xb = x.astype(mx.float32).reshape(*shape[:-1], shape[-1] // BLOCK, BLOCK)
    amax = mx.max(mx.abs(xb), axis=-1, keepdims=True)
    d = amax / 127.0
    inv = mx.where(amax > 0, 127.0 / mx.where(amax > 0, amax, 1.0), 0.0)
    q = mx.round(xb * inv)
    d16 = d.astype(mx.float16).astype(mx.float32)
    return (q * d16).reshape(shape), q.sum(axis=-1), d[..., 0]


def _has_min(layer) -> bool:
    """Q4_1/Q5_1-style blocks (a free minimum per block), as opposed to Q4_0/Q8_0's fixed offset -2^(b-1)·d."""
    return bool(getattr(layer, "_llamacpp_min", False))


class Q8Linear(nn.QuantizedLinear):
    def __call__(self, x: mx.array) -> mx.array:
        if self.group_size != BLOCK or x.shape[-1] % BLOCK:
            return super().__call__(x)
        xq, qsum, d = q8_blocks(x)
        out = mx.quantized_matmul(xq, self["weight"], scales=self["scales"], biases=self.get("biases"),
                                  transpose=True, group_size=self.group_size, bits=self.bits, mode=self.mode)
        if _has_min(self):  # llama.cpp's min term uses s = fp16(d * sum q), not d16 * sum q
            d16 = d.astype(mx.float16).astype(mx.float32)
            delta = (d * qsum).astype(mx.float16).astype(mx.float32) - d16 * qsum
            out = out + delta @ self["biases"].astype(mx.float32).T
        if "bias" in self:
            out = out + self["bias"]
        return out


class MatchedEmbedding(nn.QuantizedEmbedding):
    embed_f32 = False
    act_q8 = False

    def __call__(self, x: mx.array) -> mx.array:
        if not self.embed_f32:
            return super().__call__(x)
        return mx.dequantize(self["weight"][x], scales=self["scales"][x].astype(mx.float32),
                             biases=self["biases"][x].astype(mx.float32), group_size=self.group_size,
                             bits=self.bits, mode=self.mode)

    def as_linear(self, x: mx.array) -> mx.array:
        if not self.act_q8 or self.group_size != BLOCK or x.shape[-1] % BLOCK:
            return super().as_linear(x)
        xq, _, _ = q8_blocks(x)  # the tied output: Q8_0 weights times Q8_0 activations
        return mx.quantized_matmul(xq, self["weight"], scales=self["scales"], biases=self["biases"], transpose=True,
                                   group_size=self.group_size, bits=self.bits, mode=self.mode)


def _rope_ggml(rope, x: mx.array, offset: int) -> mx.array:
    """llama.cpp's rope (normal mode, on the import's un-permuted weights: pairs (i, i + d/2)):
    the angle of pair i is the position times theta_scale, i times, each product rounded to float32."""
    import numpy as np

    L, d = x.shape[-2], rope.dims
    scale = np.float32(np.power(np.float32(rope.base), np.float32(-2.0) / np.float32(d)))
    theta = np.arange(offset, offset + L, dtype=np.float32) * np.float32(rope.scale)
    angles = np.empty((L, d // 2), dtype=np.float32)
    for i in range(d // 2):
        angles[:, i] = theta
        theta = (theta * scale).astype(np.float32)
    cos, sin = mx.array(np.cos(angles)), mx.array(np.sin(angles))
    x1, x2, rest = x[..., : d // 2], x[..., d // 2: d], x[..., d:]
    return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], axis=-1)


def _attention_f16(self, x: mx.array, mask=None, cache=None) -> mx.array:
    """mlx-lm's llama Attention with llama.cpp's fp16 roundings (K/V cache, Q for K.Q, softmax for V)."""
    B, L, _ = x.shape
    f16 = (lambda a: a.astype(mx.float16).astype(mx.float32)) if self._f16 else (lambda a: a)  # noqa: E731
    queries, keys, values = self.q_proj(x), self.k_proj(x), self.v_proj(x)
    queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
    keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
    values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
    offset = cache.offset if cache is not None else 0
    if getattr(self, "_ggml_rope", False):
        queries, keys = _rope_ggml(self.rope, queries, offset), _rope_ggml(self.rope, keys, offset)
    else:
        queries, keys = self.rope(queries, offset=offset), self.rope(keys, offset=offset)
    keys, values = f16(keys), f16(values)
    if cache is not None:
        keys, values = cache.update_and_fetch(keys, values)
    rep = self.n_heads // self.n_kv_heads
    if rep > 1:
        keys, values = mx.repeat(keys, rep, axis=1), mx.repeat(values, rep, axis=1)
    scores = (f16(queries) @ keys.transpose(0, 1, 3, 2)) * self.scale
    n_k = keys.shape[2]
    if isinstance(mask, str) or (mask is None and L > 1):
        q_pos = mx.arange(n_k - L, n_k)[:, None]
        scores = mx.where(mx.arange(n_k)[None, :] <= q_pos, scores, -mx.inf)
    elif mask is not None:
        scores = mx.where(mask, scores, -mx.inf) if mask.dtype == mx.bool_ else scores + mask
    probs = f16(mx.softmax(scores, axis=-1, precise=True))
    out = (probs @ values).transpose(0, 2, 1, 3).reshape(B, L, -1)
    return self.o_proj(out)


def _llama_attention():
    from mlx_lm.models import llama

    return llama.Attention


def min_layers(model: nn.Module) -> list[str]:
    """Quantized linears whose blocks have a free minimum (imported from Q4_1/Q5_1), found from the weights.

    A GGUF import stores Q4_0/Q5_0/Q8_0 blocks with bias = -2^(bits-1) * scale exactly; anything
    else has its own minimum per block.
    """
    out = []
    for path, m in model.named_modules():
        if isinstance(m, nn.QuantizedLinear) and m.get("biases") is not None and m.group_size == BLOCK:
            fixed = -(2 ** (m.bits - 1)) * m["scales"].astype(mx.float32)
            if not mx.array_equal(m["biases"].astype(mx.float32), fixed).item():
                out.append(path)
    return out


def match_llamacpp(model: nn.Module, parts: Iterable[str] = PARTS, min_layers: Iterable[str] = ()) -> list[str]:
    """Patch ``model`` in place; return what was patched, one phrase per part.

    ``min_layers``: module paths whose 4/5-bit blocks carry a free minimum (Q4_1/Q5_1), for the s term.
    """
    parts, mins, done = set(parts), set(min_layers), []
    unknown = parts - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    n_lin = n_att = 0
    for path, module in model.named_modules():
        if isinstance(module, nn.QuantizedEmbedding):
            module.__class__ = MatchedEmbedding
            module.embed_f32, module.act_q8 = "embed_f32" in parts, "act_q8" in parts
        elif isinstance(module, nn.QuantizedLinear) and "act_q8" in parts:
            module.__class__ = Q8Linear
            module._llamacpp_min = path in mins
            n_lin += 1
        elif parts & {"kv_f16", "rope"} and type(module) is _llama_attention():  # its exact code: no q/k norms
            module.__class__ = type("LlamaCppAttention", (type(module),), {"__call__": _attention_f16})
            module._ggml_rope, module._f16 = "rope" in parts, "kv_f16" in parts
            n_att += 1
    if "embed_f32" in parts:
        done.append("embedding rows in float32")
    if "act_q8" in parts:
        done.append(f"8-bit block activations before {n_lin} quantized matmuls and the tied output")
    if "kv_f16" in parts:
        done.append(f"fp16 K/V, Q and softmax in {n_att} attention layers")
    if "rope" in parts:
        done.append(f"ggml's rope angles in {n_att} attention layers")
    return done
