"""Constraints (mlxgen.constraint) in the shared sampler and loop, on the scripted fake backend.

The fake backend's logits push toward text the grammar forbids (and toward EOS too
early); the output must still match, EOS must come only once the grammar accepts, and
an output cut by max_tokens must end with ``length`` and never be called complete.
"""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest

from conftest import FakeBackend, run, streamed
from mlxgen import constraint
from mlxgen.config import ConstraintConfig, load_config
from mlxgen.errors import ConfigError
from mlxgen.loop import generate
from mlxgen.sampling import NUMPY, Constraint, SamplingParams, make_sampler

pytest.importorskip("llguidance")

PROMPT = [ord(c) for c in "Q: hi\nA:"]


class ByteTokenizer:
    """Bytes 0..255, then specials (EOS first), then a few multi-byte pieces; the interface constraints read."""

    SPECIALS = ("<|im_end|>", "<|im_start|>")
    PIECES = (b'{"', b'":', b", ", b"name", b"true", b"12")

    def __init__(self) -> None:
        self.pieces = [bytes([b]) for b in range(256)] + [s.encode() for s in self.SPECIALS] + list(self.PIECES)
        self.eos_id, self.bos_id = 256, None

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def token_bytes(self, token: int) -> bytes:
        return self.pieces[token]

    def special_ids(self) -> frozenset[int]:
        return frozenset({256, 257})

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def btok() -> ByteTokenizer:
    return ByteTokenizer()


def grammar(btok, kind: str, value, vocab: int | None = None):
    return constraint.bind(constraint.make_spec(kind, value), btok, vocab or btok.vocab_size, (btok.eos_id,))


def preferring(text: str, btok, vocab: int, eos_first: bool = True):
    """Logits that want ``text`` byte by byte, EOS above all from the first step (if ``eos_first``)."""
    wanted = list(text.encode())

    def logits(k: int) -> np.ndarray:
        x = np.linspace(0.0, 1.0, vocab, dtype=np.float32)  # a fixed preference order for everything else
        if eos_first:
            x[btok.eos_id] = 50.0
        if k < len(wanted):
            x[wanted[k]] = 40.0
        return x

    return logits


def generate_with(btok, g, logits_fn, *, max_tokens=60, pipelined=False, params=None, ops=NUMPY):
    backend = FakeBackend(vocab_size=g.vocab_size, n_ctx=256, logits_fn=logits_fn, pipelined=pipelined)
    matcher = g.matcher(ops)
    sample = make_sampler(params or SamplingParams(temperature=0), ops=ops, processors=[matcher])
    events, done = run(generate(backend, PROMPT, sample, btok.decode, max_tokens=max_tokens, eos_ids=[btok.eos_id]))
    assert streamed(events) == done.text
    return done, matcher, backend


@pytest.fixture(params=[False, True], ids=["plain", "pipelined"])
def pipelined(request) -> bool:
    return request.param


def test_a_matcher_is_a_constraint_and_reads_no_history(btok):
    m = grammar(btok, "regex", r"\d+").matcher()
    assert isinstance(m, Constraint)
    assert m.needs_history is False
    sample = make_sampler(SamplingParams(temperature=0), processors=[m])
    assert sample.constraints == (m,) and sample.needs_history is False


def test_regex_holds_and_eos_waits_until_the_grammar_accepts(btok, pipelined):
    g = grammar(btok, "regex", r"[0-9]{3}-[0-9]{2}")
    done, matcher, _ = generate_with(btok, g, preferring("hello", btok, g.vocab_size), pipelined=pipelined)
    assert done.reason == "eos"  # EOS is the model's favourite: drawn as soon as the grammar allowed it
    assert re.fullmatch(r"[0-9]{3}-[0-9]{2}", done.text), done.text
    assert matcher.complete and matcher.accepted == len(done.tokens) + 1  # every token heard, the EOS too


def test_allowed_tokens_are_the_models_own_choice(btok, pipelined):
    """Masking only removes tokens: where the model's favourite is allowed, it is drawn."""
    g = grammar(btok, "regex", r"[a-z]+")
    done, _, _ = generate_with(btok, g, preferring("cab", btok, g.vocab_size, eos_first=False), max_tokens=3,
                               pipelined=pipelined)
    assert done.text == "cab" and done.reason == "length"


def test_json_schema_output_validates(btok, pipelined):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "ok": {"type": "boolean"}},
              "required": ["name", "ok"], "additionalProperties": False}
    g = grammar(btok, "json_schema", json.dumps(schema))
    done, matcher, _ = generate_with(btok, g, preferring('{"name": "Al", "ok": true}', btok, g.vocab_size),
                                     pipelined=pipelined, max_tokens=80)
    assert done.reason == "eos" and matcher.complete
    jsonschema.validate(json.loads(done.text), schema)


def test_cut_by_max_tokens_ends_with_length_and_is_not_complete(btok, pipelined):
    g = grammar(btok, "json_object", True)
    done, matcher, _ = generate_with(btok, g, preferring('{"a": 1}', btok, g.vocab_size), max_tokens=4,
                                     pipelined=pipelined)
    assert done.reason == "length" and len(done.tokens) == 4
    assert not matcher.complete
    with pytest.raises(ValueError):
        json.loads(done.text)


