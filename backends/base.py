"""The backend boundary: forward passes and a KV cache, nothing else.

No sampling parameters, no strings, no printing cross this line.

A backend is three things:

1. **A registry entry** (``mlxgen.backends.BackendInfo``): its name, the packages it
   needs, how hardware detection rates it, how its model source is described, how its
   tokenizer is opened (``open_tokenizer(cfg, weights)``; ``weights`` None: without
   preparing them, for `mlxgen tokens`) and which libraries bench reports. Light: no
   backend library is imported until one of its functions runs.
2. **A module** (``BackendInfo.module``), imported only when the backend is chosen,
   with these functions (:class:`BackendModule`):

       prepare(cfg) -> Path                      the local weights (download / convert / import once)
       load(weights, cfg, choice) -> Backend     the loaded model with an empty cache
       doctor_rows() -> [(key, value)]           `mlxgen doctor`'s lines about its library

3. **A Backend object**: the four methods of :class:`Backend`, and any of the small
   capability Protocols below. Callers check a capability one way only,
   ``isinstance(backend, Capability)``, and fall back to what the required methods
   give: a backend that offers none of them still runs everything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from mlxgen.config import Config
    from mlxgen.hardware import Choice

Logits = Any  # a 1-D float array of length vocab_size (np.ndarray, or mx.array on MLX)


@runtime_checkable
class Backend(Protocol):
    name: str  # "mlx", "llama.cpp"
    device: str  # "gpu (metal)", "cuda", "cpu (2 threads)"
    n_ctx: int
    vocab_size: int

    def prefill(self, ids: Sequence[int]) -> Logits:
        """Extend the cache with ids; return the logits at the last position."""

    def step(self, token: int) -> Logits:
        """Run one token through the cache; return its logits."""

    def trim(self, n_tokens: int) -> None:
        """Keep only the first n_tokens cached positions."""

    def close(self) -> None:
        """Free the model and its cache."""


class BackendModule(Protocol):
    """What a backend's module offers the session (module-level functions)."""

    def prepare(self, cfg: "Config") -> Path:
        """The local weights for ``cfg``: a file or folder, downloaded, converted or imported once (cached)."""

    def load(self, weights: Path, cfg: "Config", choice: "Choice") -> Backend:
        """The model, ready, with an empty cache. Errors are one-line ``MlxgenError``s."""

    def doctor_rows(self) -> list[tuple[str, str]]:
        """`mlxgen doctor`'s rows about this library (version, device, build)."""


# ------------------------------------------------------------------ capabilities
# Each is optional. The loop, bench, chat and server check them with isinstance().


@runtime_checkable
class Cached(Protocol):
    """The cache can say how many positions it holds (prompt reuse needs it)."""

    @property
    def n_cached(self) -> int: ...


@runtime_checkable
class Extend(Protocol):
    """Fill the cache without computing logits: the loop's non-final prefill chunks."""

    def extend(self, ids: Sequence[int]) -> None: ...


@runtime_checkable
class Chunked(Protocol):
    """The backend names its own prefill chunk (prompt tokens per forward pass)."""

    prefill_chunk: int


@runtime_checkable
class Verify(Protocol):
    """Extend the cache by ``ids`` and return the logits at every one of those positions.

    Speculative decoding: ``trim`` rolls back what the target rejects. ``verify_note`` is None
    where rows equal what one-token ``step`` calls give, up to the kernels' rounding (bit for
    bit on MLX and on llama.cpp's quantized models with flash attention), so speculative
    greedy output equals plain greedy output; else it says why not, for a warning.
    """

    verify_note: str | None

    def verify(self, ids: Sequence[int]) -> Logits: ...  # shape (len(ids), vocab_size)


@runtime_checkable
class State(Protocol):
    """Copy the cache out as bytes and back in: saved prompt caches (``mlxgen.prompt_file``)
    and the server's in-memory LRU of earlier prefixes (``mlxgen.prompt_cache.PrefixLRU``).

    ``save_state()`` serializes the positions the cache holds (``n_cached``) in the
    library's own format (llama.cpp: ``llama_state_seq_get_data`` of sequence 0; MLX:
    mlx-lm's ``save_prompt_cache``). ``load_state(data, ids)`` replaces the cache with
    them and returns the positions restored; ``ids`` are the tokens at those positions
    (llama-cpp-python keeps a token record beside the cache). Bytes that do not fit this
    model or context raise ``ValueError`` and leave the cache empty. ``state_version``
    names the library and its version: its format changes between versions, so a state is
    loaded only by the same one (``mlxgen.prompt_file`` checks it).
    """

    state_version: str

    def save_state(self) -> bytes: ...

    def load_state(self, data: bytes, ids: Sequence[int]) -> int: ...


@runtime_checkable
class Shift(Protocol):
    """Drop the cached positions ``[start, start + n)`` in place; the later ones move down by ``n``.

    llama.cpp's context shift (its RoPE keys are re-rotated). Returns False when this model's
    cache cannot shift; the caller then trims to ``start`` and prefills the kept tokens again.
    """

    def shift(self, start: int, n: int) -> bool: ...


@runtime_checkable
class KVMemory(Protocol):
    """What the KV cache is made of: ``{"type": "f16" | "q8_0" | "8-bit (group 64)" …, "bytes": int, "note": str}``.

    ``bytes``: the memory the cache holds now (llama.cpp allocates its whole context at load;
    MLX grows its cache with the positions filled).
    """

    def kv_cache(self) -> dict: ...


@runtime_checkable
class Pipelined(Protocol):
    """Queue step n+1 before token n reaches Python (MLX's ``mx.async_eval``).

    The sampler runs on the backend's own arrays with ``sampling_ops`` (the same
    definitions as numpy's ``mlxgen.sampling.NUMPY``), so a step stays on the device.
    """

    sampling_ops: Any

    def schedule(self, lazy: Any) -> None: ...


@runtime_checkable
class Measured(Protocol):
    """What bench reads: model facts, the library's own allocator peak, device sync."""

    def describe(self) -> dict: ...  # model, size_bytes, params, build, note; threads, n_gpu_layers

    def peak_memory(self) -> int | None: ...

    def reset_peak_memory(self) -> None: ...

    def synchronize(self) -> None: ...


@runtime_checkable
class NativeStream(Protocol):
    """The backend library's own generation loop, greedy (bench --vs-native)."""

    def native_stream(self, ids: Sequence[int], cached: int, n: int): ...


def prefill_chunk(backend: Backend, default: int) -> int:
    """Prompt tokens per prefill call: the backend's own if it names one."""
    return backend.prefill_chunk if isinstance(backend, Chunked) else default


def n_cached(backend: Backend) -> int:
    """Positions the cache holds; 0 for a backend that cannot say (nothing is reused)."""
    return int(backend.n_cached) if isinstance(backend, Cached) else 0
