"""MLX model folders, built once and cached: HF -> MLX conversion and GGUF -> MLX import.

Cache: ``$MLXGEN_CACHE`` (or ``~/.cache/mlxgen``) ``/mlx/v1/<key>``, one mlx-lm model
folder per key:

    hf-<owner>--<name>-<commit12>-q4g64       a Hub repo at a resolved commit, quantized
    local-<folder>-<digest>-q4g64             a local HF folder (path + file sizes/mtimes)
    gguf-<file stem>-<digest>                 a GGUF (its content fingerprint + import recipe)

An entry is built in a temporary folder beside its final place and renamed into place
(``mlxgen.cache.atomic_dir``); ``mlxgen-manifest.json`` is written last and lists every
file with its size. An entry whose manifest, config.json or safetensors do not check
out (missing, truncated, garbled header) is rebuilt, never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import sys
import time
from pathlib import Path
from typing import Callable

from mlxgen.cache import atomic_dir, fingerprint
from mlxgen.cache import cache_root as mlxgen_cache_root
from mlxgen.errors import ModelError, first_line

CACHE_VERSION = "v1"
MANIFEST = "mlxgen-manifest.json"
GGUF_RECIPE = 3  # bump when the GGUF import writes different weights or config for the same file (2: mlxgen_import, 3: exact K-quants, per-type report)
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "tiktoken.model", "*.txt", "*.jinja"]


def cache_root() -> Path:
    """Where converted MLX models live (versioned: a format change gets a new folder)."""
    return mlxgen_cache_root() / "mlx" / CACHE_VERSION


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------- public


def convert(source: str, out: Path | None = None, bits: int = 4, group_size: int = 64, revision: str = "main") -> Path:
    """`mlxgen convert`: a GGUF file, a local HF folder or a Hub repo id -> an MLX model folder."""
    path = Path(source).expanduser()
    if path.is_file() or source.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"{source}: GGUF file not found")
        return import_gguf_cached(path, bits, group_size, out)
    if path.is_dir():
        return convert_hf_folder(path, bits, group_size, out)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise ModelError(f"{source}: not a GGUF file, a local folder or a Hugging Face repo id (owner/name)")
    return from_hub(source, revision, bits, group_size, out, convert_quantized=False)


def from_hub(
    repo: str, revision: str = "main", bits: int = 4, group_size: int = 64, out: Path | None = None,
    convert_quantized: bool = True,
) -> Path:
    """A Hub repo ready for mlx-lm: an MLX-quantized repo as is, anything else converted (cached)."""
    from mlxgen.sources import hf_snapshot

    head = hf_snapshot(repo, revision, allow_patterns=["config.json"])  # resolves the commit
    commit = head.name
    config = _read_config(head, f"{repo} @ {revision}")
    if "quantization" in config:
        if not convert_quantized:
            raise ModelError(f"{repo}: already an MLX-quantized model; use it as is (llm.mlx.repo)")
        snap = hf_snapshot(repo, commit, allow_patterns=HUB_PATTERNS)
        _need_safetensors(snap, f"{repo} @ {revision}")
        return snap
    key = f"hf-{repo.replace('/', '--')}-{commit[:12]}-q{bits}g{group_size}"

    def build(tmp: Path) -> None:
        snap = hf_snapshot(repo, commit, allow_patterns=HUB_PATTERNS)
        _need_safetensors(snap, f"{repo} @ {revision}")
        _mlx_lm_convert(snap, tmp, bits, group_size, f"{repo} @ {commit[:12]}")

    return _cached(out or cache_root() / key, build, {"source": repo, "revision": revision, "commit": commit,
                                                      "bits": bits, "group_size": group_size})


def convert_hf_folder(folder: Path, bits: int = 4, group_size: int = 64, out: Path | None = None) -> Path:
    """A local Hugging Face folder (config.json + safetensors) converted to MLX (cached)."""
    folder = folder.resolve()
    config = _read_config(folder, str(folder))
    if "quantization" in config:
        raise ModelError(f"{folder}: already an MLX-quantized model; use it as is (llm.mlx.path)")
    files = _need_safetensors(folder, str(folder))
    ident = [str(folder)] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files + [folder / "config.json"]]
    digest = hashlib.sha256("|".join(ident).encode()).hexdigest()[:16]
    key = f"local-{_slug(folder.name)}-{digest}-q{bits}g{group_size}"
    return _cached(
        out or cache_root() / key,
        lambda tmp: _mlx_lm_convert(folder, tmp, bits, group_size, str(folder)),
        {"source": str(folder), "bits": bits, "group_size": group_size},
    )


def import_gguf_cached(gguf: Path, bits: int = 4, group_size: int = 64, out: Path | None = None) -> Path:
    """The MLX import of a GGUF file (cached, keyed by the file's identity)."""
    from mlxgen.backends.mlx_gguf import import_gguf

    gguf = gguf.resolve()
    content = fingerprint(gguf)  # by content: the same file in another venv or folder is the same entry
    ident = f"{content}|recipe{GGUF_RECIPE}|q{bits}g{group_size}"
    key = f"gguf-{_slug(gguf.stem)}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"
    return _cached(
        out or cache_root() / key,
        lambda tmp: import_gguf(gguf, tmp, bits, group_size, say),
        {"content": content, "size": gguf.stat().st_size, "recipe": GGUF_RECIPE, "bits": bits,
         "group_size": group_size},
    )


def check_folder(folder: Path, what: str) -> Path:
    """A user-given MLX folder (llm.mlx.path): config.json and safetensors must be there."""
    if not folder.is_dir():
        raise ModelError(f"{what}: {folder} is not a folder")
    _read_config(folder, str(folder))
    _need_safetensors(folder, str(folder))
    return folder


def entry_problem(folder: Path, expect: dict | None = None) -> str | None:
    """Why a cache entry cannot be trusted (or is not the one ``expect`` describes), or None."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no readable manifest (an interrupted or foreign build)"
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            return f"built from {key} {manifest.get(key)!r}, not {value!r}"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "model_type" not in config:
            return "config.json has no model_type"
    except (OSError, ValueError):
        return "config.json is missing or not JSON"
    if not any(name.endswith(".safetensors") for name in files):
        return "no safetensors listed"
    for name, size in files.items():
        f = folder / name
        try:
            actual = f.stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, expected {size}"
        if name.endswith(".safetensors") and (problem := _safetensors_problem(f)):
            return f"{name}: {problem}"
    return None


# ----------------------------------------------------------------------- cache


def _cached(final: Path, build: Callable[[Path], None], describe: dict) -> Path:
    in_cache = final.parent == cache_root()
    problem = entry_problem(final, describe) if final.exists() else "missing"
    if problem is None:
        return final
    if not in_cache and final.exists() and any(final.iterdir()) and (
        not (final / MANIFEST).exists() or problem.startswith("built from")
    ):
        raise ModelError(f"{final}: exists and holds something else; choose a new --out folder")
    if final.exists():
        say(f"mlxgen: cached MLX model {final} cannot be trusted ({problem}): rebuilding it")
    t0 = time.perf_counter()
    with atomic_dir(final) as tmp:
        build(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"mlxgen_cache": CACHE_VERSION, "built": time.strftime("%Y-%m-%dT%H:%M:%S"), **describe, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    size = sum(files.values())
    say(f"mlxgen: MLX model ready in {time.perf_counter() - t0:.1f}s: {final} ({size / 2**20:.0f} MiB)")
    return final


def _safetensors_problem(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return "garbled header"
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return "garbled header"
    if not isinstance(header, dict):
        return "garbled header"
    try:
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return "garbled header"
    if 8 + n + end != path.stat().st_size:
        return "truncated"
    return None


# ----------------------------------------------------------------------- HF -> MLX


def _mlx_lm_convert(src: Path, dst: Path, bits: int, group_size: int, what: str) -> None:
    """mlx-lm's own conversion (load lazily, quantize, save), its chatter on stderr."""
    from mlx_lm.convert import convert as mlx_lm_convert

    say(f"mlxgen: converting {what} to MLX {bits}-bit (group {group_size})")
    work = dst / "model"
    try:
        with contextlib.redirect_stdout(sys.stderr):
            mlx_lm_convert(str(src), str(work), quantize=True, q_group_size=group_size, q_bits=bits)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise ModelError(f"{what}: mlx-lm cannot convert this model ({first_line(e)})") from None
    for f in work.iterdir():
        os.replace(f, dst / f.name)
    work.rmdir()


def _read_config(folder: Path, what: str) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except OSError:
        raise ModelError(f"{what}: no config.json (not a Hugging Face / MLX model folder)") from None
    except ValueError as e:
        raise ModelError(f"{what}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{what}: config.json has no model_type")
    return config


def _need_safetensors(folder: Path, what: str) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        others = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".gguf", ".h5"))
        found = f" (found {', '.join(others[:3])})" if others else ""
        raise ModelError(f"{what}: no .safetensors weights{found}; MLX needs safetensors")
    return files


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:48].strip("-.") or "model"

