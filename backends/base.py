"""The backend boundary: forward passes and a KV cache, nothing else.

No sampling parameters, no strings, no printing cross this line.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

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


# Optional, used when present:
#   prefill_chunk: int                      prompt tokens per prefill call (default 512)
#   extend(ids) -> None                     extend the cache without logits (non-final prefill chunks)
#   pipelined / schedule / sampling_ops     MLX: queue step n+1 before token n is used
#   synchronize() -> None                   wait for queued device work (bench, before starting its clock)
#   native_stream / describe / peak_memory  bench: the library's own loop, model facts, allocator peak