def test_sampling_at_temperature_stays_inside_the_grammar(btok):
    g = grammar(btok, "regex", r"(yes|no|maybe)")
    for seed in range(5):
        done, matcher, _ = generate_with(btok, g, lambda k: np.zeros(g.vocab_size, np.float32),
                                         params=SamplingParams(temperature=1.0, seed=seed))
        assert done.reason == "eos" and done.text in ("yes", "no", "maybe"), done.text


def test_lark_grammar(btok):
    lark = 'start: "(" num ("," num)* ")"\nnum: /[0-9]/'
    g = grammar(btok, "grammar", lark)
    done, matcher, _ = generate_with(btok, g, preferring("(1,2)", btok, g.vocab_size))
    assert done.reason == "eos" and re.fullmatch(r"\([0-9](,[0-9])*\)", done.text), done.text


def test_the_mask_covers_the_models_vocabulary_not_the_tokenizers(btok):
    """Models pad their logits past the tokenizer: those ids are never allowed."""
    g = grammar(btok, "regex", r"[a-z]+", vocab=btok.vocab_size + 37)
    mask = g.matcher().mask()
    assert mask.shape == (btok.vocab_size + 37,)
    assert np.isinf(mask[btok.vocab_size:]).all()
    allowed = {btok.decode([i]) for i in np.flatnonzero(mask == 0)}
    assert allowed == set("abcdefghijklmnopqrstuvwxyz") | {"name", "true"}


def test_rollback_forgets_drafted_tokens(btok):
    m = grammar(btok, "regex", r"ab|cd").matcher()
    m.accept(ord("a"))
    assert np.flatnonzero(m.mask() == 0).tolist() == [ord("b")]
    m.rollback(1)
    m.accept(ord("c"))
    assert np.flatnonzero(m.mask() == 0).tolist() == [ord("d")]
    sample = make_sampler(SamplingParams(temperature=0), processors=[m])
    sample.rollback(1)
    assert m.accepted == 0


def test_rollback_past_an_eos_after_the_end_rolls_back_only_what_was_consumed(btok):
    """A draft may propose "…done" then EOS; the EOS after the end is not consumed, so rolling
    both back must undo one grammar token, not two (it undid one too many, and a later token
    the grammar forbids got through)."""
    g = grammar(btok, "regex", r"ab")
    m = g.matcher()
    m.accept(ord("a"))
    before = m.mask().copy()
    m.accept(ord("b"))
    m.accept(btok.eos_id)
    m.accept(btok.eos_id)  # after the end: ignored
    m.rollback(3)
    assert m.accepted == 1
    np.testing.assert_array_equal(m.mask(), before)


def test_a_forbidden_token_is_an_error_not_silence(btok):
    m = grammar(btok, "regex", r"ab").matcher()
    with pytest.raises(Exception, match="forbids"):
        m.accept(ord("z"))


def test_eos_after_the_end_is_ignored_when_generation_goes_on(btok):
    """bench ignores EOS: once the grammar is done, EOS is all it allows, again and again."""
    g = grammar(btok, "regex", r"ok")
    backend = FakeBackend(vocab_size=g.vocab_size, n_ctx=256, logits_fn=preferring("ok", btok, g.vocab_size))
    sample = make_sampler(SamplingParams(temperature=0), processors=[g.matcher()])
    _, done = run(generate(backend, PROMPT, sample, btok.decode, max_tokens=6, eos_ids=[]))
    assert done.tokens == [ord("o"), ord("k")] + [btok.eos_id] * 4


def test_the_loop_accepts_each_token_before_the_next_draw(btok, pipelined):
    heard: list[tuple[str, int]] = []

    class Spy:
        needs_history = False

        def __call__(self, history, logits):
            heard.append(("mask", len(heard)))
            return logits

        def accept(self, token):
            heard.append(("accept", token))

        def rollback(self, n):
            pass

    backend = FakeBackend([1, 2, 3], vocab_size=10, pipelined=pipelined)
    sample = make_sampler(SamplingParams(temperature=0), processors=[Spy()])
    run(generate(backend, PROMPT, sample, lambda ids: "x" * len(ids), max_tokens=3))
    kinds = [k for k, _ in heard]
    assert kinds == ["mask", "accept", "mask", "accept", "mask", "accept"]  # never two masks without an accept
    assert [t for k, t in heard if k == "accept"] == [1, 2, 3]


# ------------------------------------------------------------------ specs and errors


@pytest.mark.parametrize("kind,value,message", [
    ("json_schema", '{"type": "objekt"}', "Invalid type"),
    ("json_schema", "{not json", "is not JSON"),
    ("json_schema", "[1, 2]", "a JSON schema is an object"),
    ("json_schema", "missing.json", "no such file"),
    ("regex", "a(b", "unclosed group"),
    ("grammar", "start: foo\n", 'unknown name: "foo"'),
])
def test_bad_specs_are_one_line_naming_the_problem(kind, value, message):
    with pytest.raises(constraint.ConstraintError) as e:
        constraint.make_spec(kind, value)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith(f"inference.constraint.{kind}: ")


