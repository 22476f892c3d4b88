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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temp file beside it, fsynced, renamed.

    A process killed mid-write leaves the old file (or none) and at most a
    ``.tmp-*`` sibling, never a truncated ``path``. Raises OSError.
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
