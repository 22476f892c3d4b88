"""`--model SOURCE`: a local GGUF, an MLX folder, or a Hugging Face source, as mlx-lm and llama.cpp users type it."""

from __future__ import annotations

import pytest

from mlxgen.cli import model_source, resolve_config
from mlxgen.errors import ConfigError

CLEARED = {"llm.path": None, "llm.package": None, "llm.repo": None, "llm.mlx.repo": None, "llm.mlx.path": None}


def test_an_existing_file_is_a_local_gguf(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert model_source(str(f)) == {**CLEARED, "llm.path": str(f)}


def test_an_existing_folder_is_an_mlx_model(tmp_path):
    assert model_source(str(tmp_path)) == {**CLEARED, "llm.mlx.path": str(tmp_path), "backend": "mlx",
                                           "what": "an MLX model folder"}


@pytest.mark.parametrize(
    "value, expect",
    [
        ("unsloth/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf", {"llm.repo": "unsloth/Qwen3-4B-GGUF", "llm.file": "Qwen3-4B-Q4_K_M.gguf"}),
        ("org/repo/sub/dir/m.gguf", {"llm.repo": "org/repo", "llm.file": "sub/dir/m.gguf"}),
        ("Qwen/Qwen3-4B", {"llm.mlx.repo": "Qwen/Qwen3-4B", "backend": "mlx",
                           "what": "a Hugging Face repo (converted to MLX)"}),
        ("models/missing.gguf", {"llm.path": "models/missing.gguf"}),  # a local path that will say it is missing
        ("./org/repo/m.gguf", {"llm.path": "./org/repo/m.gguf"}),
        ("/abs/org/repo/m.gguf", {"llm.path": "/abs/org/repo/m.gguf"}),
    ],
)
def test_what_is_not_on_disk_may_be_on_the_hub(value, expect):
    assert model_source(value) == {**CLEARED, **expect}


def test_model_replaces_the_preset_source_and_its_tokenizer_facts():
    cfg = resolve_config({"model_path": "Qwen/Qwen3-4B"})
    assert (cfg.backend, cfg.llm.mlx.repo, cfg.llm.package, cfg.tokenizer.eos_token) == ("mlx", "Qwen/Qwen3-4B", None, ())
    with pytest.raises(ConfigError, match="only the mlx backend runs, not llama.cpp; use --backend mlx"):
        resolve_config({"model_path": "Qwen/Qwen3-4B", "backend": "llama.cpp"})  # issue 18: was 'no model configured'
    assert resolve_config({"model_path": "Qwen/Qwen3-4B", "backend": "mlx"}).backend == "mlx"
    cfg = resolve_config({"model_path": "a/b/c.gguf", "config": "qwen3-4b"})
    assert (cfg.llm.repo, cfg.llm.file, cfg.tokenizer.eos_token) == ("a/b", "c.gguf", ("<|im_end|>",))  # -c keeps its own
