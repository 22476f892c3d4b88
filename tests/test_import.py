"""`import mlxgen` and `mlxgen --help` work, and stay light, without mlx or llama_cpp."""

from __future__ import annotations

import os
import subprocess
import sys

BLOCK = "import sys\nfor m in ('mlx', 'mlx_lm', 'llama_cpp'): sys.modules[m] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, env=dict(os.environ))


def test_import_and_help_without_backends():
    proc = run(
        "import mlxgen, mlxgen.config, mlxgen.loop, mlxgen.sampling, mlxgen.hardware\n"
        "from mlxgen.cli import main\n"
        "sys.argv = ['mlxgen', '--help']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: mlxgen" in proc.stdout
    for cmd in ("run", "doctor", "bench", "convert"):
        assert cmd in proc.stdout


def test_help_imports_nothing_heavy():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom mlxgen.cli import cli\nfrom click.testing import CliRunner\n"
         "r = CliRunner().invoke(cli, ['run', '--help'])\nassert r.exit_code == 0, r.output\n"
         "heavy = [m for m in ('mlx', 'mlx_lm', 'llama_cpp', 'numpy', 'tokenizers', 'huggingface_hub', 'jinja2', 'gguf', 'yaml') if m in sys.modules]\n"
         "print(heavy)"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_doctor_without_backends_says_what_is_missing():
    proc = run("from mlxgen.cli import main\nsys.argv = ['mlxgen', 'doctor']\nmain()")
    assert "Traceback" not in proc.stderr
    assert 'missing (pip install "mlxgen[llamacpp]")' in proc.stdout
    assert 'missing (pip install "mlxgen[mlx]")' in proc.stdout
    assert "choice" in proc.stdout


def test_run_without_backends_is_a_one_line_error():
    proc = run("from mlxgen.cli import main\nsys.argv = ['mlxgen', 'run', 'hi']\nmain()")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert 'pip install "mlxgen[llamacpp]"' in proc.stderr
