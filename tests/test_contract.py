"""The backend contract: a third backend registered from here runs `mlxgen run` and
`mlxgen bench` end to end; capabilities are checked one way; processors plug in;
the prompt cache reuses prefixes for any caller.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FakeBackend, greedy, run
from mlxgen import backends
from mlxgen.backends import BackendInfo, Fit
from mlxgen.backends.base import Backend, Cached, Chunked, Extend, Measured, NativeStream, Pipelined, State, Verify
from mlxgen.loop import generate
from mlxgen.prompt_cache import PromptCache
from mlxgen.sampling import NUMPY, SamplingParams, make_sampler

LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ------------------------------------------------------------------ a third backend


class ToyBackend:
    """A 'model' that continues the alphabet: after a letter comes the next one, after z the EOS."""

    name = "toy"
    device = "cpu (toy)"

    def __init__(self, tokenizer, n_ctx: int) -> None:
        self.tok, self.n_ctx = tokenizer, n_ctx
        self.vocab_size = tokenizer.vocab_size
        self.cache: list[int] = []
        self.eos = tokenizer.token_id("</s>")

    def _logits(self) -> np.ndarray:
        last = self.tok.decode([self.cache[-1]])
        nxt = LETTERS.index(last) + 1 if last in LETTERS else 0
        target = self.tok.token_id(LETTERS[nxt]) if nxt < len(LETTERS) else self.eos
        logits = np.full(self.vocab_size, -10.0, dtype=np.float32)
        logits[target] = 10.0
        return logits

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self.cache += [int(i) for i in ids]
        return self._logits()

    def step(self, token: int) -> np.ndarray:
        self.cache.append(int(token))
        return self._logits()

    def trim(self, n_tokens: int) -> None:
        del self.cache[n_tokens:]

    def close(self) -> None:
        self.cache = []


def _toy_tokenizer_files(folder: Path) -> Path:
    """A byte-level tokenizer.json (256 single-byte tokens, no merges) and an EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["</s>", "<|im_end|>"])  # the default preset names <|im_end|> as an EOS
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return folder


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Register the toy backend the way a new backend would: a module and a registry entry."""
    from mlxgen.tokenizer import HFTokenizer

    weights = _toy_tokenizer_files(tmp_path)
    module = types.ModuleType("mlxgen_toy_backend")
    module.prepare = lambda cfg: weights
    module.load = lambda w, cfg, choice: ToyBackend(HFTokenizer.from_json(w / "tokenizer.json"), cfg.llm.n_ctx)
    module.doctor_rows = lambda: [("toy", "1.0")]
    monkeypatch.setitem(sys.modules, "mlxgen_toy_backend", module)
    info = BackendInfo(
        name="toy",
        module="mlxgen_toy_backend",
        requires=(),
        extra="toy",
        fit=lambda facts: Fit(-1, "the toy backend runs anywhere"),
        describe_model=lambda cfg: f"toy alphabet in {weights}",
        open_tokenizer=lambda cfg, w: HFTokenizer.from_json((w or weights) / "tokenizer.json"),
        libraries=("numpy",),
    )
    monkeypatch.setitem(backends.REGISTRY, "toy", info)
    return info


def test_a_third_backend_runs_mlxgen_run_end_to_end(toy):
    result = CliRunner().invoke(
        __import__("mlxgen.cli", fromlist=["cli"]).cli,
        ["run", "d", "--backend", "toy", "--raw", "--temperature", "0", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["text"], data["stop_reason"]) == ("efghijklmnopqrstuvwxyz", "eos")
    assert data["backend"] == "toy"


def test_a_third_backend_shows_in_dry_run_doctor_and_help(toy):
    from mlxgen.cli import cli

    dry = CliRunner().invoke(cli, ["run", "x", "--backend", "toy", "--dry-run"])
    assert dry.exit_code == 0 and "toy alphabet in" in dry.output, dry.output
    doctor = CliRunner().invoke(cli, ["doctor", "--backend", "toy"])
    assert "toy" in doctor.output and "1.0" in doctor.output
    assert "toy" in CliRunner().invoke(cli, ["run", "--help"]).output


def test_a_third_backend_runs_mlxgen_bench_end_to_end(toy):
    from mlxgen.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--backend", "toy", "-p", "8", "-n", "4", "-r", "2", "-o", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {r["backend"] for r in data["results"]} == {"toy"}
    assert {r["test"] for r in data["results"]} == {"pp8", "tg4"}
    assert all(r["avg_ts"] > 0 for r in data["results"])
    assert "numpy" in data["environment"]["libraries"]


def test_an_unregistered_backend_is_one_line(toy):
    from mlxgen.cli import cli

    result = CliRunner().invoke(cli, ["run", "x", "--backend", "nope"])
    assert result.exit_code != 0 and "toy" in result.output  # the choices come from the registry


def test_auto_detection_ranks_every_registered_backend(toy):
    from mlxgen.hardware import Facts, detect

    only_toy = Facts("Linux", "x86_64", frozenset({"toy"}), frozenset(), 4)
    assert detect(only_toy).backend == "toy"
    both = Facts("Linux", "x86_64", frozenset({"toy", "llama.cpp"}), frozenset(), 4)
    assert detect(both).backend == "llama.cpp"  # the toy's fit scores lower


# ------------------------------------------------------------------ capabilities


def test_capabilities_are_protocols_the_real_backends_declare():
    """Each capability is checked with isinstance; the fakes show what each needs."""
    plain = FakeBackend()
    assert isinstance(plain, Backend)
    for cap in (Extend, Chunked, Verify, State, Pipelined, Measured, NativeStream):
        assert not isinstance(plain, cap), cap
    assert isinstance(FakeBackend(pipelined=True), Pipelined)


def members(cap) -> set[str]:
    """A capability Protocol's methods and attributes."""
    names = {n for n in vars(cap) if not n.startswith("_")} | set(getattr(cap, "__annotations__", {}))
    assert names, cap
    return names


