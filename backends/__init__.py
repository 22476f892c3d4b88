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


def _importable(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules[package] = None
        return False


def missing_packages(name: str) -> list[str]:
    return [pkg for pkg in REGISTRY[name].requires if not _importable(pkg)]


def is_installed(name: str) -> bool:
    return not missing_packages(name)


def require(name: str) -> BackendInfo:
    """The registry entry, or a one-line error naming the extra to install."""
    info = REGISTRY[name]
    missing = missing_packages(name)
    if missing:
        raise BackendUnavailable(
            f"backend {name!r} needs {', '.join(missing)}, which is not installed: "
            f"pip install \"mlxgen[{info.extra}]\""
        )
    return info


def load_module(name: str):
    """Import the backend's module (and so its heavy library)."""
    info = require(name)
    try:
        return importlib.import_module(f"mlxgen.backends.{info.module}")
    except (ImportError, OSError, RuntimeError) as e:  # installed but broken (a missing dependency, a bad build)
        raise BackendUnavailable(
            f"backend {name!r} is installed but fails to import ({type(e).__name__}: {e}); "
            f"reinstall it: pip install --force-reinstall \"mlxgen[{info.extra}]\""
        ) from None
