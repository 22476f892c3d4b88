#!/usr/bin/env python3
"""Fuzz mlxgen's two untrusted inputs: YAML configs and GGUF files.

    python scripts/fuzz.py config --cases 5000        # generated configs (hypothesis)
    python scripts/fuzz.py gguf --cases 5000          # corrupted GGUFs, in guarded subprocesses
    python scripts/fuzz.py gguf --cases 200 --seed 7 --show 5

Config: each case must end in a valid ``Config`` (which then builds a sampler and samples
once) or a one-line ``ConfigError``. GGUF: each corrupted file goes through the structural
check (``mlxgen.gguf_check``), ``gguf.GGUFReader`` + the tokenizer build
(``mlxgen.gguf_vocab``) and, where MLX is installed and the file has tensors, the MLX import
(``mlxgen.backends.mlx_gguf``); it must end in success or a one-line ``ModelError`` naming
the file. GGUF cases run in worker processes under ``RLIMIT_AS`` with a per-case timeout,
so a crash, a hang or a runaway allocation is caught and counted, not just survived.

Prints the figures: cases run, outcomes by class, the slowest case, peak RSS.
``tests/test_fuzz_config.py`` and ``tests/test_fuzz_gguf.py`` run the same generators
with fewer cases (``MLXGEN_FUZZ_EXAMPLES`` raises their count).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from gguf_writer import finish

HERE = Path(__file__).resolve().parent
CASE_TIMEOUT_S = 20.0
GGUF_RLIMIT_AS = 3 << 30  # a worker that tries a multi-GB allocation fails instead


# =========================================================================== configs


def config_strategies():
    """Hypothesis strategies for (YAML bytes, overrides) pairs."""
    import yaml
    from hypothesis import strategies as st

    from mlxgen.config import Config

    presets = []
    for p in sorted((HERE.parent / "configs").glob("*.yaml")):
        presets.append(yaml.safe_load(p.read_text(encoding="utf-8")))
    known = _dotted_keys(Config().to_dict())  # every dotted key the schema knows
    names = sorted({k.split(".")[-1] for k in known} | {"max_tokens", "stop_strings", "system", "revision", "branch"})

    huge = st.sampled_from([2**31, 2**63, 2**64 + 1, 10**30, -(2**63), 10**308, 10**400, -1, 0, 1])
    floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
        [float("nan"), float("inf"), -float("inf"), 1e-320, 5e-324, 1e308, -0.0, 0.5, 1.0, 2.0]
    )
    text = st.text(max_size=20) | st.sampled_from(
        ["", " ", "\n", "a\nb", "auto", "mlx", "llama.cpp", "cuda", "1e-3", "nan", "inf", "-inf", "1_000",
         "0x10", "true", "yes", "null", "~", "<|im_end|>", "{{ message }}", "\x00", "\ud7ff", "é", "🙂"]
    )
    scalars = st.none() | st.booleans() | st.integers() | huge | floats | text
    values = st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12
    )
    key_text = st.sampled_from(names) | text | st.builds(_typo, st.sampled_from(names), st.randoms(use_true_random=False))

    @st.composite
    def mutated_preset(draw):
        data = json.loads(json.dumps(draw(st.sampled_from(presets))))  # a deep copy
        for _ in range(draw(st.integers(0, 4))):
            op = draw(st.sampled_from(["set", "set", "delete", "unknown", "typo", "alias", "scalar_section",
                                       "nest", "list_wrap", "empty_section"]))
            dotted = draw(st.sampled_from(known))
            parts = dotted.split(".")
            if op == "set":
                _put(data, parts, draw(values))
            elif op == "delete":
                _delete(data, parts)
            elif op == "unknown":
                _put(data, parts[:-1] + [draw(key_text)], draw(values))
            elif op == "typo":
                _put(data, parts[:-1] + [_typo(parts[-1], draw(st.randoms(use_true_random=False)))], draw(values))
            elif op == "alias":
                for a, b in (("max_tokens", "max_length"), ("system", "system_prompt"), ("revision", "branch")):
                    if parts[-1] == b:
                        _put(data, parts[:-1] + [a], draw(values))
            elif op == "scalar_section":
                _put(data, parts[:1], draw(scalars))
            elif op == "nest":
                _put(data, parts, _nested(draw(st.integers(1, 60)), draw(st.booleans()), draw(scalars)))
            elif op == "list_wrap":
                _put(data, parts, [_get(data, parts)])
            else:
                _put(data, parts[:1], {})
        return data

    def dump(data) -> str:
        try:
            return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
        except (ValueError, yaml.YAMLError):  # e.g. an int too long for str()
            return "inference:\n  max_length: 1" + "0" * 5000 + "\n"

    special = st.sampled_from(SPECIAL_YAML)
    docs = st.one_of(
        mutated_preset().map(dump),
        special,
        st.dictionaries(key_text, values, max_size=5).map(dump),
        values.map(dump),  # non-mapping top levels
        st.text(max_size=200),
    )

    @st.composite
    def raw_mutation(draw):
        doc = draw(docs).encode("utf-8", "surrogatepass")
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup_line", "syntax"]))
            at = draw(st.integers(0, max(0, len(doc))))
            if op == "flip" and doc:
                at = min(at, len(doc) - 1)
                doc = doc[:at] + bytes([doc[at] ^ draw(st.integers(1, 255))]) + doc[at + 1 :]
            elif op == "insert":
                doc = doc[:at] + draw(st.binary(min_size=1, max_size=4)) + doc[at:]
            elif op == "delete":
                doc = doc[:at] + doc[at + draw(st.integers(1, 8)) :]
            elif op == "truncate":
                doc = doc[:at]
            elif op == "dup_line":
                lines = doc.split(b"\n")
                i = draw(st.integers(0, len(lines) - 1))
                lines.insert(i, lines[i])
                doc = b"\n".join(lines)
            else:
                doc = doc[:at] + draw(st.sampled_from(SYNTAX)) + doc[at:]
        return doc

    dotted = st.sampled_from(known) | st.lists(key_text, min_size=1, max_size=4).map(".".join) | text
    override_values = values | st.lists(text, max_size=3)
    overrides = st.none() | st.dictionaries(dotted, override_values, max_size=4)
    return st.tuples(raw_mutation(), overrides)


SYNTAX = [b"&a ", b"*a", b"*b", b"<<: *a\n", b"!!python/object:os.system ", b"!!binary ", b"? ", b"---\n", b"...\n",
          b"%YAML 1.1\n", b"\t", b"{", b"}", b"[", b"]", b": ", b"- ", b"|\n", b">-\n", b"'", b'"', b"#", b"\xff\xfe",
          b"\x00", b"\r", b"\xef\xbb\xbf", b"!!set {a, b}", b"!!timestamp 2001-12-14", b"!!float", b"!!int"]


def _billion_laughs(levels: int = 10, width: int = 9, where: str = "inference:\n  stop: ") -> str:
    """9**9 strings by reference: harmless to load, fatal to anything that walks or repr()s it."""
    chain = ['&a0 ["lol"]'] + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return f"{where}[{', '.join(chain)}]\n"


SPECIAL_YAML = [
    _billion_laughs(),
    _billion_laughs(where="tokenizer:\n  eos_token: "),
    _billion_laughs(where="backend: "),
    _billion_laughs(where="llm: "),
    _billion_laughs(where="inference:\n  max_length: "),
    _billion_laughs(where=""),
    "defs: &d {max_length: 5}\ninference:\n  <<: *d\n",
    "inference: &i\n  max_length: 5\n  nested: *i\n",  # a recursive structure
    "inference:\n  max_length: " + "9" * 5000 + "\n",
    "inference:\n  temperature: " + "9" * 400 + "\n",
    "inference:\n  temperature: 1" + "0" * 400 + ".0\n",
    "inference:\n  temperature: .nan\n",
    "inference:\n  temperature: .inf\n",
    "inference:\n  top_p: -.inf\n",
    "inference:\n  seed: -1\n",
    "inference:\n  seed: " + "1" * 40 + "\n",
    "inference:\n  top_k: 99999999999999999999999\n",
    "inference:\n  max_length: 5\n  max_length: 6\n",
    "inference:\n  max_length: 5\n  max_tokens: 6\n",
    "inference:\n  top_p: 0.5\ninference:\n  top_k: 3\n",
    "[" * 5000 + "]" * 5000,
    "a:\n" + "".join(" " * i + "- \n" for i in range(1, 400)),
    "{a: " * 2000 + "1" + "}" * 2000,
    "- a\n- b\n",
    "just a string\n",
    "42\n",
    "~\n",
    "---\na: 1\n---\nb: 2\n",
    "? [a, b]\n: 1\n",
    "? {a: 1}\n: 1\n",
    "1: 2\n",
    "null: 1\n",
    "2001-01-01: x\n",
    "inference:\n  stop: [a, [b]]\n",
    "inference:\n  \"top_p\\nx\": 1\n",
    "\"a\\nb\": 1\n",
    "inference:\n  system_prompt: !!binary aGVsbG8=\n",
    "inference:\n  stop: !!set {a, b}\n",
    "llm:\n  n_ctx: 2001-12-14\n",
    "tokenizer:\n  chat_template: " + "x" * 100_000 + "\n",
    "inference:\n  top_q: " + "y" * 10_000 + "\n",
]


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _dotted_keys(v, key + ".") if isinstance(v, dict) else [key]
    return out


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word + "x"
    i = rng.randrange(len(word) - 1)
    op = rng.randrange(4)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap
    if op == 1:
        return word[:i] + word[i + 1 :]  # drop
    if op == 2:
        return word[:i] + word[i] + word[i:]  # double
    return word[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_.-") + word[i + 1 :]


def _get(data, parts):
    for p in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(p)
    return data


def _put(data, parts, value) -> None:
    for p in parts[:-1]:
        if not isinstance(data.get(p), dict):
            data[p] = {}
        data = data[p]
    data[parts[-1]] = value


def _delete(data, parts) -> None:
    parent = _get(data, parts[:-1]) if len(parts) > 1 else data
    if isinstance(parent, dict):
        parent.pop(parts[-1], None)


def _nested(depth: int, as_list: bool, leaf):
    for _ in range(depth):
        leaf = [leaf] if as_list else {"x": leaf}
    return leaf


class CaseTimeout(Exception):
    pass


def config_case(doc: bytes, overrides, path: Path) -> tuple[str, str]:
    """('valid' | 'ConfigError', message). Anything else raises: a bug."""
    import numpy as np

    from mlxgen import session
    from mlxgen.config import load_config
    from mlxgen.errors import ConfigError
    from mlxgen.sampling import make_sampler

    path.write_bytes(doc)
    try:
        cfg = load_config(path, overrides)
        sample = make_sampler(session.sampling_params(cfg))
        logits = np.linspace(-3, 3, 50, dtype=np.float32)
        token = sample([1, 2, 3, 2], logits)
        assert 0 <= token < 50, token
        cfg.to_dict()
    except ConfigError as e:
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, f"not one line: {message!r}"
        assert len(message) < 1000, f"{len(message)} characters"
        return "ConfigError", message
    return "valid", ""


def run_config(cases: int, seed: int, show: int) -> int:
    from hypothesis import HealthCheck, Phase, given, settings

    outcomes: Counter = Counter()
    failures: list[str] = []
    examples: dict[str, list[str]] = {}
    slowest = [0.0, ""]
    work = Path(tempfile.mkdtemp(prefix="mlxgen-fuzz-config-"))
    path = work / "config.yaml"
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, resource.RLIM_INFINITY))

    def alarm(*_):
        raise CaseTimeout("case took over %.0f s" % CASE_TIMEOUT_S)

    signal.signal(signal.SIGALRM, alarm)

    def record(doc: bytes, overrides) -> None:
        t0 = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_TIMEOUT_S)
        try:
            kind, message = config_case(doc, overrides, path)
        except BaseException as e:  # noqa: BLE001 - every other outcome is a finding
            kind, message = "FAIL", f"{type(e).__name__}: {e}"[:300]
            failures.append(f"{message}\n    yaml={doc[:200]!r} overrides={str(overrides)[:200]}\n"
                            + "".join(traceback.format_exc(limit=-3)))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.perf_counter() - t0
        if dt > slowest[0]:
            slowest[:] = [dt, repr(doc[:80])]
        outcomes[kind] += 1
        examples.setdefault(kind, []).append(message)

    @settings(max_examples=max(1, cases - len(SPECIAL_YAML)), database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(config_strategies())
    def one(case):
        record(*case)

    import hypothesis

    for doc in SPECIAL_YAML:  # the hand-written nasties run every time
        record(doc.encode(), None)
    hypothesis.seed(seed)(one)()
    n = sum(outcomes.values())
    print(f"config fuzz: {n} cases (seed {seed})")
    for kind, count in outcomes.most_common():
        print(f"  {kind:12s} {count}")
    print(f"  slowest case {slowest[0] * 1e3:.1f} ms: {slowest[1]}")
    print(f"  peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    for kind in ("ConfigError",):
        for m in random.Random(seed).sample(examples.get(kind, []), min(show, len(examples.get(kind, [])))):
            print(f"  e.g. {m[:160]}")
    for f in failures[:10]:
        print("FAIL", f)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


# =========================================================================== GGUF


def build_gguf_corpus(folder: Path) -> list[Path]:
    """Small valid GGUFs to corrupt: a vocabulary-only file and tiny random-weight models."""
    sys.path.insert(0, str(HERE))
    from make_tiny_gguf import write_tiny_gguf

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab-only.gguf"
    if not vocab.exists():
        write_vocab_gguf(vocab)
    files = [vocab]
    for quant, layers in (("q8_0", 1), ("q4_1", 2), ("f16", 1)):
        path = folder / f"tiny-{quant}.gguf"
        if not path.exists():
            write_tiny_gguf(path, vocab, layers=layers, dim=64, heads=4, kv_heads=2, ffn=128, quant=quant)
        files.append(path)
    return files


def write_vocab_gguf(path: Path) -> None:
    """A byte-level BPE vocabulary (256 bytes, a few merges, ChatML specials) and nothing else."""
    import gguf
    from tokenizers import pre_tokenizers

    byte_tokens = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t"]
    tokens = byte_tokens + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tokens) - 3)
    w.add_eos_token_id(len(tokens) - 1)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")
    finish(w)


def gguf_fields(data: bytes) -> tuple[list[tuple[int, int, str]], dict[str, tuple[int, int]]]:
    """Where a *valid* file keeps its numbers: (offset, size, kind), and its regions."""
    from mlxgen.gguf_check import _value_sizes

    sizes, string_t, array_t = _value_sizes()
    out = [(4, 4, "version"), (8, 8, "tensor_count"), (16, 8, "kv_count")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def u32():
        return struct.unpack_from("<I", data, pos)[0]

    def string(kind):
        nonlocal pos
        out.append((pos, 8, kind))
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]

    for _ in range(n_kv):
        string("key_len")
        vt = u32()
        out.append((pos, 4, "value_type"))
        pos += 4
        if vt in sizes:
            out.append((pos, sizes[vt], "scalar"))
            pos += sizes[vt]
        elif vt == string_t:
            string("str_len")
        else:
            it = u32()
            out.append((pos, 4, "array_type"))
            out.append((pos + 4, 8, "array_len"))
            n = struct.unpack_from("<Q", data, pos + 4)[0]
            pos += 12
            if it == string_t:
                for _ in range(n):
                    string("item_len")
            else:
                pos += n * sizes[it]
    kv_end = pos
    for _ in range(n_tensors):
        string("name_len")
        n_dims = u32()
        out.append((pos, 4, "n_dims"))
        pos += 4
        for _ in range(n_dims):
            out.append((pos, 8, "dim"))
            pos += 8
        out.append((pos, 4, "ggml_type"))
        out.append((pos + 4, 8, "tensor_offset"))
        pos += 12
    regions = {"header": (0, 24), "kv": (24, kv_end), "info": (kv_end, pos), "data": (pos, len(data))}
    return out, regions


def mutate(data: bytes, fields, regions, rng: random.Random) -> tuple[bytes, str]:
    """One to three corruptions of a valid GGUF; returns the bytes and what was done."""
    buf = bytearray(data)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        op = rng.choice(["truncate", "flip", "flip", "number", "number", "number", "splice", "shift", "extend"])
        if op == "truncate":
            end = regions["info"][1] + 64 if rng.random() < 0.6 else len(buf)
            cut = rng.randrange(0, max(1, min(end, len(buf))))
            del buf[cut:]
            done.append(f"truncate@{cut}")
        elif op == "flip" and buf:
            region = rng.choices(["header", "kv", "info", "data"], weights=(2, 4, 4, 1))[0]
            lo, hi = regions[region]
            hi = min(hi, len(buf))
            if hi <= lo:
                continue
            for _ in range(rng.randint(1, 8)):
                at = rng.randrange(lo, hi)
                buf[at] = rng.choice((buf[at] ^ (1 << rng.randrange(8)), rng.randrange(256), 0, 0xFF))
            done.append(f"flip:{region}")
        elif op == "number":
            at, size, kind = rng.choice(fields)
            if at + size > len(buf):
                continue
            fmt = "<I" if size == 4 else "<Q" if size == 8 else None
            if fmt is None:  # a 1- or 2-byte scalar
                buf[at] = rng.randrange(256)
                done.append(f"scalar@{at}")
                continue
            orig = struct.unpack_from(fmt, buf, at)[0]
            top = (1 << (size * 8)) - 1
            choices = [0, 1, orig + 1, orig - 1, orig * 2, orig + rng.randint(1, 64), 2**31, 2**32 - 1, top, top - 1,
                       len(buf), len(buf) - at, rng.getrandbits(size * 8), rng.randrange(1 << 16)]
            if size == 8:
                choices += [2**32, 2**63, 2**63 - 1, 2**62]
            if kind in ("value_type", "array_type", "ggml_type"):
                choices += list(range(0, 42)) + [255, 0xFFFF]
            value = rng.choice(choices) & top
            struct.pack_into(fmt, buf, at, value)
            done.append(f"{kind}@{at}={value}")
        elif op == "splice":
            region = rng.choice(["kv", "info", "header"])
            lo, hi = regions[region]
            at = rng.randrange(lo, max(lo + 1, min(hi, len(buf))))
            n = rng.randint(1, 32)
            buf[at : at + n] = bytes(rng.randrange(256) for _ in range(n))
            done.append(f"splice:{region}@{at}")
        elif op == "shift":
            lo, hi = regions[rng.choice(["kv", "info"])]
            at = rng.randrange(lo, max(lo + 1, min(hi, len(buf))))
            if rng.random() < 0.5:
                buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
                done.append(f"insert@{at}")
            else:
                del buf[at : at + rng.randint(1, 16)]
                done.append(f"delete@{at}")
        elif op == "extend":
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 4096)))
            done.append("append")
    return bytes(buf), " ".join(done) or "none"


def gguf_case(path: Path, out: Path, mlx_import: bool, llama: bool = False) -> tuple[str, str, str]:
    """('valid' | 'ModelError', stage, message). Any other exception propagates: a bug."""
    from mlxgen import gguf_check, gguf_vocab
    from mlxgen.errors import ModelError

    stage = "check"
    try:
        info = gguf_check.check(path)
        stage = "reader"
        reader = gguf_vocab.open_reader(path)
        stage = "vocab"
        if "path" in inspect.signature(gguf_vocab.build).parameters:
            gguf_vocab.build(reader, path)
        else:  # an older mlxgen (for `--no-check` comparisons against it)
            gguf_vocab.build(reader)
        if mlx_import and (info is None or info.tensors):
            from mlxgen.backends.mlx_gguf import import_gguf

            stage = "import"
            import_gguf(path, out, progress=lambda _msg: None)
        if llama and info is not None and info.tensors:  # what mlxgen's llama.cpp backend does with it
            stage = "llama.cpp"
            gguf_check.check_model(path, info)
            _llama_load(path)
    except ModelError as e:
        message = str(e)
        assert "\n" not in message, f"not one line: {message!r}"
        assert path.name in message, f"does not name the file: {message!r}"
        return "ModelError", stage, message
    return "valid", "", ""


def _llama_load(path: Path) -> None:
    """Load the file with mlxgen's llama.cpp backend and run one token (its refusals are ModelErrors)."""
    from mlxgen.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(path, n_ctx=64, n_threads=1, n_batch=64)
    try:
        backend.prefill([1])
    finally:
        backend.close()


