"""--kv-bits and --context-overflow on the real backends (the embedded SmolLM2-135M).

Fast checks only; the measurements (bytes at 2k/8k, agreement over 1,024 positions,
decode speed, the 40-turn chat) are scripts/kv_quant_eval.py and scripts/chat_shift_check.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import open_sessions

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "All that glitters is not gold. Where there is a will, there is a way. Actions speak louder than words. "
        "The early bird catches the worm, and the second mouse gets the cheese. Knowledge is power. ")


def reference_text() -> str:
    """Python's own reference page on special method names: a long real text on every machine."""
    import pydoc_data.topics

    return pydoc_data.topics.topics["specialnames"]


REFERENCE = reference_text()


def top1(backend, ids) -> np.ndarray:
    backend.trim(0)
    return np.asarray(backend.verify(ids), dtype=np.float32).argmax(-1)


def test_llamacpp_quantized_cache_types_bytes_and_flash_attention(env):
    import llama_cpp

    common = {"llm.n_threads": 1, "llm.n_ctx": 256}
    with open_sessions(env, ["llama.cpp"], **common) as full, \
            open_sessions(env, ["llama.cpp"], **common, **{"llm.kv_bits": 8}) as q8, \
            open_sessions(env, ["llama.cpp"], **common, **{"llm.kv_bits": 4}) as q4:
        f, b8, b4 = full["llama.cpp"].backend, q8["llama.cpp"].backend, q4["llama.cpp"].backend
        kv16, kv8, kv4 = f.kv_cache(), b8.kv_cache(), b4.kv_cache()
        assert (kv16["type"], kv8["type"], kv4["type"]) == ("f16", "q8_0", "q4_0")
        # llama.cpp's own block sizes: q8_0 34 bytes and q4_0 18 bytes per 32 values, f16 64
        assert kv8["bytes"] * 64 == kv16["bytes"] * 34 and kv4["bytes"] * 64 == kv16["bytes"] * 18
        assert kv16["bytes"] == 256 * 30 * 2 * 3 * 64 * 2  # positions x layers x (K, V) x kv heads x head_dim x f16
        # flash attention: on by default (llm.flash_attn), so a quantized V cache needs no note
        enabled = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        assert f._llm.context_params.flash_attn_type == enabled
        assert b8._llm.context_params.flash_attn_type == enabled == b4._llm.context_params.flash_attn_type
        assert not any("flash attention" in w for s in (full, q8) for w in s["llama.cpp"].warnings())
        ids = full["llama.cpp"].tokenizer.encode(TEXT)[:96]
        assert (top1(f, ids) == top1(b8, ids)).mean() >= 0.9
    # --no-flash-attn cannot hold with a quantized V cache: it stays on, and the run says so
    with open_sessions(env, ["llama.cpp"], **common, **{"llm.kv_bits": 8, "llm.flash_attn": False}) as off:
        assert off["llama.cpp"].backend._llm.context_params.flash_attn_type == enabled
        assert any("flash attention stays on (--no-flash-attn ignored)" in w for w in off["llama.cpp"].warnings())


