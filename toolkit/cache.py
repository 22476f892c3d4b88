"""mlxgen's own cache (converted models, GGUF vocabularies), written atomically.

Root: ``$MLXGEN_CACHE`` or ``~/.cache/mlxgen``. An entry is built in a temporary
folder beside its final place and renamed into place only when complete, so an
interrupted build leaves nothing that a later run would trust.

Temporary names carry the writer's pid and host (``.<name>.tmp-<pid>-<host>-<random>``):
what a killed writer left behind is removed by the next write of the same name, while
a build that is still running in another process is left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

STALE_TMP_S = 6 * 3600  # a temp sibling this old is removed whoever wrote it


def cache_root() -> Path:
    root = os.environ.get("MLXGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mlxgen")
    return Path(root)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a temp file beside it, fsynced, renamed.

    A process killed mid-write leaves the old file (or none) and at most a
    ``.tmp-*`` sibling (removed by the next write of ``path``), never a truncated
    ``path``. The file gets the mode a plain ``open`` would give it. Raises OSError.
    """
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (saved prompt caches)."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    sweep_tmp(Path(folder), name)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=_tmp_prefix(name))
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes it 0600; the user's file gets the usual mode
            os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces ``final``, on any error it is removed.

    Two processes may build the same entry at once. If ``final`` did not exist when
    this build started but does now, another build finished first: its entry is kept
    and this one dropped. An entry that existed (a damaged one being rebuilt) is renamed
    aside before this one is renamed in, so ``final`` is never half old, half new.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep_tmp(final.parent, final.name)
    existed = final.exists()
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name)))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the entry gets the mode mkdir would give
        if final.exists() and not existed:
            return  # another process finished the same entry first
        if final.exists():
            old = Path(tempfile.mkdtemp(dir=final.parent, prefix=_tmp_prefix(final.name)))
            os.replace(final, old)  # an empty folder is replaced atomically
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():
                raise  # a concurrent build that landed in between keeps its entry
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _tmp_prefix(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{_host()}-"


def _mode_for(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777  # replacing a file keeps its mode
    except OSError:
        return 0o666 & ~_umask()


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would end it there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def sweep_tmp(folder: Path, name: str) -> list[Path]:
    """Remove the temp siblings of ``name`` that a dead writer left (or any older than 6 hours)."""
    removed = []
    pattern = re.compile(rf"\.{re.escape(name)}\.tmp-(\d+)-([0-9a-f]{{8}})-")
    with contextlib.suppress(OSError):
        for tmp in folder.glob(f".{_glob_escape(name)}.tmp-*"):
            m = pattern.match(tmp.name)
            with contextlib.suppress(OSError):
                if m and m.group(2) == _host():  # ours: removable once its writer is gone
                    stale = int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))
                else:  # another host's (a shared cache) or an older naming: only when old
                    stale = time.time() - tmp.lstat().st_mtime > STALE_TMP_S
                if stale:
                    if tmp.is_dir() and not tmp.is_symlink():
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        tmp.unlink()
                    removed.append(tmp)
    return removed


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?[])", r"[\1]", name)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


FINGERPRINT_HEAD = 4 << 20  # a GGUF's header and metadata, and the start of its tensors
FINGERPRINT_SAMPLES = 16  # then this many 64 KiB pieces spread over the rest, and the end


def fingerprint(path: Path) -> str:
    """A key for a model file by its content, not its path: the size, the first 4 MiB and
    17 pieces of 64 KiB spread over the rest (a few MB read, milliseconds), hashed.

    The same file in two virtualenvs or two folders is one cache entry; an edited or
    replaced file is another.
    """
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}|".encode())
    with open(path, "rb") as f:
        h.update(f.read(FINGERPRINT_HEAD))
        if size > FINGERPRINT_HEAD:
            piece = 64 << 10
            span = size - FINGERPRINT_HEAD - piece
            for i in range(FINGERPRINT_SAMPLES + 1):
                f.seek(FINGERPRINT_HEAD + max(0, span) * i // FINGERPRINT_SAMPLES)
                h.update(f.read(piece))
    return h.hexdigest()[:20]
