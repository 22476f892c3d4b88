"""Structured output: a JSON Schema, any JSON object, a regex or a Lark grammar as a logits processor.

Three stages, each done once where it belongs:

    Spec       what the user asked for (a flag or ``inference.constraint``), read and
               checked before any model loads (a bad schema is one line, exit 2)
    Grammar    the spec bound to the model's vocabulary (llguidance's tokenizer built
               from the token bytes, sized to the model's logits, EOS = the run's EOS ids)
    Matcher    one per run: the ``mlxgen.sampling.Constraint`` the sampler applies;
               it masks every token the grammar forbids, EOS included until the grammar
               accepts, and hears every drawn token (``accept``) or forgets some (``rollback``)

The mask is llguidance's bitmask (one bit per token); it is applied by adding a row
of a 256 x 8 lookup table ({0, -inf} per bit) for each mask byte, which is plain array
ops on numpy and on ``mx.array`` alike (llguidance's own MLX helper needs Metal).
Allowed logits are unchanged (x + 0), so greedy tokens are the unconstrained ones
wherever the grammar allows them. Only this module imports llguidance.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlxgen.errors import ConfigError, MlxgenError, first_line

KINDS = ("json_schema", "json_object", "regex", "grammar")
# JSON as one line with a space after ':' and ',': small models wander off in free
# whitespace (an object that never closes); every valid value is still reachable. A schema's own
# "x-guidance" options (llguidance's) override these.
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT = {"type": "object"}


class ConstraintError(ConfigError):
    """A schema, regex or grammar that cannot be used (exit 2, like a bad flag)."""


@dataclass(frozen=True)
class Spec:
    """A checked constraint: ``kind`` and llguidance's grammar text."""

    kind: str  # one of KINDS
    label: str  # for messages and `mlxgen logits`: "json_schema schema.json"
    grammar: str  # llguidance's serialized grammar
    schema: Any = None  # the JSON schema (json_schema / json_object), to validate outputs with
    check_ms: float = 0.0  # reading and checking the grammar (no tokenizer yet)

    @property
    def is_json(self) -> bool:
        return self.kind in ("json_schema", "json_object")


def _llg():
    try:
        import llguidance
    except ImportError:
        raise MlxgenError('structured output needs llguidance: pip install "mlxgen[constraints]"') from None
    return llguidance


def from_config(section: Any) -> Spec | None:
    """The spec an ``inference.constraint`` section names, or None; reads files, checks the grammar."""
    given = [(k, getattr(section, k)) for k in KINDS if getattr(section, k) not in (None, False)]
    return make_spec(*given[0]) if given else None  # the config allows one at most


def make_spec(kind: str, value: Any, where: str | None = None) -> Spec:
    """``kind``'s value (a file, inline text, a mapping) read and checked with llguidance, no tokenizer needed.

    ``where``: what error messages name (the config key by default; the server names the request field).
    """
    t0 = time.perf_counter()
    llg = _llg()
    where = where or f"inference.constraint.{kind}"
    schema = None
    if kind == "json_object":
        schema, label = ANY_OBJECT, "json_object"
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    elif kind == "json_schema":
        schema, label = _read_schema(value, where)
        try:
            grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
        except ValueError as e:
            raise ConstraintError(f"{where}: {label}: {first_line(e)}") from None
    elif kind == "regex":
        if not isinstance(value, str) or not value:
            raise ConstraintError(f"{where}: expected a non-empty regular expression")
        label, grammar = f"regex {_short(value)}", llg.LLMatcher.grammar_from_regex(value)
    elif kind == "grammar":
        text, label = _read_text(value, where, "a Lark grammar")
        grammar = llg.LLMatcher.grammar_from_lark(text)
    else:
        raise ValueError(kind)
    problem = llg.LLMatcher.validate_grammar(grammar)
    if problem:
        raise ConstraintError(f"{where}: {label}: {_one_line(problem)}")
    return Spec(kind, label if kind in ("json_object", "regex") else f"{kind} {label}", grammar, schema,
                (time.perf_counter() - t0) * 1e3)


