"""The sampler's array ops on ``mx.array``: the same definitions as ``mlxgen.sampling.NUMPY``.

Every op stays lazy (no ``.item()``, no Python ``int``/``min`` on arrays), so a whole
sampling step (filters, softmax, the draw) joins the model's graph and runs inside the
backend's ``mx.async_eval`` while Python streams the previous token. The formulas are
the numpy ones written with mx (``exp(x - max) / sum``, a descending sort as the
negated ascending sort, an inverse-CDF count), so both array kinds pick the same token
for the same logits and the same uniform number ``u``.
"""

from __future__ import annotations

import types
from typing import Sequence

import mlx.core as mx


def _asarray(x) -> mx.array:
    if isinstance(x, mx.array):
        return x if x.dtype == mx.float32 else x.astype(mx.float32)
    return mx.array(x, dtype=mx.float32)


def _softmax(x: mx.array) -> mx.array:
    e = mx.exp(x - x.max())
    return e / e.sum()


def _kth_largest(x: mx.array, k: int) -> mx.array:
    n = x.shape[-1]
    return mx.partition(x, n - k)[n - k]


def _count_below(x: mx.array, t) -> mx.array:
    return (x < t).astype(mx.int32).sum()


def _index(x: mx.array, i) -> mx.array:
    return mx.take(x, i if isinstance(i, mx.array) else mx.array(i), axis=0)


def _ids(idx: Sequence[int]) -> mx.array:
    return mx.array([int(i) for i in idx], dtype=mx.int32)


def _put(x: mx.array, idx: Sequence[int], values: mx.array) -> mx.array:
    return mx.put_along_axis(x, _ids(idx), values.astype(x.dtype), axis=0)


MLX = types.SimpleNamespace(
    name="mlx",
    asarray=_asarray,
    softmax=_softmax,
    sort_desc=lambda x: -mx.sort(-x),
    kth_largest=_kth_largest,
    cumsum=lambda x: mx.cumsum(x),
    where=mx.where,
    argmax=lambda x: mx.argmax(x),
    count_below=_count_below,
    item=lambda x: x,  # stays a lazy 0-d array: no device sync inside the sampler
    index=_index,
    minimum=mx.minimum,
    maximum=mx.maximum,
    take=lambda x, idx: mx.take(x, _ids(idx), axis=0),
    put=_put,
    neg_inf=float("-inf"),
)