def test_a_schema_file_and_a_yaml_mapping(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"type": "integer"}')
    assert constraint.make_spec("json_schema", str(path)).schema == {"type": "integer"}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("inference:\n  constraint:\n    json_schema: {type: object, required: [a]}\n")
    cfg = load_config(cfg_file)
    spec = constraint.from_config(cfg.inference.constraint)
    assert spec.kind == "json_schema" and spec.schema == {"type": "object", "required": ["a"]}


def test_config_allows_one_constraint():
    assert constraint.from_config(ConstraintConfig()) is None
    with pytest.raises(ConfigError, match="not both json_object and regex"):
        load_config(None, {"inference.constraint.json_object": True, "inference.constraint.regex": "a"})


def test_a_50_property_schema_compiles_fast(btok):
    schema = {"type": "object", "properties": {f"p{i}": {"type": ["string", "integer", "boolean"][i % 3]}
                                               for i in range(50)}, "required": [f"p{i}" for i in range(50)]}
    g = grammar(btok, "json_schema", json.dumps(schema))
    assert g.compile_ms < 50, g.compile_ms  # the bound (a generous one on a shared machine)


def test_mlx_mask_equals_numpy_mask(btok):
    mx = pytest.importorskip("mlx.core")
    from mlxgen.backends.mlx_sampling import MLX

    g = grammar(btok, "json_object", True)
    logits = np.random.default_rng(0).normal(size=g.vocab_size).astype(np.float32)
    a, b = g.matcher(NUMPY), g.matcher(MLX)
    for token in [ord("{"), ord('"'), ord("k"), ord('"'), ord(":")]:
        na, nb = a(None, logits), np.array(b(None, mx.array(logits)))
        assert np.array_equal(na, nb)
        a.accept(token)
        b.accept(token)


def test_mlx_sampler_under_a_constraint_draws_what_numpy_draws(btok):
    pytest.importorskip("mlx.core")
    from mlxgen.backends.mlx_sampling import MLX

    g = grammar(btok, "regex", r"[a-z]{4,8}")
    rng = np.random.default_rng(1)
    rows = [rng.normal(size=g.vocab_size).astype(np.float32) for _ in range(12)]
    out = {}
    for ops in (NUMPY, MLX):
        done, _, _ = generate_with(btok, g, lambda k: rows[k % 12], params=SamplingParams(temperature=0.9, seed=7),
                                   ops=ops, pipelined=ops is MLX)
        out[ops.name] = done.tokens
    assert out["numpy"] == out["mlx"] and re.fullmatch(r"[a-z]{4,8}", bytes(out["numpy"]).decode())


def test_pipelined_backends_get_the_next_step_before_the_token_is_accepted():
    """On MLX the step for token n is queued (lazily) before token n is read and accepted:
    only the sampling of n+1 waits for the constraint, not the forward pass."""
    log: list[str] = []

    class Logged(FakeBackend):
        def step(self, token):
            log.append(f"step {int(token)}")
            return super().step(token)

    class Spy:
        needs_history = False

        def __call__(self, history, logits):
            log.append("mask")
            return logits

        def accept(self, token):
            log.append(f"accept {token}")

        def rollback(self, n):
            pass

    backend = Logged([1, 2, 3], vocab_size=10, pipelined=True)
    backend.schedule = lambda lazy: log.append("schedule")
    sample = make_sampler(SamplingParams(temperature=0), processors=[Spy()])
    run(generate(backend, PROMPT, sample, lambda ids: "x" * len(ids), max_tokens=3))
    assert log == ["mask", "step 1", "schedule", "accept 1", "mask", "step 2", "schedule", "accept 2", "mask",
                   "accept 3"]


# ------------------------------------------------------------------ the server's response_format


def test_response_format_shapes_map_to_specs():
    from mlxgen.openai_api import ApiError, parse_response_format

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert parse_response_format(None) is None and parse_response_format({"type": "text"}) is None
    assert parse_response_format({"type": "json_object"}).kind == "json_object"
    openai_shape = parse_response_format({"type": "json_schema", "json_schema": {"name": "a", "schema": schema,
                                                                                  "strict": True}})
    assert openai_shape.kind == "json_schema" and openai_shape.schema == schema
    assert parse_response_format({"type": "json_object", "schema": schema}).schema == schema  # llama-server's
    for bad, words in [({"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}, "objekt"),
                       ({"type": "json_schema", "json_schema": {"schema": "schema.json"}}, "as an object"),
                       ({"type": "json_schema", "json_schema": {"name": 1, "schema": schema}}, "name"),
                       ({"type": "json_schema", "json_schema": {"schema": schema, "strict": "yes"}}, "strict"),
                       ({"type": "json_schema"}, "json_schema"), ({"type": "grammar"}, "'grammar'"),
                       ({"type": "json_object", "schema": []}, "schema"), ("json", "an object")]:
        with pytest.raises(ApiError) as e:
            parse_response_format(bad)
        assert e.value.status == 400 and e.value.param == "response_format" and words in e.value.message, bad
