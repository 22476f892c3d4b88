"""The models on this machine: what `mlxgen models` lists and `/v1/models` shows after the loaded one.

Each backend's registry entry knows its own caches (``BackendInfo.cached_models``):
llama.cpp the GGUF files in the Hugging Face cache and the embedded model's package,
MLX its conversions and imports under the mlxgen cache. This module only joins,
sorts and removes. Light: it imports no backend library.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mlxgen.errors import MlxgenError


@dataclass(frozen=True)
class CachedModel:
    id: str  # what `--model` or a request names it by
    kind: str  # "gguf (hf cache)", "mlx", "embedded"
    size: int  # bytes
    path: Path
    created: int = 0  # unix time (the file's mtime)
    removable: bool = True  # False: installed with a package (pip uninstall it instead)


def scan() -> list[CachedModel]:
    from mlxgen.backends import REGISTRY

    seen: dict[Path, CachedModel] = {}
    for info in REGISTRY.values():
        for m in info.cached_models() if info.cached_models else []:
            seen.setdefault(m.path, m)
    return sorted(seen.values(), key=lambda m: (m.kind, m.id))


def list_ids() -> list[dict]:
    """For /v1/models (a scan failing lists nothing more, it never fails the request)."""
    try:
        return [{"id": m.id, "created": m.created, "owned_by": m.kind} for m in scan()]
    except Exception:
        return []


def remove(name: str) -> CachedModel:
    """Delete one cached model by id or path."""
    matches = [m for m in scan() if name in (m.id, str(m.path))]
    if not matches:
        raise MlxgenError(f"models rm {name}: no such cached model (mlxgen models lists them)")
    m = matches[0]
    if not m.removable:
        raise MlxgenError(f"models rm {name}: installed with a Python package; pip uninstall it instead")
    if m.path.is_dir():
        shutil.rmtree(m.path)
    else:
        blob = m.path.resolve()
        m.path.unlink()
        if blob != m.path and blob.exists():
            blob.unlink()
    return m


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def from_file(path: Path, id: str, kind: str, removable: bool = True) -> CachedModel:
    st = path.stat()
    return CachedModel(id, kind, st.st_size, path, int(st.st_mtime), removable)
