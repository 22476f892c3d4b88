"""GGUF quant blocks -> MLX affine groups (``w = scale * q + bias`` per group of weights).

Exact where MLX's layout holds the numbers (one scale and one offset per 32 weights):

    Q4_0  w = d*(q-8)              4-bit g32   scale d,      bias -8d
    Q4_1  w = d*q + m              4-bit g32   scale d,      bias m
    Q5_0  w = d*(q-16)             5-bit g32   scale d,      bias -16d
    Q5_1  w = d*q + m              5-bit g32   scale d,      bias m
    Q8_0  w = d*q (signed)         8-bit g32   scale d,      bias -128d
    Q4_K  w = d*sc*q - dmin*m      4-bit g32   scale d*sc,   bias -dmin*m   (per 32-weight sub-block)
    Q5_K  the same with 5 bits     5-bit g32

Q4_0/Q4_1/Q5_x/Q8_0 scales are float16 in the file, so float16 scales are exact. A K-quant's
``d*sc`` is a float16 times a 6-bit integer: up to 17 significant bits, which float16 (11)
cannot always hold (measured on SmolLM2's Q4_K_M: max abs weight error 6.9e-4 with float16
scales, 0 with float32). So K-quant scales are kept as float32 by default (8 instead of 4
bytes of scale+bias per 32 weights: 6 instead of 5 bits per weight); ``scale_dtype``
float16 trades that exactness for size.

Near-exact where it cannot (sub-blocks of 16 weights, each with its own scale, two to an
MLX group of 32): the file's weights are dequantized and re-quantized per group of 32
(min-max, so |error| <= the group's range / (2 * (2**bits - 1))) with the narrowest width
that keeps every error within 0.13 of the GGUF type's own quantization step:

    Q6_K  values d*sc*q, q in [-32, 31]     8-bit g32   <= 64/510 = 0.126 step (a group spans <= 64 steps)
    Q3_K  values d*sc*q, q in [-4, 3]       5-bit g32   <= 8/62   = 0.129 step (<= 8 steps)
    Q2_K  values d*sc*q - dmin*m, q 0..3    5-bit g32   two minimums, no bound by construction:
                                                        measured 0.086 step on llama.cpp's blocks (4-bit: 0.16)

Any other type gguf.quants can read (IQ*, ...) is dequantized and requantized to the
caller's bits/group size. Every result carries its measured max abs error against
``gguf.quants.dequantize`` on the same blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK_K = 256
# type -> (block bytes, MLX bits) for the exact layouts
EXACT = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q5_0": (22, 5), "Q5_1": (24, 5), "Q8_0": (34, 8),
         "Q4_K": (144, 4), "Q5_K": (176, 5)}
NEAR = {"Q6_K": 8, "Q3_K": 5, "Q2_K": 5}  # type -> MLX bits (group 32)
FLOATS = ("F32", "F16", "BF16")


@dataclass
class Groups:
    """One tensor in MLX's quantized layout."""

    weight: np.ndarray  # uint32, (rows, cols * bits / 32)
    scales: np.ndarray  # (rows, cols / group)
    biases: np.ndarray
    bits: int
    group_size: int
    exact: bool  # the GGUF numbers, up to the scale dtype's rounding


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Integers (rows, cols) in [0, 2**bits) -> MLX's packing: a little-endian bit stream in uint32 words."""
    rows, cols = q.shape
    if bits in (4, 8):  # the fast common cases
        q = q.astype(np.uint8)
        if bits == 4:
            q = q[:, 0::2] | (q[:, 1::2] << 4)
        return np.ascontiguousarray(q).view(np.uint32)
    bitplanes = (q.astype(np.uint8)[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bitplanes.reshape(rows, cols * bits), axis=-1, bitorder="little").view(np.uint32)


def to_groups(raw: np.ndarray, kind: str, rows: int, cols: int, scale_dtype=None) -> Groups:
    """An exact type's raw blocks (rows, bytes per row) -> MLX groups of 32.

    ``scale_dtype`` None: float32 for Q4_K/Q5_K (their scales need it to stay exact), else float16.
    """
    if scale_dtype is None:
        scale_dtype = np.float32 if kind in ("Q4_K", "Q5_K") else np.float16
    size, bits = EXACT[kind]
    per_block = QK_K if kind.endswith("_K") else 32
    b = np.ascontiguousarray(raw).reshape(rows * (cols // per_block), size)
    q, scale, bias = _DECODE[kind](b)  # q (n, 32) per group; scale/bias float32 (n,)
    return Groups(
        weight=pack(q.reshape(rows, cols), bits),
        scales=scale.reshape(rows, cols // 32).astype(scale_dtype),
        biases=bias.reshape(rows, cols // 32).astype(scale_dtype),
        bits=bits, group_size=32, exact=True,
    )


def requantize(dense: np.ndarray, bits: int, group_size: int = 32, scale_dtype=np.float16) -> Groups:
    """Float weights (rows, cols) -> min-max affine groups, rounded with the stored (rounded) scale and bias."""
    rows, cols = dense.shape
    g = dense.astype(np.float32).reshape(rows, cols // group_size, group_size)
    lo, hi = g.min(axis=-1), g.max(axis=-1)
    levels = (1 << bits) - 1
    scale = ((hi - lo) / levels).astype(scale_dtype)
    bias = lo.astype(scale_dtype)
    s32 = scale.astype(np.float32)[..., None]
    q = np.where(s32 > 0, np.round((g - bias.astype(np.float32)[..., None]) / np.where(s32 > 0, s32, 1)), 0)
    q = np.clip(q, 0, levels).astype(np.uint8).reshape(rows, cols)
    return Groups(pack(q, bits), scale, bias, bits, group_size, exact=False)


def dequantize(groups: Groups) -> np.ndarray:
    """What MLX computes from the groups, in float32 (numpy, for error measurement)."""
    rows = groups.weight.shape[0]
    cols = groups.weight.shape[1] * 32 // groups.bits
    raw = groups.weight.view(np.uint8)
    bitplanes = np.unpackbits(raw, axis=-1, bitorder="little").reshape(rows, cols, groups.bits)
    q = (bitplanes.astype(np.uint32) << np.arange(groups.bits, dtype=np.uint32)).sum(-1).astype(np.float32)
    q = q.reshape(rows, -1, groups.group_size)
    s = groups.scales.astype(np.float32)[..., None]
    b = groups.biases.astype(np.float32)[..., None]
    return (q * s + b).reshape(rows, cols)


def max_abs_error(groups: Groups, raw: np.ndarray, kind: str, rows: int, cols: int, sample_rows: int = 16) -> float:
    """Largest |MLX weight - gguf.quants.dequantize| over the first ``sample_rows`` rows (all of them if fewer)."""
    import gguf.quants as gq
    from gguf import GGMLQuantizationType

    n = min(rows, sample_rows)
    raw = np.ascontiguousarray(raw).reshape(rows, -1)[:n]
    ref = gq.dequantize(raw, GGMLQuantizationType[kind]).reshape(n, cols)
    part = Groups(groups.weight[:n], groups.scales[:n], groups.biases[:n], groups.bits, groups.group_size, groups.exact)
    return float(np.abs(dequantize(part) - ref).max())


# ----------------------------------------------------------------------- block decoders


def _f16(b: np.ndarray, at: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, at : at + 2]).view(np.float16)[:, 0].astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: element j in the low nibble of byte j, j+16 in the high nibble."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """Q5_0/Q5_1: bit j of the little-endian uint32 is element j's fifth bit."""
    word = np.ascontiguousarray(qh).view("<u4")  # (n, 1)
    return ((word >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4


def _q4_0(b):
    d = _f16(b, 0)
    return _nibbles(b[:, 2:18]), d, -8 * d


def _q4_1(b):
    return _nibbles(b[:, 4:20]), _f16(b, 0), _f16(b, 2)


def _q5_0(b):
    d = _f16(b, 0)
    return _nibbles(b[:, 6:22]) | _high_bits32(b[:, 2:6]), d, -16 * d


def _q5_1(b):
    return _nibbles(b[:, 8:24]) | _high_bits32(b[:, 4:8]), _f16(b, 0), _f16(b, 2)


def _q8_0(b):
    d = _f16(b, 0)
    q = (b[:, 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, d, -128 * d


def _k_scales(b: np.ndarray):
    """Q4_K/Q5_K: d, dmin and the 8 six-bit (scale, min) pairs of each super-block -> per-group scale and bias."""
    s = b[:, 4:16]
    lo, mid, top = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = np.concatenate([lo & 0x3F, (top & 0x0F) | ((lo >> 2) & 0x30)], axis=-1).astype(np.float32)
    mn = np.concatenate([mid & 0x3F, (top >> 4) | ((mid >> 2) & 0x30)], axis=-1).astype(np.float32)
    d, dmin = _f16(b, 0)[:, None], _f16(b, 2)[:, None]
    return (d * sc).reshape(-1), (-(dmin * mn)).reshape(-1)


def _q4_k(b):
    qs = b[:, 16:144].reshape(-1, 4, 1, 32)  # 4 chunks of 64 weights: low nibbles, then high nibbles
    q = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    scale, bias = _k_scales(b)
    return q.reshape(-1, 32), scale, bias


def _q5_k(b):
    qh = b[:, 16:48].reshape(-1, 1, 32)
    qs = b[:, 48:176].reshape(-1, 4, 1, 32)
    q = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    high = (qh >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1  # bit 2c: chunk c low, 2c+1: high
    q = q.reshape(-1, 8, 32) | (high << 4)
    scale, bias = _k_scales(b)
    return q.reshape(-1, 32), scale, bias


_DECODE = {"Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k}
