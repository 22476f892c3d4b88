"""Hardware detection on hand-made machines; the registry's install checks."""

from __future__ import annotations

import importlib.machinery

import pytest

from mlxgen import backends
from mlxgen.errors import BackendUnavailable
from mlxgen.hardware import Choice, Facts, describe, detect, gather_facts

BACKEND_PACKAGES = {"mlx", "mlx_lm", "llama_cpp"}


@pytest.fixture
def packages(monkeypatch):
    """Pretend exactly these backend packages are installed: ``packages({"llama_cpp"})``."""
    real = backends.importlib.util.find_spec

    def install(present: set[str]) -> None:
        def find_spec(name, *args, **kwargs):
            if name in BACKEND_PACKAGES:
                return importlib.machinery.ModuleSpec(name, None) if name in present else None
            return real(name, *args, **kwargs)

        monkeypatch.setattr(backends.importlib.util, "find_spec", find_spec)

    install(set(BACKEND_PACKAGES))
    return install


def facts(mlx_installed=False, llamacpp_installed=True, llamacpp_gpu_offload=False, **kw) -> Facts:
    """A machine: which of the two real backends are installed, and whether llama.cpp reaches a GPU."""
    base = dict(system="Linux", machine="x86_64", cpu_count=8)
    base.update(kw)
    installed = {name for name, on in (("mlx", mlx_installed), ("llama.cpp", llamacpp_installed)) if on}
    gpu = {"llama.cpp"} if llamacpp_gpu_offload and llamacpp_installed else set()
    return Facts(installed=frozenset(installed), gpu_offload=frozenset(gpu), **base)


MAC_MLX = dict(system="Darwin", machine="arm64", mlx_installed=True, llamacpp_installed=True)
MAC_NO_MLX = dict(system="Darwin", machine="arm64", mlx_installed=False, llamacpp_installed=True)
CUDA_BOX = dict(system="Linux", machine="x86_64", llamacpp_gpu_offload=True, cpu_count=32)
PLAIN_LINUX = dict(system="Linux", machine="x86_64", cpu_count=12)


# --------------------------------------------------------------------------- automatic


def test_apple_silicon_with_the_apple_backend_installed_picks_it(packages):
    choice = detect(facts(**MAC_MLX))
    assert choice.backend == "mlx"
    assert "Apple Silicon" in choice.reason


def test_apple_silicon_without_llama_still_picks_the_apple_backend(packages):
    assert detect(facts(**{**MAC_MLX, "llamacpp_installed": False})).backend == "mlx"


def test_mac_without_the_apple_backend_picks_llama(packages):
    choice = detect(facts(**MAC_NO_MLX, cpu_count=10))
    assert choice.backend == "llama.cpp"
    assert "mlx is not installed" in choice.reason
    assert (choice.gpu, choice.n_threads) == (False, 10)


def test_mac_with_a_metal_llama_build_offloads_everything(packages):
    choice = detect(facts(**MAC_NO_MLX, llamacpp_gpu_offload=True))
    assert (choice.backend, choice.gpu) == ("llama.cpp", True)


def test_intel_mac_is_not_apple_silicon(packages):
    f = facts(system="Darwin", machine="x86_64", mlx_installed=True, llamacpp_installed=True)
    assert not f.apple_silicon
    assert detect(f).backend == "llama.cpp"


def test_cuda_box_offloads_all_layers_to_the_gpu(packages):
    choice = detect(facts(**CUDA_BOX))
    assert choice == Choice("llama.cpp", choice.reason, gpu=True, n_threads=32)
    assert "GPU" in choice.reason


def test_plain_linux_runs_llama_on_the_cpu_with_one_thread_per_core(packages):
    choice = detect(facts(**PLAIN_LINUX))
    assert choice.backend == "llama.cpp"
    assert not choice.gpu
    assert choice.n_threads == 12
    assert "CPU" in choice.reason and "12 threads" in choice.reason


