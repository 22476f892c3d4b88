"""Hardware detection: which backend runs here, and why.

``detect`` is a pure function of ``Facts``, so tests can hand it a fake Mac or a
fake CUDA box; ``gather_facts`` reads the real machine.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass

from mlxgen import backends


@dataclass(frozen=True)
class Facts:
    system: str  # platform.system(): "Darwin", "Linux", "Windows"
    machine: str  # platform.machine(): "arm64", "x86_64", "aarch64"
    installed: frozenset[str]  # registered backends whose packages are installed
    gpu_offload: frozenset[str]  # installed backends whose build reaches a GPU (llama.cpp: CUDA, Metal, ...)
    cpu_count: int

    @property
    def apple_silicon(self) -> bool:
        return self.system == "Darwin" and self.machine == "arm64"

    def has(self, backend: str) -> bool:
        return backend in self.installed

    def gpu(self, backend: str) -> bool:
        return backend in self.gpu_offload


@dataclass(frozen=True)
class Choice:
    backend: str  # a registered backend's name
    reason: str
    gpu: bool = False  # run on the GPU (llama.cpp: all layers offloaded unless llm.n_gpu_layers says otherwise)
    n_threads: int = 1
    warning: str = ""  # a requested backend that fits this machine worse than another installed one


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def idle_cpus(cpus: int, seconds: float = 0.05) -> float | None:
    """How many of ``cpus`` other processes leave idle right now: /proc/stat sampled over
    ``seconds`` (this process sleeps meanwhile). None where there is no /proc/stat."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        return sum(fields[:8]), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return cpus * (idle1 - idle0) / (total1 - total0)


def cpu_threads(cpus: int) -> int:
    """Threads for a CPU run: one per core that is idle now, at least one.

    llama.cpp's threads spin-wait for each other; with one more thread than free cores
    a decode step waits on a descheduled thread (measured here: 2 threads on 2 cores
    with one busy process ran 36.5 tok/s, 1 thread 86). On a quiet machine this is
    every core.
    """
    idle = idle_cpus(cpus)
    return cpus if idle is None else max(1, min(cpus, int(idle + 0.5)))


def gather_facts(probe_gpu: bool = True) -> Facts:
    installed = frozenset(backends.installed())
    gpu = {name for name in installed if probe_gpu and (probe := backends.REGISTRY[name].gpu_probe) and probe()}
    return Facts(platform.system(), platform.machine(), installed, frozenset(gpu), available_cpus())


def detect(facts: Facts, requested: str = "auto") -> Choice:
    """Pick the backend: the installed one that fits this machine best. ``requested`` overrides it."""
    threads = facts.cpu_count
    fits = [(backends.REGISTRY[name].fit(facts), name) for name in backends.REGISTRY if facts.has(name)]
    if requested != "auto":
        fit = backends.require(requested).fit(facts)  # one-line error naming the extra if missing
        best, best_name = max(fits, key=lambda f: f[0].score) if fits else (fit, requested)
        warning = "" if best.score <= fit.score else (
            f"--backend {requested}: {fit.reason}; {best_name} fits this machine better ({best.reason})")
        return Choice(requested, f"requested with --backend/config ({fit.reason})", fit.gpu, threads, warning)
    if not fits:
        raise backends.nothing_installed()
    fit, name = max(fits, key=lambda f: f[0].score)  # max keeps the first of equals: registration order
    missing = [other for other in backends.REGISTRY if not facts.has(other)]
    why = fit.reason + "".join(f"; {other} is not installed" for other in missing)
    return Choice(name, why, fit.gpu, threads)


def describe(facts: Facts) -> list[tuple[str, str]]:
    """Rows for `mlxgen doctor` (cheap facts only; backends add their own)."""
    return [
        ("platform", f"{facts.system} {facts.machine}"),
        ("chip", chip_name()),
        ("python", sys.version.split()[0]),
        ("cpus", str(facts.cpu_count)),
    ] + [(f"backend {name}", "installed" if facts.has(name) else f"missing (pip install \"mlxgen[{info.extra}]\")")
         for name, info in backends.REGISTRY.items()]


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
