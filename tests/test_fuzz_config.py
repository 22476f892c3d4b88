"""Config fuzzing: every generated YAML (and dotted override) ends in a valid Config or one ConfigError line.

The generators live in ``scripts/fuzz.py`` (``python scripts/fuzz.py config --cases 5000``
runs the full count and prints the figures); here a modest number runs in the default
suite. ``MLXGEN_FUZZ_EXAMPLES=5000`` raises it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz  # noqa: E402

from mlxgen.config import load_config  # noqa: E402
from mlxgen.errors import ConfigError  # noqa: E402

EXAMPLES = int(os.environ.get("MLXGEN_FUZZ_EXAMPLES", "250"))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(fuzz.config_strategies())
def test_generated_configs_end_in_a_config_or_one_config_error(work, case):
    doc, overrides = case
    kind, message = fuzz.config_case(doc, overrides, work / "config.yaml")  # asserts one line
    assert kind in ("valid", "ConfigError")


@pytest.mark.parametrize("doc", fuzz.SPECIAL_YAML, ids=[f"special{i}" for i in range(len(fuzz.SPECIAL_YAML))])
def test_hand_written_nasties(work, doc):
    t0 = time.perf_counter()
    kind, message = fuzz.config_case(doc.encode(), None, work / "nasty.yaml")
    assert kind in ("valid", "ConfigError")
    assert time.perf_counter() - t0 < 10, "a bomb was expanded"


# ------------------------------------------------------------- what the fuzzer found


def error(tmp_path, text: str, overrides=None) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_billion_laughs_is_reported_briefly(tmp_path):
    message = error(tmp_path, fuzz._billion_laughs())
    assert message.startswith("inference.stop: expected a string or a list of strings, got a list [")


def test_huge_numbers(tmp_path):
    assert error(tmp_path, "inference:\n  temperature: " + "9" * 400 + "\n").startswith(
        "inference.temperature: <an integer of 400 digits> is too large"
    )
    assert "malformed YAML" in error(tmp_path, "inference:\n  max_length: " + "9" * 5000 + "\n")


def test_deep_nesting(tmp_path):
    assert "nested too deeply" in error(tmp_path, "[" * 5000 + "]" * 5000)


def test_odd_keys_are_quoted_in_the_dotted_path(tmp_path):
    assert error(tmp_path, 'inference:\n  "top_p\\nx": 1\n').startswith("inference.'top_p\\nx': unknown key")


def test_duplicate_keys_are_an_error(tmp_path):
    message = error(tmp_path, "inference:\n  top_p: 0.5\n  top_p: 0.9\n")
    assert "duplicate key 'top_p'" in message and "line 3" in message


def test_a_key_and_its_alias_together_are_an_error(tmp_path):
    message = error(tmp_path, "inference:\n  max_length: 5\n  max_tokens: 6\n")
    assert message.startswith("inference.max_tokens: the same setting as max_length")


def test_negative_seed_is_refused_before_the_sampler(tmp_path):
    assert error(tmp_path, "inference:\n  seed: -1\n").startswith("inference.seed: -1 is not allowed")


def test_bad_scalars_pyyaml_cannot_build(tmp_path):
    assert "malformed YAML" in error(tmp_path, "llm:\n  n_ctx: 2001-13-45\n")
    assert "malformed YAML" in error(tmp_path, "a: !!timestamp nonsense\n")


def test_override_none_clears_back_to_the_default(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  temperature: 0.2\n  seed: 4\n", encoding="utf-8")
    cfg = load_config(path, {"inference.temperature": None, "inference.seed": None, "llm.mlx.repo": None})
    assert cfg.inference.temperature == 0.7 and cfg.inference.seed is None


@pytest.mark.parametrize("dotted", ["", ".", "inference.", ".top_p", "inference..top_p"])
def test_malformed_dotted_override(tmp_path, dotted):
    assert "not a dotted config key" in error(tmp_path, "", {dotted: 1})


def test_config_path_too_long():
    with pytest.raises(ConfigError):
        load_config("x" * 5000 + ".yaml")


def test_oversized_config_file(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * (2 << 20) + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "too large for a config" in str(info.value)
