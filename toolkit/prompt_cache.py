"""Reuse what a backend's KV cache already holds.

``PromptCache.prepare(ids)`` makes the cache ready for a prompt: it keeps the longest
common prefix of what the cache holds and ``ids``, drops the rest, and says how many
positions were kept, so the loop prefills only the new tokens. Chat turns, bench
depths and the server's requests all go through it.

It keeps a record of the ids it believes are cached. The backend says how many
positions it really holds (``mlxgen.backends.base.n_cached``), so after an interrupted
pass only the part of the record the backend vouches for is trusted. A backend that
cannot say reuses nothing.
"""

from __future__ import annotations

from typing import Sequence

from mlxgen.backends.base import Backend, Shift, n_cached


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


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
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._ids: list[int] = []
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
        held = self.ids
        reused = min(common_prefix(held, ids), max(len(ids) - 1, 0))
        self.shifted = 0
        if shift and isinstance(self.backend, Shift) and reused < len(held):
            span = dropped_span(held, ids, reused)
            if span and self.backend.shift(reused, span):
                self.shifted, held = span, held[:reused] + held[reused + span :]
                self._ids = held
                reused = min(common_prefix(held, ids), max(len(ids) - 1, 0))
        self.backend.trim(reused)
        self._ids = list(ids)
        return reused

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