def test_real_backend_classes_have_their_capabilities():
    llamacpp = pytest.importorskip("mlxgen.backends.llamacpp")
    for cap in (Cached, Measured, NativeStream):
        assert all(hasattr(llamacpp.LlamaCppBackend, m) for m in members(cap)), cap
    mlx = pytest.importorskip("mlxgen.backends.mlx")
    for cap in (Cached, Extend, Chunked, Pipelined, Measured, NativeStream):
        assert all(hasattr(mlx.MLXBackend, m) for m in members(cap)), cap


def test_numpy_and_mlx_ops_define_the_same_operations():
    mlx_sampling = pytest.importorskip("mlxgen.backends.mlx_sampling")
    assert set(vars(NUMPY)) == set(vars(mlx_sampling.MLX))


# ------------------------------------------------------------------ processors


def ban(token: int, needs_history: bool = False):
    def process(history, logits):
        out = np.array(logits, copy=True)
        out[token] = -np.inf
        return out

    process.needs_history = needs_history
    process.name = f"ban {token}"
    return process


def test_an_extra_processor_changes_the_pick_and_runs_after_the_settings():
    logits = np.array([0.0, 5.0, 4.0, 1.0], dtype=np.float32)
    plain = make_sampler(SamplingParams(temperature=0))
    banned = make_sampler(SamplingParams(temperature=0), processors=[ban(1)])
    assert (plain([], logits), banned([], logits)) == (1, 2)
    penalised = make_sampler(SamplingParams(temperature=0, repetition_penalty=2.0), processors=[ban(1)])
    assert [getattr(p, "name", "") for p in penalised.processors][1] == "ban 1"


def test_a_history_free_processor_keeps_the_lookahead():
    assert not make_sampler(SamplingParams(temperature=0), processors=[ban(1)]).needs_history
    assert make_sampler(SamplingParams(temperature=0), processors=[ban(1, needs_history=True)]).needs_history
    unmarked = lambda history, logits: logits  # noqa: E731  no declaration: assumed to need it
    assert make_sampler(SamplingParams(temperature=0), processors=[unmarked]).needs_history


