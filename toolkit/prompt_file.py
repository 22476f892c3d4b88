"""Saved prompt caches: a prompt's KV cache in a file, loaded instead of prefilled.

    mlxgen cache-prompt -f doc.txt -o doc.mlxcache       prefill once, save
    mlxgen run --prompt-cache doc.mlxcache -f doc+q.txt  load; prefill only what follows
    mlxgen chat --prompt-cache-dir DIR                   automatic, by prefix

A file is one header line and the backend's own bytes (``base.State.save_state``)::

    MLXGEN-PROMPT-CACHE 1\\n
    {"backend": ..., "library": ..., "model": ..., "kv": ..., "ids": [...], "bytes": n, "sha256": ...}\\n
    <n bytes of state>

The header records what the state is only valid for: the backend, its library and
version (llama.cpp's and mlx-lm's formats change between versions), the model (a hash
of the weights' content, ``mlxgen.cache.fingerprint``), the KV settings, and the token
ids the state holds. A file that differs in any of them, or is truncated or altered
(the sha256 of the state), is refused with one warning line and the prompt is prefilled
as usual (:class:`Refused`): a saved cache never gives different output. Loading keeps
the longest common prefix of the file's ids and the prompt (``PromptCache``), so a
file made from a document serves every prompt that starts with it.

Writes are atomic (``mlxgen.cache.atomic_write_bytes``): a killed save leaves the old
file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mlxgen.backends.base import State
from mlxgen.errors import MlxgenError

MAGIC = b"MLXGEN-PROMPT-CACHE"
FORMAT = 1  # this file layout; a file with another number is refused
SUFFIX = ".mlxcache"
MAX_HEADER = 64 << 20  # a header line longer than this is not ours
MIN_AUTO_PREFIX = 16  # --prompt-cache-dir saves no prefix shorter than this
MAX_AUTO_FILES = 32  # --prompt-cache-dir keeps the most recently used this many files per model


class PromptCacheError(MlxgenError):
    """A prompt cache cannot be made or read at all (not a stale file: that is a warning)."""


class Refused(Exception):
    """This file cannot serve this session (another model, version, setting; truncated): prefill instead."""


@dataclass(frozen=True)
class Header:
    backend: str
    library: str
    model: str
    kv: dict
    ids: list[int]
    nbytes: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps({"backend": self.backend, "library": self.library, "model": self.model, "kv": self.kv,
                           "ids": self.ids, "bytes": self.nbytes, "sha256": self.sha256}, separators=(",", ":"))


def identity(sess) -> dict:
    """What a state is valid for: backend, library version, model content, KV settings."""
    if not isinstance(sess.backend, State):
        raise PromptCacheError(f"the {sess.backend.name} backend cannot save or load its cache (saved prompt caches)")
    return {"backend": sess.backend.name, "library": sess.backend.state_version, "model": sess.model_key,
            "kv": kv_settings(sess.cfg)}


def kv_settings(cfg) -> dict:
    """The KV-cache settings a state depends on: ``llm.kv_bits`` (16 = not quantized). What else a
    backend's numbers depend on (llama.cpp: flash attention) is in its ``state_version``."""
    return {"kv_bits": int(cfg.llm.kv_quant or 16)}


# ------------------------------------------------------------------ save


def save(path: str | os.PathLike, sess) -> tuple[int, float]:
    """Write the session's cache (``sess.cache.ids``) to ``path`` atomically: (bytes written, seconds)."""
    from mlxgen.cache import atomic_write_bytes

    who = identity(sess)
    t0 = time.perf_counter()
    ids = sess.cache.ids
    state = sess.backend.save_state()
    header = Header(who["backend"], who["library"], who["model"], who["kv"], list(ids), len(state),
                    hashlib.sha256(state).hexdigest())
    data = MAGIC + f" {FORMAT}\n".encode() + header.to_json().encode() + b"\n" + state
    path = Path(path)
    if path.is_dir():
        raise PromptCacheError(f"{path}: cannot write the prompt cache: is a folder")
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        raise PromptCacheError(f"{path}: cannot write the prompt cache: {e.strerror or e}") from None
    return len(data), time.perf_counter() - t0


# ------------------------------------------------------------------ load


def read_header(f) -> Header:
    """The header of an open file, checked for shape (not yet against a session)."""
    first = f.readline(64)
    parts = first.rstrip(b"\n").split(b" ")
    if len(parts) != 2 or parts[0] != MAGIC:
        raise Refused("not an mlxgen prompt cache")
    if parts[1] != str(FORMAT).encode():
        raise Refused(f"prompt-cache format {parts[1].decode(errors='replace')}, this mlxgen reads {FORMAT}")
    line = f.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        raise Refused("truncated (the header is incomplete)")
    try:
        h = json.loads(line)
        return Header(str(h["backend"]), str(h["library"]), str(h["model"]), dict(h["kv"]),
                      [int(i) for i in h["ids"]], int(h["bytes"]), str(h["sha256"]))
    except (ValueError, KeyError, TypeError) as e:
        raise Refused(f"a damaged header ({type(e).__name__})") from None


def check(header: Header, who: dict) -> None:
    """Refuse a file made for another backend, library version, model or KV setting."""
    if header.backend != who["backend"]:
        raise Refused(f"made by the {header.backend} backend, not {who['backend']}")
    if header.library != who["library"]:
        raise Refused(f"made with {header.library}, not {who['library']}")
    if header.model != who["model"]:
        raise Refused("made for another model")
    if header.kv != who["kv"]:
        raise Refused(f"made with KV settings {header.kv}, not {who['kv']}")


