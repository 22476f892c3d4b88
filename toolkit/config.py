"""Configuration: frozen dataclasses, validated once.

The source article's file (``tokenizer`` / ``llm`` / ``inference``) loads unchanged;
everything else is an addition with a default here and nowhere else.
CLI flags are applied as dotted-key overrides on the raw mapping *before*
validation, so a flag and a YAML value go through the same checks.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from mlxgen import settings
from mlxgen.errors import ConfigError, first_line

DEFAULT_PRESET = "smollm2-135m"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; a chat template a few KB


@dataclass(frozen=True)
class Quantize:
    bits: int = 4
    group_size: int = 64

    def validate(self, key: str) -> None:
        _check(self.bits in (2, 3, 4, 5, 6, 8), f"{key}.bits", self.bits, "one of 2, 3, 4, 5, 6, 8")
        _check(self.group_size in (32, 64, 128), f"{key}.group_size", self.group_size, "one of 32, 64, 128")


@dataclass(frozen=True)
class MLXSource:
    """Where the MLX backend gets its weights when the GGUF is not used."""

    repo: str | None = None  # original HF repo (converted) or an MLX repo (used as is)
    revision: str = "main"
    path: str | None = None  # a local mlx-lm model folder
    quantize: Quantize = field(default_factory=Quantize)

    _aliases = {"branch": "revision"}

    def validate(self, key: str) -> None:
        self.quantize.validate(f"{key}.quantize")


@dataclass(frozen=True)
class TokenizerConfig:
    repo: str | None = None
    file: str = "tokenizer.json"
    revision: str = "main"
    path: str | None = None  # a local tokenizer.json
    eos_token: tuple[str, ...] = ()
    chat_template: str | None = None

    _aliases = {"branch": "revision"}


@dataclass(frozen=True)
class LLMConfig:
    repo: str | None = None
    file: str | None = None
    branch: str = "main"
    path: str | None = None  # a local GGUF file
    package: str | None = None  # a Python package that ships `file` (the embedded model)
    n_ctx: int = 4096
    n_threads: int | None = None  # None: one per available core
    n_gpu_layers: int | None = None  # None: decided by hardware detection
    # llama.cpp's flash attention: on, as llama.cpp's own default (-fa auto); llama-cpp-python's
    # default turns it off. With it on, a multi-token pass gives bit-identical logits to one-token
    # steps, so speculative greedy output equals plain. MLX always uses its fused attention.
    flash_attn: bool = True
    prompt_cache_dir: str | None = None  # saved prompt caches by prefix (mlxgen.prompt_file.auto)
    kv_bits: int | None = None  # KV-cache quantization: 8 or 4 bits; None (or 16): full precision
    mlx: MLXSource = field(default_factory=MLXSource)

    _aliases = {"revision": "branch"}

    @property
    def kv_quant(self) -> int | None:
        """The KV cache's quantization bits, or None for the full-precision cache."""
        return None if self.kv_bits in (None, 16) else self.kv_bits

    def validate(self, key: str) -> None:
        _check(0 < self.n_ctx <= MAX_CTX, f"{key}.n_ctx", self.n_ctx, f"a positive integer up to {MAX_CTX}")
        if self.n_threads is not None:
            _check(0 < self.n_threads <= MAX_THREADS, f"{key}.n_threads", self.n_threads,
                   f"a positive integer up to {MAX_THREADS}")
        if self.n_gpu_layers is not None:
            _check(self.n_gpu_layers >= -1, f"{key}.n_gpu_layers", self.n_gpu_layers, "-1 (all), 0 or a layer count")
        _check(self.kv_bits in KV_BITS, f"{key}.kv_bits", self.kv_bits, "8 or 4 (16 or null: full precision)")
        if self.package and not self.file:
            raise ConfigError(f"{key}.package: needs {key}.file, the file inside the package")
        if self.repo and not self.file and not self.mlx.repo:
            raise ConfigError(f"{key}.repo: needs {key}.file, the GGUF file in the repo")
        self.mlx.validate(f"{key}.mlx")


