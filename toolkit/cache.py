"""mlxgen's own cache (converted models, GGUF vocabularies), written atomically.

Root: ``$MLXGEN_CACHE`` or ``~/.cache/mlxgen``. An entry is built in a temporary
folder beside its final place and renamed into place only when complete, so an
interrupted build leaves nothing that a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    root = os.environ.get("MLXGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mlxgen")
    return Path(root)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces ``final``, on any error it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
