"""The sampling settings, once: name, type, default, rule, help, flags and aliases.

Everything that lists these settings reads this table: the config's ``inference``
section and its checks, :class:`mlxgen.sampling.SamplingParams`, the CLI flags and
their config keys, chat's ``/set`` and ``/load``, the REPL help and ``mlxgen logits``.
Adding a setting here adds it everywhere; its effect goes in ``mlxgen.sampling``.

Light on purpose: `mlxgen --help` imports it (no numpy).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mlxgen.errors import ConfigError


def number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class Setting:
    name: str
    type: type  # int or float (what the CLI and /set parse)
    default: Any
    rule: Callable[[Any], bool]
    allowed: str  # the rule in words, for error messages
    help: str
    flags: tuple[str, ...]  # CLI flags, the first is the main one
    aliases: tuple[str, ...] = ()  # other names in a config, /set and requests
    optional: bool = False  # None is a value (seed: fresh randomness)
    off: Any = None  # the value that turns a filter off (shown as "off" by `mlxgen logits`)


TABLE: tuple[Setting, ...] = (
    Setting("temperature", float, 0.7, lambda v: number(v) and (v == 0 or v >= 1e-6),
            "0 (greedy) or a finite number >= 1e-6", "0 = greedy.", ("--temperature", "--temp"), ("temp",)),
    Setting("top_k", int, 0, lambda v: integer(v) and v >= 0, "an integer >= 0 (0 = off)",
            "Keep the K most likely tokens; 0 = off.", ("--top-k",), off=0),
    Setting("top_p", float, 1.0, lambda v: number(v) and 0 < v <= 1, "a number in (0, 1]",
            "Keep the most likely tokens up to this probability mass; 1 = off.", ("--top-p",), off=1.0),
    Setting("min_p", float, 0.0, lambda v: number(v) and 0 <= v < 1, "a number in [0, 1)",
            "Drop tokens below this fraction of the top token's probability; 0 = off.", ("--min-p",), off=0.0),
    Setting("repetition_penalty", float, 1.0, lambda v: number(v) and v > 0, "a finite number > 0 (1 = off)",
            "Divide the logits of recent tokens (CTRL style); 1 = off.", ("--repetition-penalty", "--repeat-penalty"),
            ("repeat_penalty",)),
    Setting("repetition_context", int, 64, lambda v: integer(v) and v > 0, "a positive integer",
            "How many recent tokens the repetition penalty looks at.", ("--repetition-context", "--repeat-last-n"),
            ("repeat_last_n",)),
    Setting("seed", int, None, lambda v: v is None or (integer(v) and 0 <= v < 2**63),
            "an integer >= 0 (or null: fresh randomness)", "Same seed, same text; none: fresh randomness.",
            ("--seed",), optional=True),
    Setting("max_length", int, 1024, lambda v: integer(v) and v > 0, "a positive integer",
            "Tokens to generate.", ("--max-length", "--max-tokens", "-n"), ("max_tokens", "n")),
)
BY_NAME: dict[str, Setting] = {s.name: s for s in TABLE}
ALIASES: dict[str, str] = {alias: s.name for s in TABLE for alias in s.aliases}


def canonical(name: str) -> str | None:
    """The setting a user means by ``name`` (``temp``, ``max-tokens``, ``Top_K``), or None."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    return key if key in BY_NAME else None


def check(values: Mapping[str, Any], prefix: str = "") -> None:
    """Raise a ConfigError for the first setting in ``values`` that breaks its rule."""
    for name, value in values.items():
        setting = BY_NAME[name]
        if not setting.rule(value):
            from mlxgen.config import show  # the bounded repr every config error uses

            raise ConfigError(f"{prefix}{name}: {show(value)} is not allowed; expected {setting.allowed}")


def parse(name: str, text: str) -> Any:
    """A value typed at the REPL (``/set top_k 40``), checked by its rule."""
    setting = BY_NAME[name]
    text = text.strip()
    if setting.optional and text.lower() in ("none", "null", "off", "random"):
        return None
    try:
        value = setting.type(text)
    except ValueError:
        kind = "an integer" if setting.type is int else "a number"
        raise ConfigError(f"/set {name}: {text!r} is not {kind}") from None
    check({name: value})
    return value


def fields() -> list[tuple[str, Any, dataclasses.Field]]:
    """The table as dataclass fields (for ``dataclasses.make_dataclass``)."""
    return [
        (s.name, (s.type | None) if s.optional else s.type, dataclasses.field(default=s.default)) for s in TABLE
    ]


def values(obj: Any) -> dict[str, Any]:
    """Every setting's value on a config section or params object, in table order."""
    return {s.name: getattr(obj, s.name) for s in TABLE}


# The settings as a frozen dataclass: the base of the config's inference section and
# of the sampler's parameters, so both have exactly these fields and defaults.
SamplingFields = dataclasses.make_dataclass("SamplingFields", fields(), frozen=True)
SamplingFields.__module__ = __name__
SamplingFields.__doc__ = "Every sampling setting with its default (generated from TABLE)."