@dataclass(frozen=True)
class ConstraintConfig:
    """``inference.constraint``: at most one of these (``mlxgen.constraint`` reads and checks it).

    ``json_schema``: a file, JSON text, or the schema written as a YAML mapping;
    ``json_object``: any JSON object; ``regex``: a pattern the whole output matches;
    ``grammar``: a Lark grammar (file or text), as llguidance reads it.
    """

    json_schema: Any = None
    json_object: bool = False
    regex: str | None = None
    grammar: str | None = None

    def validate(self, key: str) -> None:
        if self.json_schema is not None:
            _check(isinstance(self.json_schema, (str, dict)), f"{key}.json_schema", self.json_schema,
                   "a file, JSON text or a mapping")
        given = [k for k in ("json_schema", "json_object", "regex", "grammar") if getattr(self, k) not in (None, False)]
        if len(given) > 1:
            raise ConfigError(f"{key}: give one of json_schema, json_object, regex, grammar, not both {given[0]} "
                              f"and {given[1]}")

    @property
    def active(self) -> bool:
        return any(getattr(self, k) not in (None, False) for k in ("json_schema", "json_object", "regex", "grammar"))


@dataclass(frozen=True)
class InferenceConfig(settings.SamplingFields):
    """``inference``: the sampling settings (``mlxgen.settings.TABLE``), then these."""

    stop: tuple[str, ...] = ()
    system_prompt: str | None = None
    thinking: bool | None = None  # None: the template's default
    raw: bool = False  # no chat template at all
    constraint: ConstraintConfig = field(default_factory=ConstraintConfig)  # structured output
    draft: str | None = None  # speculative decoding: a draft model (a source as --model takes it)
    draft_tokens: int = 4  # tokens the draft model proposes per target pass
    lookup: int | None = None  # speculative decoding by prompt lookup: tokens proposed per target pass
    adaptive_draft: bool = False  # grow the draft length while everything is accepted, shrink on a miss
    context_overflow: str | None = None  # a full context: "shift" (drop the oldest) or "stop"; None: chat shifts, run stops

    _aliases = {**settings.ALIASES, "stop_strings": "stop", "system": "system_prompt", "draft_model": "draft"}

    def validate(self, key: str) -> None:
        settings.check(settings.values(self), f"{key}.")
        _check(all(self.stop), f"{key}.stop", list(self.stop), "non-empty strings")
        self.constraint.validate(f"{key}.constraint")
        _check(self.draft is None or bool(self.draft.strip()), f"{key}.draft", self.draft, "a model source")
        _check(0 < self.draft_tokens <= MAX_DRAFT, f"{key}.draft_tokens", self.draft_tokens,
               f"a positive number of tokens up to {MAX_DRAFT}")
        if self.lookup is not None:
            _check(0 < self.lookup <= MAX_DRAFT, f"{key}.lookup", self.lookup,
                   f"a positive number of tokens to propose per step, up to {MAX_DRAFT}")
        _check(self.context_overflow in (None, *OVERFLOW), f"{key}.context_overflow", self.context_overflow,
               " or ".join(OVERFLOW))
        if self.draft and self.lookup:
            raise ConfigError(f"{key}.draft and {key}.lookup: give a draft model or prompt lookup, not both")

    def sampling(self):
        """The sampler's parameters: these settings."""
        from mlxgen.sampling import SamplingParams

        return SamplingParams(**settings.values(self))


