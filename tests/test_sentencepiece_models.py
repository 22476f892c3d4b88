"""SentencePiece models end to end: tiny random-weight GGUFs with llama.cpp's llama-spm and
phi-3 vocabularies (from its test suite), written here.

- `mlxgen run --raw` on llama.cpp: its prompt ids are llama.cpp's (`Llama.tokenize`) and its
  greedy tokens equal llama-cpp-python's own `Llama.generate`;
- `mlxgen run --backend mlx` on the same file (imported) sends the same prompt ids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import llamacpp_suite as suite  # noqa: E402
from make_tiny_gguf import write_tiny_gguf  # noqa: E402

llama_cpp = pytest.importorskip("llama_cpp")

PROMPT = "Hello world! Ünïcödé, 你好 🙂\n  two  spaces and <s> a tag"
N = 12
VOCABS = {"llama-spm": "tiny-random-llama", "phi-3": "tiny-random-phi-3"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root, why = suite.fetch()
    if root is None:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("spm")
    paths = {}
    for vocab, name in VOCABS.items():
        path = out / f"{vocab}.gguf"
        write_tiny_gguf(path, root / "models" / f"ggml-vocab-{vocab}.gguf", layers=2, dim=64, heads=4, kv_heads=2,
                        ffn=128, quant="f16", seed=1, name=name)
        paths[vocab] = path
    return paths


def run(model: Path, env: dict, *flags: str) -> tuple[dict, dict]:
    trace = Path(env["MLXGEN_CACHE"]) / f"trace-{model.stem}-{len(flags)}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mlxgen", "run", PROMPT, "--model", str(model), "--raw", "--temperature", "0",
         "-n", str(N), "--json", "--trace", str(trace), "--ctx", "256", *flags],
        capture_output=True, timeout=600, env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return json.loads(proc.stdout), json.loads(trace.read_text())


@pytest.mark.parametrize("vocab", sorted(VOCABS))
def test_llamacpp_run_matches_llama_generate(models, vocab, env):
    out, trace = run(models[vocab], env, "--backend", "llama.cpp", "--threads", "2")
    prompt = [p["id"] for p in trace["prompt"]]
    llm = llama_cpp.Llama(str(models[vocab]), n_ctx=256, n_threads=2, verbose=False)
    try:
        assert prompt == llm.tokenize(PROMPT.encode(), add_bos=True, special=True)
        assert prompt[0] == llm.token_bos() and len(prompt) > 10
        theirs = []
        for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, t) or len(theirs) == N:
                break
            theirs.append(t)
    finally:
        llm.close()
    assert out["tokens"] == theirs


@pytest.mark.mlx
@pytest.mark.parametrize("vocab", sorted(VOCABS))
def test_both_backends_send_the_same_prompt_ids(models, vocab, env):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    _, on_llamacpp = run(models[vocab], env, "--backend", "llama.cpp", "--threads", "2")
    _, on_mlx = run(models[vocab], env, "--backend", "mlx")
    assert [p["id"] for p in on_mlx["prompt"]] == [p["id"] for p in on_llamacpp["prompt"]]
    assert [p["text"] for p in on_mlx["prompt"]] == [p["text"] for p in on_llamacpp["prompt"]]
