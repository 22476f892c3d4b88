"""`mlxgen models` lists the local caches; `models rm` deletes an entry, never a package's model."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mlxgen.cli import cli


def test_models_lists_and_removes_an_mlx_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    from mlxgen.backends.mlx_convert import MANIFEST, cache_root

    entry = cache_root() / "gguf-tiny-0123"
    entry.mkdir(parents=True)
    (entry / MANIFEST).write_text("{}")
    (entry / "model.safetensors").write_bytes(b"x" * 4096)
    (cache_root() / "half-built").mkdir()  # no manifest: not a model
    out = CliRunner().invoke(cli, ["models", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["id"]: r for r in json.loads(out.stdout)}
    assert rows["gguf-tiny-0123"]["kind"] == "mlx" and rows["gguf-tiny-0123"]["size"] >= 4096
    assert "half-built" not in rows
    embedded = [r for r in rows.values() if r["kind"] == "embedded"]
    assert all(not r["removable"] for r in embedded)
    out = CliRunner().invoke(cli, ["models", "rm", "gguf-tiny-0123"])
    assert out.exit_code == 0 and not entry.exists()
    out = CliRunner().invoke(cli, ["models", "rm", "gguf-tiny-0123"])
    assert out.exit_code == 1 and "no such cached model" in out.stderr