@dataclass(frozen=True)
class Config:
    backend: str = "auto"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    source: str = "<defaults>"  # where it came from, for --dry-run

    def validate(self) -> None:
        names = backend_names()
        _check(self.backend in names, "backend", self.backend, "one of " + ", ".join(names))
        self.llm.validate("llm")
        self.inference.validate("inference")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source")
        return _plain(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def backend_names() -> tuple[str, ...]:
    """What ``backend:`` may say: auto, or a registered backend."""
    from mlxgen.backends import REGISTRY

    return ("auto", *REGISTRY)


KV_BITS = (None, 16, 8, 4)  # llm.kv_bits: 16 and None both mean the full-precision cache
OVERFLOW = ("shift", "stop")  # inference.context_overflow
MAX_DRAFT = 16  # speculative decoding: draft tokens per target pass (mlxgen.speculative.MAX_DRAFT)
MAX_CTX = 2**21  # 2M positions: beyond any released model; larger values only ran out of memory
MAX_THREADS = 1024  # llama.cpp crashed (std::bad_alloc, SIGSEGV) on 100,000


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {show(value)} is not allowed; expected {allowed}")


class _Repr(reprlib.Repr):
    """repr() for error messages: short, one line, and safe on hostile values."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxtuple = 2, 4, 4, 4
        self.maxstring, self.maxother, self.maxlong = 60, 60, 40

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # repr() itself fails past 4300 digits; a few digits are enough
            digits = int(x.bit_length() * math.log10(2)) + 1
            digits -= abs(x) < 10 ** (digits - 1)
            return f"<an integer of {digits} digits>"
        return repr(x)


_SHOW = _Repr()


def show(value: Any) -> str:
    """A bounded one-line repr: a billion-laughs list or a 10k-digit number stays short."""
    return _SHOW.repr(value)


def _key_text(key: Any) -> str:
    """A mapping key as it appears in a dotted path (quoted if it is odd)."""
    text = key if isinstance(key, str) else show(key)
    if not text or len(text) > 60 or not text.isprintable():
        return show(key)
    return text


# --------------------------------------------------------------------------- loading


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("mlxgen.configs").iterdir() if p.name.endswith(".yaml"))


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load a YAML file (or a preset name, or the default preset) and apply dotted overrides."""
    text, source = _read_source(path)
    raw = _parse_yaml(text, source)
    raw, source = _inherit(raw, source, overrides or {}, user_file=path is not None and not source.startswith("preset "))
    for dotted, value in (overrides or {}).items():  # None clears a key back to its default
        _set_dotted(raw, dotted, value)
    cfg = _build(Config, raw, "")
    cfg = dataclasses.replace(cfg, source=source)
    cfg.validate()
    return cfg


MODEL_KEYS = ("llm.path", "llm.package", "llm.repo", "llm.file", "llm.mlx.repo", "llm.mlx.path")
MAX_EXTENDS = 8


def _inherit(raw: dict[str, Any], source: str, overrides: Mapping[str, Any], user_file: bool) -> tuple[dict, str]:
    """``extends: PRESET|FILE`` puts the config on top of that one; a user's config that
    names no model (and no ``--model``) is put on top of the default preset, model included."""
    chain = [source]
    while "extends" in raw:
        base = raw.pop("extends")
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{source}: extends: expected a preset name or a config file, got {_type_name(base)} "
                              f"{show(base)}")
        if len(chain) > MAX_EXTENDS:
            raise ConfigError(f"{source}: extends: more than {MAX_EXTENDS} configs deep ({' -> '.join(chain)})")
        text, base_source = _read_source(base)
        raw = _merge(_parse_yaml(text, base_source), raw)
        chain.append(base_source)
    if user_file and len(chain) == 1 and not _names_model(raw) and not any(
        overrides.get(k) is not None for k in MODEL_KEYS
    ):
        text, base_source = _read_source(DEFAULT_PRESET)
        raw = _merge(_parse_yaml(text, base_source), raw)
        chain.append(f"{base_source}, for its model")
    return raw, chain[0] + "".join(f" (extends {c})" for c in chain[1:])


def _names_model(raw: dict[str, Any]) -> bool:
    def get(dotted: str) -> Any:
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return any(get(k) is not None for k in MODEL_KEYS)


