"""A fast, bounds-checked look at a GGUF file's structure before anything trusts it.

``gguf.GGUFReader`` and llama.cpp's loader trust the counts and lengths a file gives:
a flipped byte in an array length makes the reader loop for hours and allocate without
bound, an offset past the end makes a view that fails later, far from the cause.
``check`` walks the header, the metadata (key/value) section and the tensor-info
section itself, and checks every count and length against the bytes that remain
before using it: known value and tensor type codes (from ``gguf``'s own constants),
no duplicate keys or tensor names, tensor shapes that fit their block size, offsets
aligned and every tensor's data inside the file.

It reads only the headers, through ``mmap``: the tensor data is never touched, so
it costs a few milliseconds even on a multi-GB model. Every problem is one line:
``<file>: not a valid GGUF file (<what is wrong>)``.

Strings inside metadata arrays (the vocabulary) are bounds-checked but not decoded;
code that reads them (``mlxgen.gguf_vocab``) checks what it uses.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from mlxgen.errors import ModelError, first_line

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # what gguf.GGUFReader and llama.cpp read
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME: llama.cpp refuses tensor names of 64 bytes or more
MAX_ARRAY = 1 << 22  # entries in one metadata array: ~16x the largest real vocabulary or merge list
RESERVED_KEYS = ("GGUF.version", "GGUF.tensor_count", "GGUF.kv_count")  # gguf.GGUFReader's own names
MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
MIN_TENSOR_BYTES = 8 + 4 + 8 + 4 + 8  # name length, n_dims, one dimension, type, offset


SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS


class GGUFFormatError(ModelError):
    """The file is not a well-formed GGUF; ``problem`` says what is wrong, without the path."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: not a valid GGUF file ({problem})")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_name: str  # GGMLQuantizationType name: "Q8_0", "F32", ...
    shape: tuple[int, ...]  # GGUF order: shape[0] is the contiguous (row) dimension
    offset: int  # absolute, in bytes from the start of the file
    n_bytes: int


@dataclass(frozen=True)
class GGUFInfo:
    version: int
    byte_order: str  # "<" or ">"
    alignment: int
    data_offset: int
    file_size: int
    keys: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    values: dict = field(default_factory=dict)  # scalar metadata (numbers, bools, short strings)
    arrays: dict = field(default_factory=dict)  # array metadata: key -> (entry type code, length)


class _Bad(Exception):
    pass


def check(path: str | Path) -> GGUFInfo:
    """The file's layout, or a ``GGUFFormatError`` (a ``ModelError``) saying what is wrong."""
    path = Path(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path}: not a regular file")
        if st.st_size == 0:
            raise GGUFFormatError(path, "the file is empty")
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _Parser(buf, min(st.st_size, len(buf))).parse()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
    except _Bad as e:
        raise GGUFFormatError(path, str(e)) from None
    except (OSError, ValueError) as e:  # unreadable, or mmap refused it
        raise ModelError(f"{path}: cannot read the model file ({getattr(e, 'strerror', None) or e})") from None


def _value_sizes() -> tuple[dict[int, int], int, int]:
    import numpy as np
    from gguf import GGUFReader, GGUFValueType

    sizes = {int(t): np.dtype(np_type).itemsize for t, np_type in GGUFReader.gguf_scalar_to_np.items()}
    return sizes, int(GGUFValueType.STRING), int(GGUFValueType.ARRAY)


