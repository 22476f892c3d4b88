"""llama.cpp's own tokenizer test suite and its real chat templates, from the llama-cpp-python sdist.

Fetched once into a cache (scripts/llamacpp_suite.py: ~/.cache/mlxgen-test, keyed by
version; MLXGEN_LLAMA_SDIST names a local sdist instead); skipped with the reason when
that is not possible. Like llama.cpp's test-tokenizer-0: no BOS, no special-token parsing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import llamacpp_suite as suite  # noqa: E402

from mlxgen.errors import ModelError  # noqa: E402

VOCABS = ["bert-bge", "command-r", "deepseek-coder", "deepseek-llm", "falcon", "gemma-4", "gpt-2", "llama-bpe",
          "llama-spm", "mpt", "phi-3", "qwen2", "qwen35", "refact", "starcoder"]
MUST_REBUILD = set(VOCABS) - {"bert-bge"}  # WordPiece is refused: llama.cpp's Unicode tables differ from Bert's


@pytest.fixture(scope="module")
def root():
    path, why = suite.fetch()
    if path is None:
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def vocabs(root):
    return {v.name: v for v in suite.vocabularies(root)}


def vocab(vocabs, name):
    if name not in vocabs:
        pytest.skip(f"{name}: not in this llama-cpp-python version's suite")
    return vocabs[name]


def test_the_suite_is_complete(vocabs):
    assert sorted(vocabs) == VOCABS
    assert sum(len(v.cases) for v in vocabs.values()) == 708


@pytest.mark.parametrize("name", VOCABS)
def test_llamacpp_tokenizer_passes_every_case(vocabs, name):
    pytest.importorskip("llama_cpp")
    from mlxgen.backends import llamacpp_vocab

    v = vocab(vocabs, name)
    tok = llamacpp_vocab.open(v.gguf)
    good, bad = suite.score(tok, v)
    assert bad == [] and good == len(v.cases)
    for text, want in v.cases[:8]:  # and the bytes decode back to the text (BPE: exactly)
        if tok.kind == "bpe" and name != "gemma-4":
            assert tok.decode(want) == text


@pytest.mark.parametrize("name", VOCABS)
def test_rebuilt_tokenizer_is_exact_or_refuses(vocabs, name, tmp_path, monkeypatch):
    """Every case equal to llama.cpp's, or one line naming the vocabulary; the settings as llama.cpp reads them."""
    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    from mlxgen.tokenizer import HFTokenizer

    v = vocab(vocabs, name)
    try:
        tok = HFTokenizer.from_gguf(v.gguf)
    except ModelError as e:
        assert name not in MUST_REBUILD, str(e)
        assert "\n" not in str(e) and "cannot be rebuilt exactly" in str(e) and "--backend llama.cpp" in str(e)
        return
    good, bad = suite.score(tok, v)
    assert bad == [] and good == len(v.cases)
    llama_cpp = pytest.importorskip("llama_cpp")
    assert llama_cpp
    from mlxgen.backends import llamacpp_vocab

    theirs = llamacpp_vocab.open(v.gguf)
    assert (tok.add_bos, tok.bos_id, set(tok.eos_ids), tok.chat_template, tok.special) == (
        theirs.add_bos, theirs.bos_id, set(theirs.eos_ids), theirs.chat_template, theirs.special)
    ids = sorted({i for _, want in v.cases for i in want})
    assert [tok.token_bytes(i) for i in ids] == [theirs.token_bytes(i) for i in ids]
    # beyond the suite: random multilingual texts, with and without special-token parsing
    assert suite.differences(tok, theirs, suite.random_texts(1, 100)) == []


def test_llama3_vietnamese_is_one_piece(vocabs, tmp_path, monkeypatch):
    """The case the old rebuild got wrong without a word: llama.cpp takes a whole-token piece before merging."""
    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    from mlxgen.tokenizer import HFTokenizer

    tok = HFTokenizer.from_gguf(vocab(vocabs, "llama-bpe").gguf)
    assert tok.encode("Cửa Việt", bos=False, special=False) == [34, 91163, 101798]


def test_every_template_renders(root):
    """A system + user + assistant + user conversation with a generation prompt, through mlxgen's Jinja."""
    paths = suite.templates(root)
    assert len(paths) >= 70
    failed = []
    for p in paths:
        try:
            text = suite.render_template(p.read_text(encoding="utf-8"))
            if suite.TURNS[-1]["content"] not in text:
                failed.append(f"{p.name}: the last user message is missing")
        except Exception as e:  # noqa: BLE001 - collect them all
            failed.append(f"{p.name}: {type(e).__name__}: {e}")
    assert failed == [], f"{len(paths) - len(failed)}/{len(paths)} render:\n" + "\n".join(failed)


@pytest.mark.parametrize("which", ["rebuilt", "llama.cpp"])
def test_sentencepiece_streams_whole_characters(vocabs, which, tmp_path, monkeypatch):
    """Byte-fallback pieces (<0xF0>...) are held back until the character is whole; spaces are kept."""
    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path))
    from mlxgen.streaming import IncrementalDecoder
    from mlxgen.tokenizer import HFTokenizer

    v = vocab(vocabs, "llama-spm")
    if which == "rebuilt":
        tok = HFTokenizer.from_gguf(v.gguf)
    else:
        pytest.importorskip("llama_cpp")
        from mlxgen.backends import llamacpp_vocab

        tok = llamacpp_vocab.open(v.gguf)
    text = "Hello 🙂 world, 你好  twice"
    ids = tok.encode(text, bos=False)
    assert len([i for i in ids if len(tok.token_bytes(i)) == 1 and tok.token_bytes(i)[0] >= 0x80]) >= 4
    dec = IncrementalDecoder(tok.decode)
    deltas = [dec.add(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == " " + text  # SentencePiece's prefix space, as llama.cpp's pieces spell it