def load(path: str | os.PathLike, sess) -> tuple[int, float, int]:
    """Load a saved cache into the session: (positions restored, seconds, file bytes).

    Raises :class:`Refused` (the caller warns and prefills) for a file that cannot serve
    this session; the cache is then empty. A missing or unreadable file is a
    :class:`PromptCacheError`.
    """
    who = identity(sess)
    try:
        return _load(Path(path), sess, who)
    except Refused:
        sess.cache.reset()
        raise


def missing(path: str | os.PathLike) -> PromptCacheError:
    return PromptCacheError(f"{path}: no such prompt cache (make one with `mlxgen cache-prompt`)")


def check_exists(path: str | None) -> None:
    """``--prompt-cache FILE`` names a file: checked before the model loads (loading can take minutes)."""
    if path is not None and not os.path.exists(path):
        raise missing(path)


def _load(path: Path, sess, who: dict) -> tuple[int, float, int]:
    t0 = time.perf_counter()
    try:
        with open(path, "rb") as f:
            header = read_header(f)
            check(header, who)
            state = f.read(header.nbytes + 1)
    except FileNotFoundError:
        raise missing(path) from None
    except OSError as e:
        raise PromptCacheError(f"{path}: cannot read the prompt cache: {e.strerror or e}") from None
    if len(state) != header.nbytes:
        raise Refused(f"truncated ({len(state)} of {header.nbytes} state bytes)" if len(state) < header.nbytes
                      else "bytes after the end of the state")
    if hashlib.sha256(state).hexdigest() != header.sha256:
        raise Refused("damaged (the state's sha256 does not match)")
    if not 0 < len(header.ids) < sess.backend.n_ctx:
        raise Refused(f"holds {len(header.ids)} tokens; the context holds {sess.backend.n_ctx}")
    try:
        n = sess.backend.load_state(state, header.ids)
    except ValueError as e:
        raise Refused(str(e)) from None
    sess.cache.record(header.ids[:n])
    return n, time.perf_counter() - t0, path.stat().st_size


def warning(path, why: Refused | str) -> str:
    return f"{path}: prompt cache not used: {why}; prefilling the prompt"


# ------------------------------------------------------------------ automatic, by prefix


def auto_name(who: dict, ids: Sequence[int]) -> str:
    """A file name for a prefix: the identity's and the ids' hashes (so lookups scan only this model's files)."""
    key = hashlib.sha256(json.dumps(who, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key}-{hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]}{SUFFIX}"


def best_file(folder: Path, who: dict, ids: Sequence[int]) -> tuple[Path | None, int]:
    """The file in ``folder`` (this identity's) whose ids share the longest prefix with ``ids``."""
    from mlxgen.prompt_cache import common_prefix

    best, best_n = None, 0
    prefix = auto_name(who, [])[:16]
    for p in sorted(folder.glob(f"{prefix}-*{SUFFIX}")):
        try:
            with open(p, "rb") as f:
                header = read_header(f)
            check(header, who)
        except (OSError, Refused):
            continue
        n = common_prefix(header.ids, ids)
        if n > best_n:
            best, best_n = p, n
    return best, best_n


def fixed_prefix(sess, ids: Sequence[int]) -> int:
    """How many of a prompt's first tokens the chat template fixes (system prompt and template
    header): the common prefix of two prompts that differ only in the user's message.
    Without a template (--raw): all but the last token."""
    from mlxgen.prompt_cache import common_prefix

    if sess.template.template is None:
        return max(len(ids) - 1, 0)
    keep = sess.keep_prefix()  # what a context shift keeps too
    return min(keep, common_prefix(sess.prompt("a")[1][:keep], ids))


def auto(sess, folder: str | os.PathLike, ids: Sequence[int]) -> list[str]:
    """``--prompt-cache-dir``: load the best saved prefix of ``ids``; save the template's fixed
    prefix if no file held it yet. Returns warning lines (a refused file, an unwritable folder)."""
    folder, out = Path(folder), []
    who = identity(sess)
    best, n = best_file(folder, who, ids) if folder.is_dir() else (None, 0)
    if best is not None:
        try:
            load(best, sess)
            os.utime(best)  # most recently used: the last to be evicted
        except (Refused, PromptCacheError) as e:  # damaged: replaced below, so it warns once
            out.append(warning(best, e))
            best.unlink(missing_ok=True)
            n = 0
    keep = fixed_prefix(sess, ids)
    if keep >= MIN_AUTO_PREFIX and n < keep:
        from mlxgen.loop import prefill

        prefill(sess.backend, ids[:keep], sess.cache.prepare(ids[:keep]))  # (the logits are not needed)
        sess.cache.record(ids[:keep])
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save(folder / auto_name(who, ids[:keep]), sess)
            evict(folder, who)
        except (OSError, PromptCacheError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e)
            out.append(f"--prompt-cache-dir {folder}: cannot save the prompt's prefix: {why}")
    return out


def evict(folder: Path, who: dict, keep: int = MAX_AUTO_FILES) -> None:
    prefix = auto_name(who, [])[:16]
    files = sorted(folder.glob(f"{prefix}-*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in files[keep:]:
        p.unlink(missing_ok=True)
