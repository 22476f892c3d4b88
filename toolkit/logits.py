"""The model's next-token distribution, and what the sampler would make of it.

``prob`` is the sampler's own softmax (``sampling.NUMPY.softmax``) of the backend's
logits over the whole vocabulary. ``sampled`` runs the sampler's own pieces in the
sampler's order (processors, temperature, top-k, top-p, min-p) and softmaxes what is
left: the chance that ``run`` with these settings picks each token first.
``LogprobRecorder`` wraps a sampler to keep the top-K log-probabilities of every
token it draws (``mlxgen run --logprobs K``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from mlxgen import settings
from mlxgen.sampling import (NUMPY, Processor, SamplingParams, acceptor, constraints, make_processors, min_p, top_k,
                             top_p)
from mlxgen.tokens import token_text

OFF = {s.name: s.off for s in settings.TABLE if s.off is not None}  # the value that turns each filter off


def to_numpy(logits: Any, ops: Any = NUMPY) -> np.ndarray:
    """A float32 numpy copy of a backend's logits (a llama.cpp view or a lazy mx.array)."""
    return np.array(ops.asarray(logits), dtype=np.float32, copy=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def top_ids(values: np.ndarray, n: int) -> np.ndarray:
    """The n largest entries' indices, largest first (ties: lower id first)."""
    n = min(n, values.shape[-1])
    part = np.argpartition(-values, n - 1)[:n]
    return part[np.lexsort((part, -values[part]))]


@dataclass(frozen=True)
class Filtered:
    """The sampler's view: the candidates each setting keeps, and the final distribution."""

    scaled: np.ndarray  # after processors and temperature
    kept: dict[str, np.ndarray]  # top_k / top_p / min_p alone: boolean masks
    final: np.ndarray  # probabilities the draw uses (one-hot at the argmax when greedy)


def sampler_view(logits: np.ndarray, params: SamplingParams, history: Sequence[int],
                 processors: Sequence[Processor] = ()) -> Filtered:
    params.validate()
    x = NUMPY.asarray(logits)
    for proc in make_processors(params, NUMPY, processors):
        x = proc(history, x)
    if params.greedy:
        final = np.zeros_like(x)
        final[int(np.argmax(x))] = 1.0
        everything = np.ones(x.shape, dtype=bool)
        return Filtered(x, {"top_k": everything, "top_p": everything, "min_p": everything}, final)
    x = x / params.temperature
    kept = {
        "top_k": np.isfinite(top_k(x, params.top_k)),
        "top_p": np.isfinite(top_p(x, params.top_p)),
        "min_p": np.isfinite(min_p(x, params.min_p)),
    }
    together = min_p(top_p(top_k(x, params.top_k), params.top_p), params.min_p)
    return Filtered(x, kept, NUMPY.softmax(together))


def inspect(logits: np.ndarray, params: SamplingParams, history: Sequence[int], tok, n: int,
            processors: Sequence[Processor] = ()) -> dict:
    """Everything `mlxgen logits` shows, as plain data (the --json output).

    ``processors``: the caller's own, after the settings' (the chain a run would use).
    """
    probs = NUMPY.softmax(NUMPY.asarray(logits))
    view = sampler_view(logits, params, history, processors)
    scaled_probs = NUMPY.softmax(view.scaled)
    rows = [
        {
            "rank": rank + 1,
            "id": int(i),
            "text": tok.decode([int(i)]),
            "logit": float(logits[i]),
            "prob": float(probs[i]),
            "sampled": float(view.final[i]),
            "kept": {name: bool(mask[i]) for name, mask in view.kept.items()},
        }
        for rank, i in enumerate(top_ids(probs, n))
    ]
    kept = {
        name: {
            "value": getattr(params, name),
            "kept": int(mask.sum()),
            "mass": float(scaled_probs[mask].sum()),
        }
        for name, mask in view.kept.items()
    }
    data = {
        "vocab_size": int(logits.shape[-1]),
        "prob_sum": float(probs.astype(np.float64).sum()),
        "temperature": params.temperature,
        "processors": [processor_name(p) for p in make_processors(params, NUMPY, processors)],
        "settings": kept,
        "candidates": int(np.count_nonzero(view.final)),
        "top": rows,
    }
    if constraints(processors):  # what the grammar allows next: every id it did not mask to -inf
        allowed = np.flatnonzero(np.isfinite(view.scaled))
        by_prob = allowed[np.argsort(-probs[allowed], kind="stable")]
        data["constraint"] = {"allowed": {"count": int(allowed.size), "tokens": [tok.decode([int(i)]) for i in by_prob[:n]],
                                          "mass": float(probs[allowed].astype(np.float64).sum())}}
    return data


def processor_name(processor: Any) -> str:
    """How `mlxgen logits` names a processor: its ``name``, else its function's name."""
    return str(getattr(processor, "name", None) or getattr(processor, "__qualname__", type(processor).__name__))


def table(data: dict, tok) -> str:
    """The human view of :func:`inspect`."""
    active = [name for name, s in data["settings"].items() if s["value"] != OFF[name]]
    lines = [f"{'rank':>4} {'id':>7}  {'token':<18} {'logit':>8} {'prob':>8} {'sampled':>8}  kept by"]
    for r in data["top"]:
        kept = " ".join(name.replace("_", "-") for name in active if r["kept"][name]) or "-"
        lines.append(
            f"{r['rank']:>4} {r['id']:>7}  {token_text(tok, r['id']):<18} {r['logit']:>8.3f} "
            f"{r['prob']:>8.4f} {r['sampled']:>8.4f}  {kept}"
        )
    if data.get("processors"):
        lines.append("processors (before temperature and filters): " + " → ".join(data["processors"]))
    if data.get("constraint"):
        a = data["constraint"]["allowed"]
        shown = " ".join(repr(t) for t in a["tokens"])
        lines.append(f"the constraint allows {a['count']} of {data['vocab_size']} tokens next "
                     f"({a['mass']:.1%} of the model's probability): {shown}")
    lines.append(settings_line(data))
    return "\n".join(lines)


def settings_line(data: dict) -> str:
    t = data["temperature"]
    if t == 0:
        return f"temperature 0: greedy, always the rank-1 token (vocabulary {data['vocab_size']})"
    parts = [f"temperature {t:g}"]
    for name, s in data["settings"].items():
        label = name.replace("_", "-")
        if s["value"] == OFF[name]:
            parts.append(f"{label} off")
        else:
            parts.append(f"{label} {s['value']:g} keeps {s['kept']} ({s['mass']:.1%})")
    return " · ".join(parts) + f" → {data['candidates']} of {data['vocab_size']} tokens can be drawn"


class LogprobRecorder:
    """A sampler that also records, per drawn token, its log-probability and the top K.

    Log-probabilities are the model's own (log-softmax of the raw logits, temperature 1,
    before penalties and filters), as OpenAI's and mlx-lm's logprobs. Recording reads
    the logits on the host, so on MLX a step is no longer overlapped with Python.
    """

    def __init__(self, sample, k: int, ops: Any = NUMPY) -> None:
        self.sample, self.k, self.ops = sample, k, ops
        self.needs_history = getattr(sample, "needs_history", True)
        self.constraints = getattr(sample, "constraints", ())
        self.accept, self.rollback = acceptor(sample), getattr(sample, "rollback", None)
        self.records: list[tuple[int, float, list[tuple[int, float]]]] = []

    def __call__(self, history: Sequence[int], logits: Any):
        token = self.sample(history, logits)
        self.observe(history, logits, int(token))
        return token

    def observe(self, history: Sequence[int], logits: Any, tid: int) -> None:
        """Record token ``tid`` drawn from ``logits`` (the model's raw row at that position); speculative
        decoding drafts and decides with ``self.sample`` and calls this once per kept token."""
        lp = log_softmax(to_numpy(logits, self.ops))
        self.records.append((tid, float(lp[tid]), [(int(i), float(lp[i])) for i in top_ids(lp, self.k)]))

    def entries(self, tok, trace: Sequence[tuple[int, float]]) -> list[dict]:
        """One entry per token of ``trace`` (the EOS included), in order."""
        records = self.records[: len(trace)]  # a pipelined loop may have drawn one more
        assert [r[0] for r in records] == [t for t, _ in trace], "recorded tokens differ from the trace"
        return [
            {
                "id": tid,
                "text": tok.decode([tid]),
                "logprob": round(lp, 6),
                "top": [{"id": i, "text": tok.decode([i]), "logprob": round(v, 6)} for i, v in top],
            }
            for tid, lp, top in records
        ]