def _mlx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm"))


def gguf_worker(corpus: Path, seed: int, start: int, stop: int, mlx_import: bool, no_check: bool = False,
                llama: bool = False) -> None:
    """Run cases start..stop-1, one JSON line each on stdout (the parent watches for crashes)."""
    import shutil

    if no_check:  # what gguf.GGUFReader and the rest do without the structural check in front
        from mlxgen import gguf_check

        gguf_check.check = lambda path: None

    cache = None if "MLXGEN_CACHE" in os.environ else tempfile.mkdtemp(prefix="mlxgen-fuzz-cache-")
    if cache:
        os.environ["MLXGEN_CACHE"] = cache
    bases = [(p, p.read_bytes()) for p in build_gguf_corpus(corpus)]
    layouts = {p: gguf_fields(d) for p, d in bases}
    work = Path(tempfile.mkdtemp(prefix="mlxgen-fuzz-gguf-"))
    mlx_import = mlx_import and _mlx_available()
    for i in range(start, stop):
        rng = random.Random(f"{seed}:{i}")
        base, data = rng.choice(bases)
        corrupt, what = mutate(data, *layouts[base], rng)
        path = work / f"case{i}.gguf"
        path.write_bytes(corrupt)
        out = work / f"out{i}"
        t0 = time.perf_counter()
        try:
            kind, stage, message = gguf_case(path, out, mlx_import, llama)
        except BaseException as e:  # noqa: BLE001 - the finding itself
            kind, stage, message = "FAIL", type(e).__name__, f"{e}"[:300] + " | " + traceback.format_exc(limit=-2)[-600:]
        dt = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"i": i, "base": base.name, "what": what, "kind": kind, "stage": stage, "msg": message,
                          "dt": dt, "rss": rss}), flush=True)
        path.unlink()
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)