def _merge(base: dict[str, Any], top: dict[str, Any], cls: type | None = None) -> dict[str, Any]:
    """``top`` over ``base``, section by section (a mapping in both is merged, anything else
    replaced). A key in ``top`` replaces every spelling of the same setting in ``base``
    (``max_tokens`` over a preset's ``max_length``)."""
    cls = cls or Config
    aliases: dict[str, str] = dict(getattr(cls, "_aliases", {}))
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for key, value in top.items():
        name = aliases.get(str(key), str(key))
        for other in [k for k in out if aliases.get(str(k), str(k)) == name and k not in top]:
            del out[other]
        inner = hints.get(name)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and dataclasses.is_dataclass(inner):
            out[key] = _merge(out[key], value, inner)
        else:
            out[key] = value
    return out


def _read_source(path: str | Path | None) -> tuple[str, str]:
    if path is None:
        path = DEFAULT_PRESET
    p = Path(path)
    try:
        is_file, exists = p.is_file(), p.exists()
    except OSError as e:  # e.g. a name too long for the file system
        raise ConfigError(f"{_key_text(str(p))}: cannot read config: {e.strerror}") from None
    if is_file:
        try:
            if p.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config (at most {MAX_CONFIG_BYTES})")
            return p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read config: {e}") from None
    name = str(path)
    if p.suffix == "" and name in preset_names():
        return resources.files("mlxgen.configs").joinpath(f"{name}.yaml").read_text(encoding="utf-8"), f"preset {name}"
    if exists:
        raise ConfigError(f"{p}: not a file")
    hint = f" (presets: {', '.join(preset_names())})" if p.suffix == "" else ""
    raise ConfigError(f"{p}: config file not found{hint}")


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or first_line(e)
        raise ConfigError(f"{source}: malformed YAML{where}: {_one_line(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: malformed YAML: nested too deeply") from None
    except Exception as e:  # PyYAML failing to build a scalar: a bad date, a 5000-digit int, `!!timestamp x`
        raise ConfigError(f"{source}: malformed YAML: {_one_line(str(e)) or type(e).__name__}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(data).__name__}")
    return data


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:200] + "..."


_LOADER = None


def _loader():
    """yaml.SafeLoader that refuses a key given twice in one mapping (the first would be silently lost)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            def construct_mapping(self, node, deep=False):
                if isinstance(node, yaml.MappingNode):
                    seen = set()
                    for key_node, _ in node.value:
                        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                            ident = (key_node.tag, key_node.value)
                            if ident in seen:
                                raise yaml.constructor.ConstructorError(
                                    None, None, f"duplicate key {show(key_node.value)}", key_node.start_mark
                                )
                            seen.add(ident)
                return super().construct_mapping(node, deep)

        _LOADER = Loader
    return _LOADER


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = str(dotted).split(".")
    if not all(parts):
        raise ConfigError(f"{show(dotted)}: not a dotted config key (like inference.top_p)")
    *parents, leaf = parts
    node = raw
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            if value is None:
                return  # nothing there to clear
            child = {}
            node[part] = child
        node = child
    if value is None:
        node.pop(leaf, None)  # back to the default
    else:
        node[leaf] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_type_name(data)} {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    aliases: dict[str, str] = dict(getattr(cls, "_aliases", {}))
    kwargs: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        name = aliases.get(str(key), str(key))
        dotted = f"{prefix}.{_key_text(key)}" if prefix else _key_text(key)
        if name not in fields:
            raise ConfigError(f"{dotted}: unknown key{_suggest(str(key), list(fields) + list(aliases))}")
        if name in given:
            raise ConfigError(f"{dotted}: the same setting as {given[name]}; give only one of them")
        given[name] = str(key)
        kwargs[name] = _coerce(hints[name], value, dotted)
    return cls(**kwargs)


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(sorted(known))}"


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if tp is Any:  # checked by the section's validate()
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:  # tuple[str, ...]: one string or a list of them
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}: expected a string or a list of strings, got {_type_name(value)} {show(value)}")
        return tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(f"{key}: {show(value)} is too large; expected a number") from None
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. a numeric revision
    expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}[tp]
    raise ConfigError(f"{key}: expected {expected}, got {_type_name(value)} {show(value)}")
