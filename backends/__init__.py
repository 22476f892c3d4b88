"""Backend registry. A backend module is imported only when that backend is chosen.

Each entry names the module, the import that proves its package is installed,
and the pip extra that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from mlxgen.errors import BackendUnavailable


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str  # inside mlxgen.backends
    requires: tuple[str, ...]  # importable top-level packages
    extra: str  # pip extra that installs them


REGISTRY: dict[str, BackendInfo] = {
    "mlx": BackendInfo("mlx", "mlx", ("mlx", "mlx_lm"), "mlx"),
    "llama.cpp": BackendInfo("llama.cpp", "llamacpp", ("llama_cpp",), "llamacpp"),
}


def is_installed(name: str) -> bool:
    return all(importlib.util.find_spec(pkg) is not None for pkg in REGISTRY[name].requires)


def require(name: str) -> BackendInfo:
    """The registry entry, or a one-line error naming the extra to install."""
    info = REGISTRY[name]
    missing = [pkg for pkg in info.requires if importlib.util.find_spec(pkg) is None]
    if missing:
        raise BackendUnavailable(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install \"mlxgen[{info.extra}]\""
        )
    return info


def load_module(name: str):
    """Import the backend's module (and so its heavy library)."""
    info = require(name)
    return importlib.import_module(f"mlxgen.backends.{info.module}")