def test_linux_with_only_the_apple_backend_uses_it_on_the_cpu(packages):
    choice = detect(facts(mlx_installed=True, llamacpp_installed=False))
    assert choice.backend == "mlx"
    assert "CPU" in choice.reason


def test_nothing_installed_names_the_extra(packages):
    packages(set())
    with pytest.raises(BackendUnavailable) as info:
        detect(facts(mlx_installed=False, llamacpp_installed=False))
    assert 'pip install "mlxgen[llamacpp]"' in str(info.value)


@pytest.mark.parametrize(
    "kw, apple",
    [
        (dict(system="Darwin", machine="arm64"), True),
        (dict(system="Darwin", machine="x86_64"), False),
        (dict(system="Linux", machine="arm64"), False),
        (dict(system="Linux", machine="aarch64"), False),
    ],
)
def test_apple_silicon_fact(kw, apple):
    assert facts(**kw).apple_silicon is apple


# --------------------------------------------------------------------------- requested


def test_requested_llama_overrides_detection_on_a_mac(packages):
    choice = detect(facts(**MAC_MLX), "llama.cpp")
    assert choice.backend == "llama.cpp"
    assert "requested" in choice.reason


def test_requested_llama_on_a_cuda_box_still_offloads(packages):
    assert detect(facts(**CUDA_BOX), "llama.cpp").gpu
    assert not detect(facts(**PLAIN_LINUX), "llama.cpp").gpu


def test_requested_apple_backend_overrides_detection_on_linux(packages):
    choice = detect(facts(**PLAIN_LINUX), "mlx")
    assert choice.backend == "mlx"
    assert "requested" in choice.reason


def test_auto_is_the_default_request(packages):
    assert detect(facts(**MAC_MLX), "auto") == detect(facts(**MAC_MLX))


@pytest.mark.parametrize(
    "requested, present, extra, missing",
    [
        ("mlx", {"llama_cpp"}, "mlx", "mlx"),
        ("mlx", {"llama_cpp", "mlx"}, "mlx", "mlx_lm"),
        ("llama.cpp", {"mlx", "mlx_lm"}, "llamacpp", "llama_cpp"),
    ],
    ids=["apple-package-missing", "apple-lm-package-missing", "llama-package-missing"],
)
def test_requested_backend_that_is_missing_names_the_pip_extra(packages, requested, present, extra, missing):
    packages(present)
    with pytest.raises(BackendUnavailable) as info:
        detect(facts(**MAC_MLX), requested)
    message = str(info.value)
    assert f'pip install "mlxgen[{extra}]"' in message
    assert missing in message
    assert "\n" not in message


# ---------------------------------------------------------------------------- registry


def test_is_installed_follows_find_spec(packages):
    packages({"llama_cpp", "mlx"})
    assert backends.is_installed("llama.cpp")
    assert not backends.is_installed("mlx")  # mlx_lm is missing


def test_load_module_refuses_a_missing_backend_before_importing(packages):
    packages(set())
    with pytest.raises(BackendUnavailable, match=r"mlxgen\[llamacpp\]"):
        backends.load_module("llama.cpp")


def test_registry_extras_exist_in_pyproject():
    import pathlib

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = pathlib.Path(backends.__file__).resolve().parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for info in backends.REGISTRY.values():
        assert info.extra in extras


def test_describe_reports_missing_backends_with_the_extra(packages):
    packages({"llama_cpp"})
    rows = dict(describe(facts(**PLAIN_LINUX)))
    assert rows["cpus"] == "12"
    assert rows["backend llama.cpp"] == "installed"
    assert rows["backend mlx"] == 'missing (pip install "mlxgen[mlx]")'


def test_gather_facts_on_this_machine_without_probing_the_gpu():
    f = gather_facts(probe_gpu=False)
    assert f.cpu_count >= 1
    assert f.gpu_offload == frozenset()
    assert f.system and f.machine
