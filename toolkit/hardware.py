"""Hardware detection: which backend runs here, and why.

``detect`` is a pure function of ``Facts``, so tests can hand it a fake Mac or a
fake CUDA box; ``gather_facts`` reads the real machine.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

from mlxgen.backends import REGISTRY, is_installed, require


@dataclass(frozen=True)
class Facts:
    system: str  # platform.system(): "Darwin", "Linux", "Windows"
    machine: str  # platform.machine(): "arm64", "x86_64", "aarch64"
    mlx_installed: bool
    llamacpp_installed: bool
    llamacpp_gpu_offload: bool  # the installed llama.cpp build can offload layers (CUDA, Metal, ...)
    cpu_count: int

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine == "arm64"


@dataclass(frozen=True)
class Choice:
    backend: str  # "mlx" or "llama.cpp"
    reason: str
    n_gpu_layers: int = 0  # llama.cpp: -1 = all layers on the GPU
    n_threads: int = 1


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def gather_facts(probe_gpu: bool = True) -> Facts:
    llama = is_installed("llama.cpp")
    return Facts(
        system=platform.system(),
        machine=platform.machine(),
        mlx_installed=is_installed("mlx"),
        llamacpp_installed=llama,
        llamacpp_gpu_offload=llama and probe_gpu and _llamacpp_gpu_offload(),
        cpu_count=available_cpus(),
    )


def _llamacpp_gpu_offload() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # a broken build is reported by doctor as "no offload"
        return False


def detect(facts: Facts, requested: str = "auto") -> Choice:
    """Pick the backend. ``requested`` ("mlx" / "llama.cpp") overrides detection."""
    threads = facts.cpu_count
    if requested != "auto":
        require(requested)  # one-line error naming the extra if missing
        if requested == "mlx":
            return Choice("mlx", "requested with --backend/config", n_threads=threads)
        layers = -1 if facts.llamacpp_gpu_offload else 0
        where = "all layers on the GPU" if layers else f"CPU, {threads} threads"
        return Choice("llama.cpp", f"requested with --backend/config ({where})", layers, threads)
    if facts.apple_silicon and facts.mlx_installed:
        return Choice("mlx", "Apple Silicon with mlx installed", n_threads=threads)
    if facts.llamacpp_installed and facts.llamacpp_gpu_offload:
        return Choice("llama.cpp", "llama.cpp build supports GPU offload: all layers on the GPU", -1, threads)
    if facts.llamacpp_installed:
        why = "no Apple Silicon" if not facts.apple_silicon else "mlx is not installed"
        return Choice("llama.cpp", f"{why}, no GPU offload in the llama.cpp build: CPU, {threads} threads", 0, threads)
    if facts.mlx_installed:
        return Choice("mlx", "llama.cpp is not installed; mlx is (no Metal here: it runs on the CPU)", n_threads=threads)
    require("llama.cpp")  # raises, naming the extra
    raise AssertionError("unreachable")


def describe(facts: Facts) -> list[tuple[str, str]]:
    """Rows for `mlxgen doctor` (cheap facts only; backends add their own)."""
    return [
        ("platform", f"{facts.system} {facts.machine}"),
        ("chip", chip_name()),
        ("python", sys.version.split()[0]),
        ("cpus", str(facts.cpu_count)),
    ] + [(f"backend {name}", "installed" if is_installed(name) else f"missing (pip install \"mlxgen[{info.extra}]\")")
         for name, info in REGISTRY.items()]


def chip_name() -> str:
    if platform.system() == "Darwin":
        import subprocess

        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=2
            )
            return out.stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            return platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
