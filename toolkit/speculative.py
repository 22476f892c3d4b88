"""Speculative decoding: propose tokens cheaply, check them all in one target pass.

A drafter proposes up to k tokens after the history: a small draft model
(:class:`DraftModel`) or n-gram matches in the prompt and the text so far
(:class:`Lookup`). The target runs ``[last token, d1 … dk]`` through its cache with
``Verify.verify`` and gets every position's logits; the run's own sampler decides:

- greedy: keep drafts while they equal the target's argmax, then the target's token;
  the output is token-identical to plain greedy decoding;
- sampling: keep draft x with probability min(1, p(x) / q(x)), else draw from the
  normalized max(0, p - q) and stop (Leviathan et al. 2023); p and q are the target's
  and the draft's distributions after the same processors, temperature and filters,
  so the output is distributed exactly as plain sampling. A lookup draft is a point
  mass (q(x) = 1).

If every draft is kept, the last row gives one more token for free. ``trim`` drops
the rejected positions, so between rounds the target's cache holds the history but its
last token, exactly as in ``loop.token_stream``.

Constraints (``--json-schema`` …) work as in plain decoding: every token handed out is
given to the sampler's ``accept`` before the next row is decided, so row j is masked by
the grammar's state after the tokens kept before it, and a lookup draft the grammar
forbids has p = 0 and is rejected. A draft model proposes under the same constraint: it
accepts each token it drafts and rolls them all back before the target decides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from mlxgen.backends.base import Backend, Verify
from mlxgen.errors import ModelError
from mlxgen.loop import prefill
from mlxgen.prompt_cache import common_prefix
from mlxgen.sampling import NUMPY, acceptor, draw_probs

MAX_DRAFT = 16  # draft tokens per round, at most


class Drafter(Protocol):
    """Proposes up to k tokens after ``history``; ``q``: their distributions (rows), None for point masses.

    ``sample`` is the run's sampler (processors, temperature, filters): a draft model
    proposes with it, so q is filtered as p is.
    """

    name: str

    def propose(self, history: Sequence[int], k: int, sample) -> tuple[list[int], np.ndarray | None]: ...

    def close(self) -> None: ...


@dataclass
class SpecStats:
    """What speculation did in one run: counts, and per yielded token whether the draft proposed it."""

    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    from_draft: list[bool] = field(default_factory=list)


@dataclass
class Speculation:
    """A drafter and how many tokens it proposes per round (``adaptive``: grow on full acceptance, shrink on a miss)."""

    drafter: Drafter
    tokens: int
    adaptive: bool = False
    drafted: int = 0  # over every run with this drafter (bench reads the difference around a run)
    accepted: int = 0

    @property
    def warning(self) -> str | None:
        return getattr(self.drafter, "warning", None)

    def close(self) -> None:
        self.drafter.close()


# ------------------------------------------------------------------ drafters


class Lookup:
    """Prompt lookup: the tokens that followed the latest earlier match of the last n tokens.

    n runs from ``max_ngram`` down to ``min_ngram``; the first size with a match wins.
    No second model, so q is a point mass on each proposed token. Single-token matches
    are off by default: on chat prompts they proposed junk (3% accepted, 0.6x plain
    decoding on llama.cpp) where bigrams kept the loss small (scripts/spec_bench.py).
    """

    name = "lookup"

    def __init__(self, max_ngram: int = 3, min_ngram: int = 2) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, history: Sequence[int], k: int, sample=None) -> tuple[list[int], None]:
        h = list(history)
        for n in range(self.max_ngram, self.min_ngram - 1, -1):
            if len(h) <= n:
                continue
            tail = h[-n:]
            for start in range(len(h) - n - 1, -1, -1):
                if h[start : start + n] == tail:
                    return h[start + n : start + n + k], None
        return [], None

    def close(self) -> None:
        pass


class DraftModel:
    """A small model on the same backend and vocabulary, sampled with the run's sampler
    (greedy: its argmax; else a draw from its filtered distribution with its own ``rng``).

    It keeps its own cache: each round it rolls back to the longest common prefix of
    what it holds and the history, prefills the rest, then steps k - 1 times.
    """

    name = "draft model"

    def __init__(self, backend: Backend, vocab_size: int, rng: np.random.Generator | None = None,
                 warning: str | None = None) -> None:
        self.backend, self.vocab_size = backend, vocab_size  # vocab_size: the target's
        self.rng = rng if rng is not None else np.random.default_rng()
        self.warning = warning
        self._ids: list[int] = []

    def propose(self, history: Sequence[int], k: int, sample) -> tuple[list[int], np.ndarray | None]:
        if k <= 0:
            return [], None
        keep = min(common_prefix(self._ids, history), len(history) - 1)
        self.backend.trim(keep)
        logits = prefill(self.backend, history, keep)[: self.vocab_size]  # never an id the model lacks
        self._ids = list(history)
        h, tokens, rows = list(history), [], []
        greedy = sample.params.greedy
        accept, rollback = acceptor(sample), getattr(sample, "rollback", None)
        try:
            for j in range(k):
                if greedy:
                    tid = int(sample(h, logits))
                else:
                    q = _numpy(sample.probs(h, logits), self.vocab_size)
                    tid = int(draw_probs(q, 1.0 - self.rng.random(), NUMPY))
                    rows.append(q)
                tokens.append(tid)
                h.append(tid)
                if j < k - 1:
                    accept(tid)  # the next draft is masked by the grammar's state after this one
                    logits = self.backend.step(tid)[: self.vocab_size]
                    self._ids.append(tid)
        finally:
            if rollback is not None and len(tokens) > 1:
                rollback(len(tokens) - 1)  # the target decides from the state before the drafts
        return tokens, (np.stack(rows) if rows else None)

    def close(self) -> None:
        self.backend.close()


def _numpy(probs, size: int) -> np.ndarray:
    """A distribution as float64 numpy, cut or zero-padded to the target's vocabulary size."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[-1] < size:
        p = np.concatenate([p, np.zeros(size - p.shape[-1])])
    return p[:size]


