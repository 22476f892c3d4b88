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


def test_mlx_quantized_cache(env):
    from mlx_lm.models.cache import QuantizedKVCache

    common = {"llm.n_ctx": 256}
    with open_sessions(env, ["mlx"], **common) as full, open_sessions(env, ["mlx"], **common, **{"llm.kv_bits": 8}) as q8:
        f, b8 = full["mlx"].backend, q8["mlx"].backend
        assert all(isinstance(c, QuantizedKVCache) and (c.bits, c.group_size) == (8, 64) for c in b8.cache)
        ids = full["mlx"].tokenizer.encode(TEXT)[:40]
        agree = (top1(f, ids) == top1(b8, ids)).mean()
        assert agree >= 0.9
        kv16, kv8 = f.kv_cache(), b8.kv_cache()
        assert kv8["type"] == "8-bit (group 64)" and kv16["type"].startswith("full precision (")
        assert 0 < kv8["bytes"] < 0.6 * kv16["bytes"]  # 8 bits + a scale and bias per 64 values, against 16 or 32 bits
        b8.trim(20)
        assert b8.n_cached == 20
        b8.trim(0)  # a fresh cache: quantized again
        assert all(isinstance(c, QuantizedKVCache) for c in b8.cache) and b8.n_cached == 0


def test_mlx_kv_group_follows_head_dim():
    from mlxgen.backends.mlx import kv_group_size

    assert kv_group_size({"hidden_size": 576, "num_attention_heads": 9}, 8) == 64
    assert kv_group_size({"head_dim": 96}, 4) == 32
    assert kv_group_size({"head_dim": 80}, None) == 64  # no quantization: nothing to check


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