def run_gguf(cases: int, seed: int, show: int, workers: int, mlx_import: bool, no_check: bool = False,
             timeout: float = CASE_TIMEOUT_S, llama: bool = False) -> int:
    corpus = Path(tempfile.mkdtemp(prefix="mlxgen-fuzz-corpus-"))
    bases = build_gguf_corpus(corpus)
    print(f"corpus: {', '.join(f'{p.name} ({p.stat().st_size} bytes)' for p in bases)}")
    results: dict[int, dict] = {}
    todo = [(s, min(s + (cases + workers - 1) // workers, cases)) for s in range(0, cases, (cases + workers - 1) // workers)]
    running: list[dict] = []

    def spawn(start: int, stop: int) -> dict:
        cmd = [sys.executable, __file__, "gguf-worker", "--corpus", str(corpus), "--seed", str(seed),
               "--start", str(start), "--stop", str(stop)] + ([] if mlx_import else ["--no-mlx"])
        cmd += ["--no-check"] if no_check else []
        cmd += ["--llama"] if llama else []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, preexec_fn=_limit_memory)
        return {"proc": proc, "next": start, "stop": stop, "since": time.monotonic(), "buf": b"", "started": False}

    t_start = time.perf_counter()
    running = [spawn(a, b) for a, b in todo]
    while running:
        ready, _, _ = select.select([w["proc"].stdout for w in running], [], [], 1.0)
        for w in list(running):
            if w["proc"].stdout in ready:
                chunk = os.read(w["proc"].stdout.fileno(), 65536)
                w["buf"] += chunk
                *lines, w["buf"] = w["buf"].split(b"\n")
                for line in lines:
                    r = json.loads(line)
                    results[r["i"]] = r
                    w["next"], w["since"], w["started"] = r["i"] + 1, time.monotonic(), True
                if chunk:
                    continue
                code = w["proc"].wait()
                running.remove(w)
                if w["next"] < w["stop"]:  # died in the middle of a case: a crash (segfault, abort, OOM kill)
                    results[w["next"]] = {"i": w["next"], "kind": "CRASH", "stage": f"exit {code}", "msg": "",
                                          "dt": 0.0, "rss": 0.0, "what": "?", "base": "?"}
                    if w["next"] + 1 < w["stop"]:
                        running.append(spawn(w["next"] + 1, w["stop"]))
            elif time.monotonic() - w["since"] > timeout + (0 if w["started"] else 60):  # a hang (start-up allowed)
                w["proc"].kill()
                w["proc"].wait()
                running.remove(w)
                results[w["next"]] = {"i": w["next"], "kind": "HANG", "stage": f"> {timeout:.0f} s", "msg": "", "dt": timeout,
                                      "rss": 0.0, "what": "?", "base": "?"}
                if w["next"] + 1 < w["stop"]:
                    running.append(spawn(w["next"] + 1, w["stop"]))
    wall = time.perf_counter() - t_start
    import shutil

    shutil.rmtree(corpus, ignore_errors=True)

    kinds = Counter(r["kind"] for r in results.values())
    stages = Counter(f"{r['kind']}/{r['stage']}" for r in results.values() if r["kind"] == "ModelError")
    slow = max(results.values(), key=lambda r: r["dt"])
    print(f"GGUF fuzz: {len(results)} cases (seed {seed}, {workers} workers, RLIMIT_AS {GGUF_RLIMIT_AS >> 30} GiB, "
          f"MLX import {'on' if mlx_import and _mlx_available() else 'off'}"
          f"{', WITHOUT the structural check' if no_check else ''}{', then llama.cpp load + 1 token' if llama else ''})"
          f" in {wall:.0f} s")
    for kind, count in kinds.most_common():
        print(f"  {kind:12s} {count}")
    for stage, count in stages.most_common():
        print(f"    {stage:20s} {count}")
    print(f"  slowest case {slow['dt'] * 1e3:.0f} ms ({slow['base']}: {slow['what']}; {slow['kind']} {slow['stage']})")
    print(f"  peak RSS of a worker {max(r['rss'] for r in results.values()):.0f} MiB")
    msgs = [r["msg"] for r in results.values() if r["kind"] == "ModelError"]
    for m in random.Random(seed).sample(msgs, min(show, len(msgs))):
        print(f"  e.g. {m[:200]}")
    bad = [r for r in results.values() if r["kind"] not in ("valid", "ModelError")]
    groups: dict[str, list[dict]] = {}
    for r in bad:
        head = re.sub(r"/\S+|\d+", "N", r["msg"].split(" | ")[0])[:90]
        groups.setdefault(f"{r['kind']} {r['stage']}: {head}", []).append(r)
    for key, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        r = rs[0]
        print(f"{len(rs):5d} x {key}\n        e.g. case {r['i']} ({r['base']}: {r['what']}): {r['msg'][-400:]!r}")
    return 1 if bad else 0


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GGUF_RLIMIT_AS, GGUF_RLIMIT_AS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=["config", "gguf", "gguf-worker"])
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="print this many sample error messages")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-mlx", action="store_true", help="skip the MLX import step")
    ap.add_argument("--no-check", action="store_true", help="bypass mlxgen.gguf_check (to see what it prevents)")
    ap.add_argument("--llama", action="store_true", help="also load each accepted file in llama.cpp and run a token")
    ap.add_argument("--timeout", type=float, default=CASE_TIMEOUT_S, help="seconds before a GGUF case is a hang")
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--start", type=int)
    ap.add_argument("--stop", type=int)
    args = ap.parse_args()
    if args.target == "config":
        sys.exit(run_config(args.cases, args.seed, args.show))
    if args.target == "gguf":
        sys.exit(run_gguf(args.cases, args.seed, args.show, args.workers, not args.no_mlx, args.no_check, args.timeout,
                          args.llama))
    gguf_worker(args.corpus, args.seed, args.start, args.stop, not args.no_mlx, args.no_check, args.llama)


if __name__ == "__main__":
    main()