# ------------------------------------------------------------------ opening a draft model

VOCAB_SLACK = 128  # padded embedding rows may differ (llama.cpp's speculative example allows 128)


def open_draft_model(cfg, choice, target: Backend, tokenizer) -> Speculation:
    """Load ``inference.draft`` on the target's backend; refuse another vocabulary in one line."""
    from mlxgen import backends

    source = cfg.inference.draft
    dcfg = draft_config(cfg, choice.backend)
    info, module = backends.REGISTRY[choice.backend], backends.load_module(choice.backend)
    weights = module.prepare(dcfg)
    check_vocabulary(tokenizer, info.open_tokenizer(dcfg, weights), source)
    draft = module.load(weights, dcfg, choice)
    if abs(draft.vocab_size - target.vocab_size) > VOCAB_SLACK:
        draft.close()
        raise ModelError(f"--draft-model {source}: its vocabulary has {draft.vocab_size} tokens and the model's "
                         f"{target.vocab_size}; a draft must share the model's vocabulary")
    seed = cfg.inference.seed
    rng = np.random.default_rng(None if seed is None else seed + 1)
    drafter = DraftModel(draft, target.vocab_size, rng, larger_warning(source, draft, target))
    return Speculation(drafter, cfg.inference.draft_tokens, cfg.inference.adaptive_draft)


def draft_config(cfg, backend: str):
    """The target's config with the draft's model source (``--model``'s rules), its own tokenizer, no draft."""
    from mlxgen import config as config_mod
    from mlxgen.errors import ConfigError
    from mlxgen.sources import model_source

    source = cfg.inference.draft
    keys = model_source(source)
    claimed, what = keys.pop("backend", None), keys.pop("what", None)
    if claimed and claimed != backend:
        raise ConfigError(f"--draft-model {source}: {what}, which only the {claimed} backend runs, and the model "
                          f"runs on {backend}; a draft runs on the model's backend")
    raw = cfg.to_dict()
    raw["tokenizer"], raw["backend"] = {}, backend
    for dotted, value in {**keys, "inference.draft": None, "inference.lookup": None}.items():
        config_mod._set_dotted(raw, dotted, value)
    dcfg = config_mod._build(config_mod.Config, raw, "")
    dcfg.validate()
    return dcfg


def check_vocabulary(target_tok, draft_tok, source: str) -> None:
    """The same token for every id both tokenizers know (their sizes may differ by padding)."""
    n = min(target_tok.vocab_size, draft_tok.vocab_size)
    if abs(target_tok.vocab_size - draft_tok.vocab_size) > VOCAB_SLACK:
        raise ModelError(f"--draft-model {source}: its tokenizer has {draft_tok.vocab_size} tokens and the model's "
                         f"{target_tok.vocab_size}; a draft must share the model's vocabulary")
    for i in range(n):
        ours, theirs = target_tok.token_bytes(i), draft_tok.token_bytes(i)
        if ours != theirs:
            raise ModelError(f"--draft-model {source}: token {i} is {theirs!r} there and {ours!r} in the model; "
                             "a draft must share the model's vocabulary")


