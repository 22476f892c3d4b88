"""Text-side streaming: UTF-8-safe incremental detokenizing and stop strings."""

from __future__ import annotations

from typing import Callable, Sequence

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turn a growing list of token ids into text deltas that never split a character.

    Decoding token by token breaks multi-byte characters (a byte-level BPE token may
    hold half of "ñ" or "🙂"). Here a window of recent tokens is decoded and text is
    released only when it no longer ends in an incomplete character (U+FFFD), the
    offset trick used by text-generation-inference and mlx-lm. The window keeps
    per-token work constant instead of re-decoding the whole output.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str]):
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # tokens whose text has been released

    def add(self, token: int) -> str:
        self._ids.append(token)
        window = self._ids[self._prefix :]
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(window)
        if len(text) > len(before) and not text.endswith(REPLACEMENT):
            delta = text[len(before) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(before) :]


class StopMatcher:
    """Hold text back while it could still be the start of a stop string.

    ``feed`` returns (text safe to emit, whether a stop string was completed).
    Text from the stop string on is never emitted.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self._pending += text
        hits = [i for i in (self._pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self._pending = self._pending[: min(hits)], ""
            return out, True
        keep = self._partial_suffix(self._pending)
        cut = len(self._pending) - keep
        out, self._pending = self._pending[:cut], self._pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best
