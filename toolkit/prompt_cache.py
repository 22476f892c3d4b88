"""Reuse what a backend's KV cache already holds.

``PromptCache.prepare(ids)`` makes the cache ready for a prompt: it keeps the longest
common prefix of what the cache holds and ``ids``, drops the rest, and says how many
positions were kept, so the loop prefills only the new tokens. Chat turns, bench
depths and the server's requests all go through it.

With a :class:`PrefixLRU` (the server's), a prompt that would drop much of what the
cache holds first saves it (``base.State.save_state``, in memory), and a prompt that
shares more with an earlier saved prefix than with the live cache restores that one
(``load_state``), so two conversations that alternate do not evict each other.

It keeps a record of the ids it believes are cached. The backend says how many
positions it really holds (``mlxgen.backends.base.n_cached``), so after an interrupted
pass only the part of the record the backend vouches for is trusted. A backend that
cannot say reuses nothing.
"""

from __future__ import annotations

import collections
import logging
from typing import Sequence

from mlxgen.backends.base import Backend, Shift, State, n_cached

log = logging.getLogger("mlxgen.prompt_cache")
MIN_SWAP = 16  # tokens: a prefix saved or restored must be worth at least this many
PREFIX_ENTRIES = 4  # earlier prefixes a server keeps by default (mlxgen serve --prefix-cache)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixLRU:
    """Earlier prefixes' cache states in memory, most recently used last; bounded by count and bytes."""

    def __init__(self, max_entries: int = PREFIX_ENTRIES, max_bytes: int = 2 << 30) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: "collections.OrderedDict[tuple[int, ...], bytes]" = collections.OrderedDict()
        self.saved = self.restored = 0  # counts, for the logs and the tests

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def best(self, ids: Sequence[int]) -> tuple[tuple[int, ...], int]:
        """The entry sharing the longest prefix with ``ids``, and that length."""
        found, n = (), 0
        for key in self.entries:
            c = common_prefix(key, ids)
            if c > n:
                found, n = key, c
        return found, n

    def covers(self, ids: Sequence[int]) -> bool:
        """An entry already holds ``ids`` (as a prefix of its own)."""
        return any(len(key) >= len(ids) and common_prefix(key, ids) == len(ids) for key in self.entries)

    def put(self, ids: Sequence[int], state: bytes) -> None:
        key = tuple(ids)
        for old in [k for k in self.entries if common_prefix(k, key) == len(k)]:  # superseded by this one
            del self.entries[old]
        self.entries[key] = state
        self.saved += 1
        while self.entries and (len(self.entries) > self.max_entries or self.nbytes > self.max_bytes):
            self.entries.popitem(last=False)

    def take(self, key: tuple[int, ...]) -> bytes:
        self.entries.move_to_end(key)
        self.restored += 1
        return self.entries[key]

    def drop(self, key: tuple[int, ...]) -> None:
        self.entries.pop(key, None)


def dropped_span(held: Sequence[int], ids: Sequence[int], start: int, tries: int = 64) -> int:
    """How many positions after ``start`` to drop from ``held`` so that the rest of it continues ``ids[start:]``.

    0 if no drop does (a chat that dropped its oldest turns: what follows them lines up again).
    """
    if start >= len(ids) - 1:
        return 0
    for n in [n for n in range(1, len(held) - start) if held[start + n] == ids[start]][:tries]:
        rest = len(held) - start - n
        if rest > 0 and common_prefix(held[start + n :], ids[start:]) >= min(rest, len(ids) - 1 - start):
            return n
    return 0


class PromptCache:
    def __init__(self, backend: Backend, lru: PrefixLRU | None = None) -> None:
        self.backend = backend
        self._ids: list[int] = []
        self.lru = lru if isinstance(backend, State) else None
        self.shifted = 0  # positions the last prepare(shift=True) dropped in place

    @property
    def ids(self) -> list[int]:
        """The token ids the backend's cache holds, position by position."""
        return self._ids[: n_cached(self.backend)]

    def prepare(self, ids: Sequence[int], shift: bool = False) -> int:
        """Trim the cache to its longest common prefix with ``ids``; return how many are reused.

        At least one token of ``ids`` is left to prefill (the loop needs its logits).
        From here until :meth:`record`, the record is ``ids`` (the prompt is being prefilled).
        ``shift``: where ``ids`` is the cache less a span after the common prefix (a chat that
        dropped its oldest turns) and the backend can shift (``Shift``), drop that span in place
        and keep what follows it; otherwise what follows is prefilled again.
        """
        if self.lru is not None:
            self._swap(ids)
        held = self.ids
        reused = min(common_prefix(held, ids), max(len(ids) - 1, 0))
        self.shifted = 0
        if shift and isinstance(self.backend, Shift) and reused < len(held):
            span = dropped_span(held, ids, reused)
            if span and self.backend.shift(reused, span):
                self.shifted, held = span, held[:reused] + held[reused + span :]
                reused = min(common_prefix(held, ids), max(len(ids) - 1, 0))
        self.backend.trim(reused)
        self._ids = list(ids)
        return reused

    def _swap(self, ids: Sequence[int]) -> None:
        """Save what the cache holds if ``ids`` would drop much of it; restore a better saved prefix."""
        held = self.ids
        keep = common_prefix(held, ids)
        if len(held) - keep >= MIN_SWAP and not self.lru.covers(held):
            self.lru.put(held, self.backend.save_state())
        key, n = self.lru.best(ids)
        if n < keep + MIN_SWAP:
            return
        try:
            self._ids = list(key[: self.backend.load_state(self.lru.take(key), key)])
        except ValueError as e:  # cannot happen with states this process saved; never fatal
            log.warning("a saved prefix could not be restored (%s); prefilling", e)
            self.lru.drop(key)
            self.reset()

    def record(self, ids: Sequence[int], shifts: Sequence[tuple[int, int]] = ()) -> None:
        """What the cache holds now: the prompt plus the tokens generated after it, less what
        context shifts dropped on the way (``Done.shifts``)."""
        from mlxgen.loop import apply_shifts

        self._ids = apply_shifts(ids, shifts)

    def fill(self, ids: Sequence[int], prefill_chunk: int | None = None) -> None:
        """Make the cache hold exactly ``ids`` (no logits wanted): a bench depth, a saved prefix."""
        from mlxgen.loop import prefill

        self.backend.trim(0)
        self._ids = list(ids)
        if ids:
            prefill(self.backend, ids, 0, prefill_chunk)

    def reset(self) -> None:
        """Empty the cache."""
        self._ids = []
        self.backend.trim(0)