def larger_warning(source: str, draft: Backend, target: Backend) -> str | None:
    from mlxgen.backends.base import Measured

    if not (isinstance(draft, Measured) and isinstance(target, Measured)):
        return None
    d, t = draft.describe().get("size_bytes") or 0, target.describe().get("size_bytes") or 0
    if d and t and d >= t:
        return (f"--draft-model {source}: the draft ({d / 2**20:.0f} MiB) is not smaller than the model "
                f"({t / 2**20:.0f} MiB); speculative decoding will likely be slower than plain decoding")
    return None


# ------------------------------------------------------------------ the stream


def check(backend: Backend) -> None:
    if not isinstance(backend, Verify):
        raise ModelError(f"the {backend.name} backend cannot verify several positions in one pass; "
                         "run without --draft-model/--lookup")


def speculative_stream(
    backend: Backend,
    prompt: Sequence[int],
    sample,
    limit: int,
    spec: Speculation,
    stats: SpecStats,
    prefill_chunk: int | None = None,
    on_prefilled: Callable[[], None] | None = None,
    cached: int = 0,
) -> Iterator[int]:
    """``loop.token_stream``'s contract (up to ``limit`` ids, the same cache state between
    tokens), with drafted tokens checked ``spec.tokens`` at a time."""
    check(backend)
    from mlxgen.logits import LogprobRecorder

    accept = acceptor(sample)  # constraints hear every token handed out, before the next is decided
    recorder = sample if isinstance(sample, LogprobRecorder) else None  # told each kept token and its row
    observe = recorder.observe if recorder is not None else None
    sample = recorder.sample if recorder is not None else sample  # drafting and deciding use the sampler itself
    history = list(prompt)
    logits = prefill(backend, prompt, cached, prefill_chunk)
    first = int(sample(history, logits))
    if observe is not None:
        observe(history, logits, first)
    if on_prefilled:
        on_prefilled()
    k = max(1, min(spec.tokens, MAX_DRAFT))
    try:
        accept(first)
        history.append(first)
        stats.from_draft.append(False)
        yield first
        while len(history) - len(prompt) < limit:
            room = limit - (len(history) - len(prompt)) - 1  # a round yields at most drafts + 1 tokens
            drafts, q = spec.drafter.propose(history, min(k, room), sample) if room > 0 else ([], None)
            rows = backend.verify([history[-1], *drafts]) if drafts else [backend.step(history[-1])]
            stats.rounds += 1
            stats.drafted += len(drafts)
            spec.drafted += len(drafts)
            kept = 0
            for j, tid, drafted in _decide(sample, history, rows, drafts, q, backend.vocab_size):
                kept += drafted
                stats.accepted += drafted
                spec.accepted += drafted
                if observe is not None:
                    observe(history, rows[j], tid)
                accept(tid)
                history.append(tid)
                stats.from_draft.append(drafted)
                yield tid
            backend.trim(len(history) - 1)
            if spec.adaptive and drafts:  # as transformers' "heuristic" schedule: +2 on a full accept, else -1
                k = min(k + 2, MAX_DRAFT) if kept == len(drafts) else max(1, k - 1)
    finally:  # an EOS or stop string ended the run mid-round: drop positions past what was handed out
        backend.trim(len(history) - 1)


def _decide(sample, history: list[int], rows, drafts: list[int], q, vocab: int):
    """Yield (row, token, from_draft) until the first rejection, then the target's own token.

    ``history`` grows as the caller appends each yielded token (the processors see it).
    """
    greedy = sample.params.greedy
    for j, d in enumerate(drafts):
        if greedy:
            tid = int(sample(history, rows[j]))
            if tid == d:
                yield j, d, True
                continue
            yield j, tid, False
            return
        p = _numpy(sample.probs(history, rows[j]), vocab)
        qd = 1.0 if q is None else q[j][d]
        if sample.rng.random() * qd < p[d]:  # accept with probability min(1, p(d) / q(d))
            yield j, d, True
            continue
        if q is None:
            residual = p.copy()
            residual[d] = 0.0
        else:
            residual = np.maximum(p - q[j], 0.0)
        if not residual.sum() > 0:  # p <= q everywhere but rounding: p itself
            residual = p
        yield j, int(draw_probs(residual, 1.0 - sample.rng.random(), NUMPY)), False
        return
    last = len(drafts)
    yield last, int(sample(history, rows[last])), False