class _Parser:
    def __init__(self, buf, size: int) -> None:
        self.buf, self.size, self.pos = buf, size, 0
        self.order = "<"
        self.values: dict[str, object] = {}
        self.arrays: dict[str, tuple[int, int]] = {}

    # ---------------------------------------------------------------- primitives

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise _Bad(f"{what} at offset {self.pos} needs {n} bytes but the file ends at {self.size}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = struct.unpack_from(self.order + "I", self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = struct.unpack_from(self.order + "Q", self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, what: str) -> bytes:
        start = self.pos
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            raise _Bad(f"{what} at offset {start} claims {n} bytes but only {self.size - self.pos} remain")
        s = self.buf[self.pos : self.pos + n]
        self.pos += n
        return s

    def text(self, what: str) -> str:
        start = self.pos
        data = self.raw_string(what)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(f"{what} at offset {start} is not valid UTF-8") from None

    # ---------------------------------------------------------------- sections

    def parse(self) -> GGUFInfo:
        from gguf import GGUF_DEFAULT_ALIGNMENT

        self.need(4, "magic")
        magic = bytes(self.buf[0:4])
        if magic != MAGIC:
            raise _Bad(f"magic is {magic!r}, expected {MAGIC!r}")
        self.pos = 4
        version = self.u32("version")
        if version & 0xFFFF == 0 and version != 0:  # written on a machine of the other byte order
            self.order = ">"
            version = struct.unpack(">I", struct.pack("<I", version))[0]
        if version not in VERSIONS:
            raise _Bad(f"version {version} is not supported (readable: {', '.join(map(str, VERSIONS))})")
        n_tensors = self.u64("tensor count")
        n_kv = self.u64("metadata count")
        if n_kv > (self.size - self.pos) // MIN_KV_BYTES:
            raise _Bad(f"metadata count {n_kv} cannot fit in the {self.size - self.pos} bytes that remain")
        sizes, string_t, array_t = _value_sizes()
        keys: dict[str, int] = {}
        alignment = GGUF_DEFAULT_ALIGNMENT
        for i in range(n_kv):
            key_at = self.pos
            key = self.text(f"metadata key #{i}")
            if key in keys or key in RESERVED_KEYS:
                raise _Bad(f"metadata key {key!r} at offset {key_at} appears twice")
            keys[key] = key_at
            vtype = self.u32(f"type of {key!r}")
            if key == "general.alignment":
                if vtype != 4:  # GGUFValueType.UINT32, as gguf.GGUFReader and llama.cpp require
                    raise _Bad(f"general.alignment has value type {vtype}, expected UINT32")
                alignment = self.u32("general.alignment")
                if alignment == 0 or alignment & (alignment - 1):
                    raise _Bad(f"general.alignment {alignment} is not a power of two")
                continue
            self.value(key, vtype, sizes, string_t, array_t)
        if n_tensors > (self.size - self.pos) // MIN_TENSOR_BYTES:
            raise _Bad(f"tensor count {n_tensors} cannot fit in the {self.size - self.pos} bytes that remain")
        infos = [self.tensor_info(i, alignment) for i in range(n_tensors)]
        names = set()
        for name, *_ in infos:
            if name in names:
                raise _Bad(f"tensor name {name!r} appears twice")
            names.add(name)
        data_offset = -(-self.pos // alignment) * alignment
        tensors = []
        for name, type_name, shape, rel, n_bytes in infos:
            start = data_offset + rel
            if start + n_bytes > self.size:
                raise _Bad(
                    f"tensor {name!r} data (bytes {start}..{start + n_bytes}) runs past the end of the file "
                    f"({self.size} bytes; truncated?)"
                )
            tensors.append(TensorInfo(name, type_name, shape, start, n_bytes))
        return GGUFInfo(version, self.order, alignment, data_offset, self.size, tuple(keys), tuple(tensors),
                        self.values, self.arrays)

    def value(self, key: str, vtype: int, sizes: dict[int, int], string_t: int, array_t: int) -> None:
        if vtype in sizes:
            self.need(sizes[vtype], f"value of {key!r}")
            if vtype in SCALAR_FORMATS:
                (self.values[key],) = struct.unpack_from(self.order + SCALAR_FORMATS[vtype], self.buf, self.pos)
            self.pos += sizes[vtype]
        elif vtype == string_t:
            text = self.text(f"value of {key!r}")
            if len(text) <= 256:
                self.values[key] = text
        elif vtype == array_t:
            itype = self.u32(f"array type of {key!r}")
            count = self.u64(f"array length of {key!r}")
            self.arrays[key] = (itype, count)
            remain = self.size - self.pos
            if count > MAX_ARRAY:
                raise _Bad(f"array {key!r} has {count} entries, more than the {MAX_ARRAY} mlxgen accepts")
            if itype in sizes:
                if count > remain // sizes[itype]:
                    raise _Bad(f"array {key!r} claims {count} entries but only {remain} bytes remain")
                self.pos += count * sizes[itype]
            elif itype == string_t:
                if count > remain // 8:
                    raise _Bad(f"array {key!r} claims {count} strings but only {remain} bytes remain")
                self.skip_strings(key, count, unique=key == "tokenizer.ggml.tokens")
            else:
                what = "nested arrays are not supported" if itype == array_t else "unknown type code"
                raise _Bad(f"array {key!r} has entry type {itype} ({what})")
        else:
            raise _Bad(f"metadata {key!r} has unknown value type {vtype}")

    def skip_strings(self, key: str, count: int, unique: bool = False) -> None:
        """Walk ``count`` length-prefixed strings; the hot loop for a 50k-token vocabulary.

        ``unique``: also refuse two equal strings (llama.cpp asserts that no two vocabulary
        entries are the same and aborts the process).
        """
        unpack = struct.Struct(self.order + "Q").unpack_from
        buf, pos, i = self.buf, self.pos, 0
        seen: dict[bytes, int] = {}
        try:
            for i in range(count):
                n = unpack(buf, pos)[0]
                if unique:
                    token = buf[pos + 8 : pos + 8 + n]
                    if seen.setdefault(token, i) != i and pos + 8 + n <= self.size:
                        raise _Bad(f"array {key!r}: entries #{seen[token]} and #{i} are the same token {token[:40]!r}")
                pos += 8 + n
        except (struct.error, OverflowError):  # string i starts past the end: string i-1 was too long
            i = i - 1 if i and pos > self.size - 8 else i
            pos = self.size + 1
        if pos > self.size:
            raise _Bad(f"array {key!r}: string #{i} runs past the end of the file")
        self.pos = pos

    def tensor_info(self, i: int, alignment: int) -> tuple[str, str, tuple[int, ...], int, int]:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        at = self.pos
        name = self.text(f"tensor #{i} name")
        if len(name.encode()) >= MAX_NAME:
            raise _Bad(f"tensor #{i} name at offset {at} is {len(name.encode())} bytes (llama.cpp allows {MAX_NAME - 1})")
        n_dims = self.u32(f"tensor {name!r} dimension count")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _Bad(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(self.u64(f"tensor {name!r} dimension") for _ in range(n_dims))
        raw_type = self.u32(f"tensor {name!r} type")
        try:
            qtype = GGMLQuantizationType(raw_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _Bad(f"tensor {name!r} has unknown type code {raw_type}") from None
        rel = self.u64(f"tensor {name!r} offset")
        n_elements = 1
        for d in shape:
            n_elements *= d
        if min(shape) == 0 or n_elements >= 1 << 63:
            raise _Bad(f"tensor {name!r} has shape {list(shape)}")
        if shape[0] % block:
            raise _Bad(f"tensor {name!r} of type {qtype.name} has a row of {shape[0]}, not a multiple of its block {block}")
        if rel % alignment:
            raise _Bad(f"tensor {name!r} data offset {rel} is not a multiple of the alignment {alignment}")
        return name, qtype.name, shape, rel, n_elements // block * type_size


def check_model(path: str | Path, info: GGUFInfo) -> None:
    """What llama.cpp's loader trusts beyond the layout: layer and head counts that agree
    with the tensors, a vocabulary whose arrays line up. Found by patching one value of
    the embedded model (block_count 30 -> 100000): llama.cpp aborted the process.
    """
    import re

    from gguf import GGUFValueType

    def bad(problem: str) -> GGUFFormatError:
        return GGUFFormatError(path, problem)

    v = info.values
    arch = v.get("general.architecture")
    if not isinstance(arch, str):
        raise bad("general.architecture is missing")

    def number(name: str) -> int | None:
        value = v.get(f"{arch}.{name}")
        if value is not None and (isinstance(value, (bool, float)) or not isinstance(value, int)):
            raise bad(f"{arch}.{name} is {value!r}, expected an integer")
        return value

    blocks = number("block_count")
    layers = {int(m[1]) for t in info.tensors if (m := re.match(r"blk\.(\d+)\.", t.name))}
    if blocks is not None:
        if not 1 <= blocks <= MAX_LAYERS:
            raise bad(f"{arch}.block_count is {blocks}, expected 1..{MAX_LAYERS}")
        if layers and layers != set(range(blocks)):
            raise bad(f"{arch}.block_count is {blocks} but the file has {len(layers)} layers of tensors")
    emb, heads, kv = number("embedding_length"), number("attention.head_count"), number("attention.head_count_kv")
    for name, value in (("attention.head_count", heads), ("attention.head_count_kv", kv), ("embedding_length", emb)):
        if value is not None and value <= 0:
            raise bad(f"{arch}.{name} is {value}, expected a positive count")
    if heads and kv and heads % kv:
        raise bad(f"{arch}.attention.head_count {heads} is not a multiple of head_count_kv {kv}")
    if emb and heads and number("attention.key_length") is None and emb % heads:
        raise bad(f"{arch}.embedding_length {emb} is not a multiple of attention.head_count {heads}")
    embd = next((t for t in info.tensors if t.name == "token_embd.weight"), None)
    if emb and embd is not None and embd.shape[0] != emb:
        raise bad(f"token_embd.weight rows are {embd.shape[0]} wide but {arch}.embedding_length is {emb}")
    tokens = info.arrays.get("tokenizer.ggml.tokens")
    for key, kind in (("tokenizer.ggml.scores", GGUFValueType.FLOAT32), ("tokenizer.ggml.token_type", None)):
        entry = info.arrays.get(key)
        if entry is None or tokens is None:
            continue
        if kind is not None and entry[0] != int(kind):
            raise bad(f"{key} holds type {entry[0]}, expected FLOAT32")
        if entry[1] != tokens[1]:
            raise bad(f"{key} has {entry[1]} entries but tokenizer.ggml.tokens has {tokens[1]}")


def kv_cache_bytes(info: GGUFInfo, n_ctx: int) -> int | None:
    """The f16 KV cache llama.cpp allocates for ``n_ctx`` positions, if the metadata says enough."""
    v = info.values
    arch = v.get("general.architecture")
    blocks, emb, heads = (v.get(f"{arch}.{k}") for k in ("block_count", "embedding_length", "attention.head_count"))
    if not all(isinstance(x, int) and x > 0 for x in (blocks, emb, heads)):
        return None
    kv = v.get(f"{arch}.attention.head_count_kv", heads)
    head_dim = v.get(f"{arch}.attention.key_length", emb // heads)
    return n_ctx * blocks * 2 * kv * head_dim * 2


def open_reader(path: str | Path):
    """``gguf.GGUFReader`` on a file :func:`check` has checked first (GGUFReader trusts every count it reads)."""
    import gguf

    check(path)
    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
    except Exception as e:  # anything the structural check does not cover
        raise GGUFFormatError(path, first_line(e)) from None


def field_value(reader, key: str, default=None, path: str | Path | None = None):
    """A metadata value as Python data (``default`` if absent); one ModelError if it cannot be decoded."""
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        value = f.contents()
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        where = f"{path}: " if path is not None else ""
        raise ModelError(f"{where}GGUF metadata {key} cannot be read ({type(e).__name__}: {first_line(e)})") from None
    return value if value is not None else default