def _read_schema(value: Any, where: str) -> tuple[dict, str]:
    if isinstance(value, Mapping):
        return dict(value), "(inline)"
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        text, label = value, "(inline)"
    else:
        text, label = _read_text(value, where, "a JSON schema")
    try:
        schema = json.loads(text)
    except ValueError as e:
        raise ConstraintError(f"{where}: {label} is not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise ConstraintError(f"{where}: {label}: a JSON schema is an object, not {type(schema).__name__}")
    return schema, label


def _read_text(value: Any, where: str, what: str) -> tuple[str, str]:
    """A file's text, or ``value`` itself when it is written inline (JSON / a grammar with a newline or ':')."""
    if not isinstance(value, str) or not value.strip():
        raise ConstraintError(f"{where}: expected a file or {what} as text")
    stripped = value.lstrip()
    inline = stripped.startswith("{") or "\n" in value or ":" in value and not Path(value).is_file()
    if inline:
        return value, "(inline)"
    path = Path(value).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(value)
    except FileNotFoundError:
        raise ConstraintError(f"{where}: {value}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConstraintError(f"{where}: {value}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _one_line(text: str) -> str:
    """llguidance's message in one line: its first line, and the regex parser's ``error:`` line if any."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith("error:")), "")
    return " ".join(" ".join([*lines[:1], detail]).split()) or "invalid"


# ------------------------------------------------------------------ the vocabulary


def token_bytes(tokenizer: Any, n_vocab: int) -> tuple[list[bytes], list[int]]:
    """Every id's bytes up to ``n_vocab`` (the model's logits; ids past the tokenizer's are b""),
    special tokens marked with a leading 0xFF (llguidance's convention: never text), and the special ids.

    Read through the tokenizer interface (``token_bytes``, ``special_ids``), so llama.cpp's own
    vocabulary and the rebuilt ``tokenizers`` one give llguidance the same bytes.
    """
    special = sorted(i for i in tokenizer.special_ids() if i < n_vocab)
    marked = set(special)
    n_tok = min(tokenizer.vocab_size, n_vocab)
    out = [b"\xff" + tokenizer.token_bytes(i) if i in marked else tokenizer.token_bytes(i) for i in range(n_tok)]
    return out + [b""] * (n_vocab - n_tok), special


class _Wrapped:
    """What ``llguidance.TokenizerWrapper`` reads: token bytes, EOS, specials, and text -> ids."""

    def __init__(self, tokenizer: Any, tokens: list[bytes], special: list[int], eos: Sequence[int]) -> None:
        self._tok = tokenizer
        self.tokens, self.special_token_ids = tokens, special
        self.eos_token_id = eos[0]
        self.bos_token_id = getattr(tokenizer, "bos_id", None)

    def __call__(self, text: str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._tok.encode(text, bos=False, special=False)


# ------------------------------------------------------------------ bound to a model


@dataclass
class Grammar:
    """A spec bound to a model's vocabulary: makes one fresh :class:`Matcher` per run."""

    spec: Spec
    vocab_size: int  # the model's logits length: the mask covers exactly these ids
    eos_ids: tuple[int, ...]
    compile_ms: float  # the grammar compiled against the vocabulary (after the tokenizer)
    tokenizer_ms: float  # llguidance's tokenizer built from the token bytes
    _pristine: Any = field(repr=False, default=None)

    def matcher(self, ops: Any = None) -> "Matcher":
        from mlxgen.sampling import NUMPY

        return Matcher(self._pristine.deep_copy(), self, ops or NUMPY)


def bind(spec: Spec, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> Grammar:
    """Build llguidance's tokenizer for this vocabulary (once per session) and compile the grammar on it."""
    llg = _llg()
    if not eos_ids:
        raise ConstraintError(f"{spec.label}: the model has no EOS token, so no output could ever end")
    t0 = time.perf_counter()
    lltok = _lltokenizer(tokenizer, vocab_size, tuple(eos_ids))
    t1 = time.perf_counter()
    matcher = llg.LLMatcher(lltok, spec.grammar, log_level=0)
    t2 = time.perf_counter()
    if matcher.is_error():
        raise ConstraintError(f"{spec.label}: {_one_line(matcher.get_error())}")
    return Grammar(spec, vocab_size, tuple(eos_ids), (t2 - t1) * 1e3, (t1 - t0) * 1e3, matcher)


_TOKENIZERS: dict[tuple, tuple[Any, Any]] = {}  # (id(tokenizer), n_vocab, eos) -> (weakref, LLTokenizer)


def _lltokenizer(tokenizer: Any, vocab_size: int, eos_ids: tuple[int, ...]):
    """llguidance's tokenizer for this vocabulary, built once per tokenizer object (a few hundred ms)."""
    import weakref

    llg = _llg()
    key = (id(tokenizer), vocab_size, eos_ids)
    hit = _TOKENIZERS.get(key)
    if hit is not None and hit[0]() is tokenizer:
        return hit[1]
    tokens, special = token_bytes(tokenizer, vocab_size)
    wrapped = llg.TokenizerWrapper(_Wrapped(tokenizer, tokens, special, eos_ids))
    lltok = llg.LLTokenizer(wrapped, n_vocab=vocab_size, eos_token=list(eos_ids))
    try:
        _TOKENIZERS[key] = (weakref.ref(tokenizer), lltok)
    except TypeError:  # an object without weak references: build it each time
        pass
    return lltok


# ------------------------------------------------------------------ the processor


_LUT: dict[str, Any] = {}


def _table(ops: Any):
    """256 x 8 float32: row b holds 0 where bit k of byte b is set, -inf where it is not."""
    if ops.name not in _LUT:
        import numpy as np

        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
        table = np.where(bits == 1, 0.0, -np.inf).astype(np.float32)
        if ops.name == "mlx":
            import mlx.core as mx

            _LUT[ops.name] = (mx.array(table), lambda m: mx.array(m, dtype=mx.uint8),
                              lambda t, idx: mx.take(t, idx, axis=0).reshape(-1))
        else:
            _LUT[ops.name] = (table, lambda m: np.frombuffer(m, dtype=np.uint8), lambda t, idx: t[idx].reshape(-1))
    return _LUT[ops.name]


class Matcher:
    """One run's constraint: the ``mlxgen.sampling.Constraint`` protocol on an llguidance matcher."""

    needs_history = False

    def __init__(self, matcher: Any, grammar: Grammar, ops: Any) -> None:
        self._m, self.grammar, self.ops = matcher, grammar, ops
        self._table, self._bytes, self._rows = _table(ops)
        self.name = f"constraint {grammar.spec.label}"
        self.accepted = 0  # tokens accepted so far (the EOS included)
        self.open_tokens = 0  # of those, accepted while the grammar was not yet complete
        self._consumed: list[bool] = []  # per accepted token: did llguidance consume it (rollback counts these)

    def mask(self) -> Any:
        """{0, -inf} per id for the next position, as the ops' array (length: the model's vocabulary)."""
        raw = self._m.compute_bitmask()
        if self._m.is_error():
            raise MlxgenError(f"{self.name}: {_one_line(self._m.get_error())}")
        return self._rows(self._table, self._bytes(raw))[: self.grammar.vocab_size]

    def __call__(self, history: Sequence[int], logits: Any) -> Any:
        return logits + self.mask()[: logits.shape[-1]]

    def accept(self, token: int) -> None:
        if self._m.is_stopped() and token in self.grammar.eos_ids:
            self.accepted += 1  # EOS again after the end (EOS ignored, as bench does): nothing to match
            self._consumed.append(False)
            return
        if not self._m.consume_token(token):
            raise MlxgenError(f"{self.name}: token {token} was drawn but the grammar forbids it "
                              f"({_one_line(self._m.get_error())})")
        self.accepted += 1
        self._consumed.append(True)
        self.open_tokens += not self._m.is_stopped()

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` accepted tokens (an EOS after the end was never consumed: not rolled back)."""
        if n <= 0:
            return
        if n > len(self._consumed):
            raise MlxgenError(f"{self.name}: cannot roll back {n} tokens (only {len(self._consumed)} accepted)")
        consumed = sum(self._consumed[-n:])
        del self._consumed[-n:]
        if consumed and not self._m.rollback(consumed):
            raise MlxgenError(f"{self.name}: cannot roll back {n} tokens ({_one_line(self._m.get_error())})")
        self.accepted -= n
        self.open_tokens = min(self.open_tokens, self.accepted)

    @property
    def complete(self) -> bool:
        """What was accepted is a whole match (the grammar accepts it, or it ended with EOS)."""
        return self._m.is_accepting() or self._m.is_stopped() and not self._m.is_error()