def test_session_generate_takes_processors_and_stop_strings(tok):
    from mlxgen import chat
    from mlxgen.config import load_config
    from mlxgen.hardware import Choice
    from mlxgen.session import Session

    script = tok.pieces_to_ids("hello world")
    cfg = load_config(None, {"inference.temperature": 0})
    sess = Session(cfg, Choice("fake", "test"), FakeBackend(script, vocab_size=tok.vocab_size), tok, (), chat.PromptSpec(None, "raw"), 0.0)
    *_, done = sess.generate([1], max_tokens=11, stop=["wor"])
    assert (done.text, done.reason) == ("hello ", "stop")
    sess.backend = FakeBackend(script, vocab_size=tok.vocab_size)  # the script from its start
    *_, done = sess.generate([1], max_tokens=3, processors=[ban(ord("e"))])
    assert done.text[0] == "h" and done.text[1] != "e"


def test_logits_inspect_lists_the_whole_chain():
    from mlxgen.logits import inspect

    class Tok:
        def decode(self, ids):
            return "".join(chr(97 + i) for i in ids)

    data = inspect(np.array([0.0, 3.0, 2.0], dtype=np.float32), SamplingParams(temperature=0.5, repetition_penalty=1.5),
                   [0], Tok(), 3, processors=[ban(1)])
    assert data["processors"][0].startswith("repetition_penalty") and data["processors"][1] == "ban 1"
    assert data["top"][0]["sampled"] == 0.0  # token 1 is banned: it cannot be drawn


# ------------------------------------------------------------------ prompt cache


class Holding(FakeBackend):
    @property
    def n_cached(self) -> int:
        return len(self.cache)


def test_prompt_cache_reuses_the_longest_common_prefix():
    backend = Holding(n_ctx=64)
    cache = PromptCache(backend)
    assert cache.prepare([1, 2, 3, 4]) == 0
    backend.prefill([1, 2, 3, 4])
    cache.record([1, 2, 3, 4, 9])
    backend.step(9)
    assert cache.prepare([1, 2, 3, 7, 8]) == 3
    assert backend.cache == [1, 2, 3]
    assert cache.prepare([1, 2, 3]) == 2  # one token is always left to prefill
    cache.reset()
    assert backend.cache == [] and cache.ids == []


def test_prompt_cache_trusts_only_what_the_backend_holds():
    backend = Holding(n_ctx=64)
    cache = PromptCache(backend)
    cache.prepare([1, 2, 3, 4, 5])
    backend.prefill([1, 2])  # an interrupted prefill: only two positions landed
    assert cache.ids == [1, 2]
    assert cache.prepare([1, 2, 3, 9]) == 2


def test_a_backend_that_cannot_count_reuses_nothing():
    backend = FakeBackend(n_ctx=64)
    cache = PromptCache(backend)
    cache.prepare([1, 2, 3])
    backend.prefill([1, 2, 3])
    cache.record([1, 2, 3])
    assert cache.prepare([1, 2, 3, 4]) == 0


def test_session_complete_reuses_across_calls(tok):
    from mlxgen import chat
    from mlxgen.config import load_config
    from mlxgen.hardware import Choice
    from mlxgen.session import Session

    cfg = load_config(None, {"inference.temperature": 0})
    backend = Holding(tok.pieces_to_ids("ab"), vocab_size=tok.vocab_size, n_ctx=64)
    sess = Session(cfg, Choice("fake", "test"), backend, tok, (), chat.PromptSpec(None, "raw"), 0.0)
    *_, first = sess.complete([5, 6, 7], max_tokens=2)
    *_, second = sess.complete([5, 6, 7, 8, 9], max_tokens=2)
    assert (first.stats.cached_tokens, second.stats.cached_tokens) == (0, 3)
    assert backend.prefilled == [5, 6, 7, 8, 9]
