"""Shared fakes for the unit tests: a scripted backend, a byte-level tokenizer, a clock.

No real model is loaded anywhere in the unit suite. ``FakeBackend`` implements the
``mlxgen.backends.base.Backend`` protocol: it keeps a pretend KV cache (a list of
ids), refuses to grow it past ``n_ctx``, records every call, and returns logits that
make a *scripted* token sequence come out under greedy sampling.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pytest

from mlxgen.loop import Done, TokenEvent
from mlxgen.sampling import NUMPY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # shared helpers: gguf_writer

# The interrupt tests send SIGINT to mlxgen subprocesses. A test run started in the
# background of a script inherits SIGINT *ignored*, and so would every child (Python then
# never raises KeyboardInterrupt). A handler here is reset to the default in each child.
signal.signal(signal.SIGINT, signal.default_int_handler)


# ----------------------------------------------------------------------------- tokenizer


class FakeTokenizer:
    """A byte-level vocabulary: ids 0..255 are single bytes, then special tokens,
    then any multi-byte pieces tests add with :meth:`piece`.

    ``decode`` joins the pieces' bytes and decodes them as UTF-8 with replacement,
    exactly like a byte-level BPE decoder does, so a token sequence that stops in the
    middle of a character decodes to text ending in U+FFFD. Special tokens decode to
    their own text, so a test notices if one leaks into the stream.
    """

    SPECIALS = ("<|im_end|>", "<|endoftext|>", "<think>", "</think>")

    def __init__(self) -> None:
        self.pieces: list[bytes] = [bytes([b]) for b in range(256)]
        self.special_ids: dict[str, int] = {}
        for name in self.SPECIALS:
            self.special_ids[name] = len(self.pieces)
            self.pieces.append(name.encode())

    @property
    def eos_id(self) -> int:
        return self.special_ids["<|im_end|>"]

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def piece(self, data: bytes | str) -> int:
        """The id of a token holding exactly these bytes (added on first use)."""
        data = data.encode() if isinstance(data, str) else data
        if len(data) == 1:
            return data[0]
        for i in range(256 + len(self.SPECIALS), len(self.pieces)):
            if self.pieces[i] == data:
                return i
        self.pieces.append(data)
        return len(self.pieces) - 1

    def pieces_to_ids(self, parts: Iterable[bytes | str]) -> list[int]:
        return [self.piece(p) for p in parts]

    def encode(self, text: str) -> list[int]:
        """One id per UTF-8 byte (the worst case for multi-byte characters)."""
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def split_bytes(text: str, sizes: Sequence[int]) -> list[bytes]:
    """Cut text's UTF-8 bytes into consecutive chunks of the given sizes (cycled)."""
    data = text.encode("utf-8")
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i, k = i + n, k + 1
    return out


# ------------------------------------------------------------------------------ clock


class FakeClock:
    """A clock that only moves when told to (the backend advances it per call)."""

    def __init__(self, start: float = 100.0) -> None:
        self.t = start
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


# ---------------------------------------------------------------------------- backend


class CacheOverflow(AssertionError):
    """The loop asked the backend to hold more than n_ctx positions."""