def test_mlx_quantized_cache_with_rotated_keys(env):
    """--kv-bits on MLX: mlx-lm's QuantizedKVCache (group 32) holding keys rotated by rotate_keys.

    The rotation leaves attention exact (the same logits through a full-precision cache) and
    rounds better: closer logits through the 8-bit cache than the same cache without it.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    from mlxgen.backends import mlx as mlx_backend
    from mlxgen.backends.mlx import _RotatedRoPE, _rotation, rotate_keys, unrotate_keys

    r = np.asarray(_rotation(64))
    assert np.abs(r @ r.T - np.eye(64)).max() < 1e-6 and np.abs(np.abs(r) - 1 / 8).max() < 1e-7  # Hadamard
    r80 = np.asarray(_rotation(80))  # not a power of two: a random orthogonal matrix
    assert np.abs(r80 @ r80.T - np.eye(80)).max() < 1e-5
    common = {"llm.n_ctx": 128}
    with open_sessions(env, ["mlx"], **common) as full, open_sessions(env, ["mlx"], **common, **{"llm.kv_bits": 8}) as q8:
        f, b8 = full["mlx"].backend, q8["mlx"].backend
        assert all(isinstance(c, QuantizedKVCache) and (c.bits, c.group_size) == (8, 32) for c in b8.cache)
        assert b8.rotated == 30 and f.rotated == 0  # every layer's keys cached rotated, and only with kv_bits
        ids = full["mlx"].tokenizer.encode(REFERENCE)[:64]  # MLX on a CPU prefills ~10 tokens/s
        ref = np.asarray(f.verify(ids), dtype=np.float32)
        rotated = np.asarray(b8.verify(ids), dtype=np.float32)
        assert (ref.argmax(-1) == rotated.argmax(-1)).mean() >= 0.95
        kv16, kv8 = f.kv_cache(), b8.kv_cache()
        assert kv8["type"] == "8-bit (group 32, keys rotated)" and kv16["type"].startswith("full precision (")
        assert 0 < kv8["bytes"] < 0.65 * kv16["bytes"]  # 8 bits + a scale and bias per 32 values, against 16 or 32 bits
        b8.trim(20)
        assert b8.n_cached == 20
        b8.trim(0)  # a fresh cache: quantized again
        assert all(isinstance(c, QuantizedKVCache) for c in b8.cache) and b8.n_cached == 0

        b8._new_cache = lambda: [KVCache() for _ in b8.model.layers]  # the rotated model, a full-precision cache
        b8.trim(0)
        assert np.abs(np.asarray(b8.verify(ids[:32]), dtype=np.float32) - ref[:32]).max() < 1e-3
        del b8._new_cache
        unrotate_keys(b8.model)  # the same 8-bit cache, keys as the model computes them
        b8.trim(0)
        plain = np.asarray(b8.verify(ids), dtype=np.float32)
        assert kl(ref, rotated) < 0.8 * kl(ref, plain)  # 0.55 here (0.55-0.64 at 64-300 positions), 0.46 over 3,072

        # the check pass: in float32 whatever the model's dtype (in bfloat16 the rotation alone moves
        # this model's logits by 5-14%, as much as a broken one), weights put back as they were
        b8.model.set_dtype(mx.bfloat16)
        weights = dict(tree_flatten(b8.model.parameters()))
        r64 = _rotation(64)
        try:
            mlx_backend._ROTATIONS[64] = r64 * 1.05  # not orthogonal: scores change, so the logits do
            assert rotate_keys(b8.model, b8.vocab_size) == 0
            assert not any(isinstance(getattr(m, "rope", None), _RotatedRoPE) for _, m in b8.model.named_modules())
        finally:
            mlx_backend._ROTATIONS[64] = r64
        assert rotate_keys(b8.model, b8.vocab_size) == 30
        after = dict(tree_flatten(b8.model.parameters()))
        assert after.keys() == weights.keys() and all(after[k] is weights[k] for k in weights)


def test_mlx_kv_group_follows_head_dim():
    from mlxgen.backends.mlx import kv_group_size

    assert kv_group_size({"hidden_size": 576, "num_attention_heads": 9}, 8) == 32
    assert kv_group_size({"head_dim": 96}, 4) == 32
    assert kv_group_size({"head_dim": 80}, None) == 32  # no quantization: nothing to check


def kl(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean KL(ref || got) over rows of logits."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(got)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


def test_llamacpp_shifts_in_place(env):
    import llama_cpp

    with open_sessions(env, ["llama.cpp"], **{"llm.n_threads": 1, "llm.n_ctx": 256}) as opened:
        sess = opened["llama.cpp"]
        b = sess.backend
        ids = sess.tokenizer.encode(TEXT)
        a, dropped, c = ids[:10], ids[10:30], ids[30:50]
        b.trim(0)
        b.prefill(a + dropped + c)
        assert b.shift(len(a), len(dropped))
        assert b.n_cached == len(a + c)
        assert llama_cpp.llama_memory_seq_pos_max(b._llm._ctx.memory, 0) == len(a + c) - 1
        assert list(b._llm.input_ids[: b.n_cached]) == a + c
        shifted = np.array(b.step(ids[50]))
        b.trim(0)
        b.prefill(a + c)
        fresh = np.array(b.step(ids[50]))
        b.trim(0)
        b.prefill(a + dropped + c)
        kept_all = np.array(b.step(ids[50]))
        # the kept keys are re-rotated to their new positions; their values still saw the dropped
        # tokens, so the logits are close to a fresh prefill's, not equal (cosine 0.93 with flash
        # attention, 0.96 without), and much closer than not dropping anything (0.85 / 0.82)
        def cos(x, y):
            return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

        assert cos(shifted, fresh) > 0.9 and cos(shifted, fresh) > cos(kept_all, fresh) + 0.05
        assert not b.shift(0, 1000)  # more than it holds: refused, nothing changed


def mlxgen(*args: str, env: dict, input: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlxgen", *args], input=input, capture_output=True, timeout=300,
                          env={**os.environ, **env})


def test_run_shift_goes_past_the_context_and_says_so(env):
    args = ("run", "--backend", "llama.cpp", "-t", "1", "--ctx", "64", "-n", "120", "--temperature", "0", "--raw",
            "--context-overflow", "shift")
    proc = mlxgen(*args, "--json", "Once upon a time, in a land far away,", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["stats"]["context_shifts"] >= 1 and data["stats"]["dropped_tokens"] > 0
    assert data["stop_reason"] in ("length", "eos") and data["stop_reason"] != "context"
    plain = mlxgen(*args, "Once upon a time, in a land far away,", env=env)
    assert "context shift: the context was full" in plain.stderr.decode()
    stopped = mlxgen(*args[:-2], "--json", "Once upon a time, in a land far away,", env=env)  # run's default: stop
    data = json.loads(stopped.stdout)
    assert data["stop_reason"] == "context" and data["stats"]["context_shifts"] == 0


@pytest.mark.parametrize("args, key", [(("--kv-bits", "3"), "llm.kv_bits: 3 is not allowed"),
                                       (("--context-overflow", "bogus"), "inference.context_overflow: 'bogus'")])
def test_bad_values_are_one_line(env, args, key):
    proc = mlxgen("run", "hi", *args, env=env)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and key in err and "Traceback" not in err


def test_llamacpp_memory_check_counts_the_quantized_cache(monkeypatch):
    """100,000 positions: 2.1 GiB of f16 KV cache do not fit 1 GiB; in q4_0 (0.6 GiB) they do."""
    from mlxgen.backends import llamacpp
    from mlxgen.config import load_config
    from mlxgen.errors import ConfigError

    monkeypatch.setattr(llamacpp, "_total_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match="GiB of KV cache"):
        llamacpp.prepare(load_config(None, {"llm.n_ctx": 100_000}))
    assert llamacpp.prepare(load_config(None, {"llm.n_ctx": 100_000, "llm.kv_bits": 4})).exists()


def test_bench_reports_the_kv_cache(env):
    proc = mlxgen("bench", "--backend", "llama.cpp", "-t", "1", "--ctx", "256", "-p", "8", "-n", "4", "-r", "1",
                  "--warmup", "0", "--kv-bits", "8", "-o", "json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    rows = json.loads(proc.stdout)
    rows = rows if isinstance(rows, list) else rows["results"]
    assert rows and all(r["kv_type"] == "q8_0" and r["kv_bytes"] == 256 * 30 * 2 * 3 * 64 * 34 // 32 for r in rows)
    md = mlxgen("bench", "--backend", "llama.cpp", "-t", "1", "--ctx", "256", "-p", "8", "-n", "4", "-r", "1",
                "--warmup", "0", env=env)
    assert "KV cache f16 5.62 MiB" in md.stdout.decode()  # 256 x 30 x 2 x 3 x 64 x 2 bytes
