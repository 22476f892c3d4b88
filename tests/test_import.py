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
    """`run --help` reads the default preset (PyYAML, light) to show the defaults a run uses; nothing heavier."""
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys\nfrom mlxgen.cli import cli\nfrom click.testing import CliRunner\n"
         "r = CliRunner().invoke(cli, ['run', '--help'])\nassert r.exit_code == 0, r.output\n"
         "heavy = [m for m in ('mlx', 'mlx_lm', 'llama_cpp', 'numpy', 'tokenizers', 'huggingface_hub', 'jinja2', 'gguf') if m in sys.modules]\n"
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


def test_broken_backend_install_is_a_one_line_error():
    """A backend package that is there but fails to import (say a missing dependency)."""
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, types\n"
         "broken = types.ModuleType('llama_cpp'); broken.__path__ = []\n"
         "class Finder:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name == 'llama_cpp':\n"
         "            import importlib.machinery\n"
         "            return importlib.machinery.ModuleSpec('llama_cpp', self)\n"
         "    def create_module(self, spec):\n"
         "        raise ModuleNotFoundError(\"No module named 'diskcache'\")\n"
         "    def exec_module(self, module):\n"
         "        pass\n"
         "sys.meta_path.insert(0, Finder())\n"
         "from mlxgen.cli import main\nsys.argv = ['mlxgen', 'run', 'hi', '--backend', 'llama.cpp']\nmain()"],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "installed but fails to import" in lines[0] and "diskcache" in lines[0]