class FakeBackend:
    """Scripted logits: greedy decoding produces ``script`` token by token.

    The k-th sampled token (k = 0 from the prefill logits, k >= 1 from the k-th
    ``step``) is ``script[k]``; past the end of the script ``filler`` is produced.
    ``logits_fn(k)`` replaces the scripted logits entirely when given.

    Every call is recorded in ``calls`` as ``("prefill", ids)``, ``("step", id)`` or
    ``("trim", n)``; ``cache`` is the pretend KV cache and ``max_cache`` the most
    positions it ever held. Growing the cache past ``n_ctx`` raises ``CacheOverflow``.
    """

    name = "fake"
    device = "cpu (fake)"

    def __init__(
        self,
        script: Sequence[int] = (),
        *,
        vocab_size: int = 300,
        n_ctx: int = 64,
        filler: int = ord("."),
        logits_fn: Callable[[int], np.ndarray] | None = None,
        clock: FakeClock | None = None,
        prefill_cost: float = 0.0,
        step_cost: float = 0.0,
        interrupt_at_step: int | None = None,
        pipelined: bool = False,
    ) -> None:
        self.script = list(script)
        self.vocab_size = vocab_size
        self.n_ctx = n_ctx
        self.filler = filler
        self.logits_fn = logits_fn
        self.clock = clock
        self.prefill_cost = prefill_cost
        self.step_cost = step_cost
        self.interrupt_at_step = interrupt_at_step
        if pipelined:  # base.Pipelined: the loop queues step n+1 before handing out token n
            self.sampling_ops, self.schedule = NUMPY, lambda lazy: None
        self.calls: list[tuple[str, object]] = []
        self.cache: list[int] = []
        self.max_cache = 0
        self.n_steps = 0
        self.closed = False
        for t in self.script:
            assert 0 <= t < vocab_size, f"scripted token {t} outside the vocabulary"

    # -- the protocol

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in ids]
        self.calls.append(("prefill", tuple(ids)))
        assert ids, "prefill called with no ids"
        self._grow(ids)
        if self.clock:
            self.clock.advance(self.prefill_cost)
        return self._logits()

    def step(self, token: int) -> np.ndarray:
        token = int(token)
        self.calls.append(("step", token))
        self.n_steps += 1
        if self.interrupt_at_step is not None and self.n_steps == self.interrupt_at_step:
            raise KeyboardInterrupt
        self._grow([token])
        if self.clock:
            self.clock.advance(self.step_cost)
        return self._logits()

    def trim(self, n_tokens: int) -> None:
        self.calls.append(("trim", n_tokens))
        del self.cache[n_tokens:]

    def close(self) -> None:
        self.closed = True

    # -- helpers for tests

    def _grow(self, ids: list[int]) -> None:
        if len(self.cache) + len(ids) > self.n_ctx:
            raise CacheOverflow(f"cache would hold {len(self.cache) + len(ids)} positions; n_ctx is {self.n_ctx}")
        self.cache.extend(ids)
        self.max_cache = max(self.max_cache, len(self.cache))

    def _logits(self) -> np.ndarray:
        k = self.n_steps
        if self.logits_fn is not None:
            return np.asarray(self.logits_fn(k), dtype=np.float32)
        target = self.script[k] if k < len(self.script) else self.filler
        return one_hot_logits(target, self.vocab_size)

    def kinds(self, kind: str) -> list:
        return [arg for name, arg in self.calls if name == kind]

    @property
    def prefilled(self) -> list[int]:
        return [i for ids in self.kinds("prefill") for i in ids]

    @property
    def stepped(self) -> list[int]:
        return self.kinds("step")


def one_hot_logits(target: int, vocab_size: int, high: float = 10.0, low: float = -10.0) -> np.ndarray:
    logits = np.full(vocab_size, low, dtype=np.float32)
    logits[target] = high
    return logits


def greedy(history: Sequence[int], logits) -> int:
    """The simplest sampler: argmax, no history needed."""
    return int(np.argmax(logits))


greedy.needs_history = False


# ---------------------------------------------------------------------------- helpers


def run(gen) -> tuple[list[TokenEvent], Done]:
    """Drain a loop.generate iterator: (token events, the Done event)."""
    events = list(gen)
    assert events and isinstance(events[-1], Done), "the stream must end with Done"
    assert all(isinstance(e, TokenEvent) for e in events[:-1]), "only TokenEvents before Done"
    assert sum(isinstance(e, Done) for e in events) == 1
    return events[:-1], events[-1]


def streamed(tokens: Sequence[TokenEvent]) -> str:
    return "".join(e.text for e in tokens)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory) -> dict[str, str]:
    """Environment for mlxgen runs: a fresh cache for the test module, and no network."""
    return {"MLXGEN_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", name="env")
def _env(cache_env) -> dict[str, str]:
    """The same, under the name the chat, inspect and MLX CLI tests use."""
    return cache_env


@contextlib.contextmanager
def open_sessions(env: dict[str, str], names: Sequence[str], **overrides):
    """Real sessions on the default config, one per backend name, in ``env``; closed after."""
    from mlxgen import session
    from mlxgen.config import load_config

    opened = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        try:
            for name in names:
                cfg = load_config(None, {"backend": name, **overrides})
                opened[name] = session.open_session(cfg, session.plan(cfg).choice)
            yield opened
        finally:
            for s in opened.values():
                s.close()


@pytest.fixture
def tok() -> FakeTokenizer:
    return FakeTokenizer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# Test modules import the fakes with ``from conftest import ...``; keep that working
# even if tests/ ever becomes a package (then this module is ``tests.conftest``).
sys.modules.setdefault("conftest", sys.modules[__name__])
