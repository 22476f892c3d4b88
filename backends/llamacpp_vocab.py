"""llama.cpp's own tokenizer, behind mlxgen's tokenizer interface.

The vocabulary is read from the GGUF by llama.cpp itself (a vocab-only load: no
weights, a few milliseconds), and ``llama_tokenize`` / ``llama_token_to_piece`` do the
work, so the ids are llama.cpp's for every vocabulary it supports (SentencePiece, BPE
with any pre-tokenizer, WordPiece, Unigram, RWKV, ...), now and in later versions.
The special tokens, BOS and ``add_bos``, the end-of-generation set and the chat
template are the ones llama.cpp reads from the same file.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import llama_cpp
from llama_cpp import _internals

from mlxgen import gguf_check
from mlxgen.cache import atomic_write_text, cache_root
from mlxgen.errors import ModelError
from mlxgen.tokenizer import Span, resolve_eos

ATTR_CONTROL = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
SPECIAL_ATTRS = ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
VOCAB_TYPES = {1: "spm", 2: "bpe", 3: "wpm", 4: "ugm", 5: "rwkv", 6: "plamo2"}
# Pre-tokenizers whose regexes always start a piece after a newline between two non-blank
# characters (and never take one across it), so a text cut there gives the same ids.
CHUNKABLE_PRE = {"default", "gpt-2", "llama-bpe", "llama3", "dbrx", "smaug-bpe", "qwen2", "qwen35",
                 "deepseek-r1-qwen", "smollm", "starcoder", "refact", "codeshell", "falcon", "mpt",
                 "command-r", "deepseek-llm", "deepseek-coder"}


def open(path: str | Path) -> "LlamaCppTokenizer":  # noqa: A001 - the registry calls module.open(path)
    """The tokenizer of a GGUF file, checked first as the backend checks it (llama.cpp aborts on some damage)."""
    path = Path(path)
    marker = _checked_marker(path)
    if marker is None or not marker.is_file():
        gguf_check.check_model(path, gguf_check.check(path))
        if marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(marker, "")
            except OSError:
                pass  # a read-only cache only costs the check next time
    return LlamaCppTokenizer(path)


def _checked_marker(path: Path) -> Path | None:
    """A file in the cache saying this file (same path, size and mtime) passed the check."""
    try:
        st = path.stat()
    except OSError:
        return None  # the check says what is wrong
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_root() / "gguf-checked" / key


class LlamaCppTokenizer:
    """``llama_tokenize`` and ``llama_token_to_piece`` on a vocab-only load of the GGUF."""

    def __init__(self, path: Path):
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"{path}: llama.cpp cannot load this model ({e})") from None  # as the backend says it
        model = self._model.model
        self._pieces: dict[int, bytes] = {}
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        v = self._vocab
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(v)
        self.kind = VOCAB_TYPES.get(llama_cpp.llama_vocab_type(v), "none")
        self.pre = _meta(model, "tokenizer.ggml.pre") or ""
        self.source = f"{path} (llama.cpp's tokenizer, {self.kind}{' / ' + self.pre if self.pre else ''})"
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(v))
        self.bos_id = _token_or_none(llama_cpp.llama_vocab_bos(v), self._n_vocab)
        self._attrs = [llama_cpp.llama_vocab_get_attr(v, i) for i in range(self._n_vocab)]
        named = [_token_or_none(f(v), self._n_vocab) for f in (llama_cpp.llama_vocab_eos, llama_cpp.llama_vocab_eot)]
        eog = [i for i in named if i is not None and llama_cpp.llama_vocab_is_eog(v, i)]
        eog += [i for i, a in enumerate(self._attrs) if a & SPECIAL_ATTRS and llama_cpp.llama_vocab_is_eog(v, i)]
        self.eos_ids = tuple(dict.fromkeys(eog))
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8", "replace") if template else None
        self.special = {}
        if self.bos_id is not None:
            self.special["bos_token"] = self.token_bytes(self.bos_id).decode("utf-8", "replace")
        if self.eos_ids:
            self.special["eos_token"] = self.token_bytes(self.eos_ids[0]).decode("utf-8", "replace")
        self.chunkable = self.kind == "bpe" and self.pre in CHUNKABLE_PRE

    # ------------------------------------------------------------ the interface
    @property
    def vocab_size(self) -> int:
        return self._n_vocab

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        ids = self._tokenize(text.encode("utf-8", "surrogatepass"), special)
        if bos and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def encode_spans(self, texts: Sequence[str], offsets: bool = True) -> list[tuple[list[int], list[Span]]]:
        work = self._with_spans if offsets else (lambda t: (self._tokenize(t.encode("utf-8"), True), []))
        if len(texts) < 2:
            return [work(t) for t in texts]
        with ThreadPoolExecutor(max_workers=min(len(texts), os.cpu_count() or 1)) as pool:  # ctypes drops the GIL
            return list(pool.map(work, texts))

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece(token)
        return piece

    def token_id(self, token: str) -> int | None:
        ids = self._tokenize(token.encode("utf-8"), True)
        return ids[0] if len(ids) == 1 and self.token_bytes(ids[0]) == token.encode("utf-8") else None

    def special_ids(self) -> frozenset[int]:
        return frozenset(i for i, a in enumerate(self._attrs) if a & ATTR_CONTROL)

    def resolve_eos(self, names: Iterable[str]) -> tuple[int, ...]:
        return resolve_eos(self, names)

    # ------------------------------------------------------------ llama.cpp calls
    def _tokenize(self, data: bytes, special: bool) -> list[int]:
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        if n < 0:  # more tokens than bytes (added prefix spaces): the exact size asked for
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, False, special)
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        if not 0 <= token < self._n_vocab:
            raise ValueError(f"token id {token} is outside the vocabulary (0..{self._n_vocab - 1})")
        size = 32
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, True)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _with_spans(self, text: str) -> tuple[list[int], list[Span]]:
        """The ids of ``text`` and each token's character span, from its bytes.

        A token's bytes are counted from where the previous one ended; what llama.cpp
        adds that the text does not hold (a SentencePiece prefix space) is clamped to
        the text, so spans are exact for byte-level BPE and close for the rest.
        """
        ids = self._tokenize(text.encode("utf-8"), True)
        ends, total = [], 0
        for i in ids:
            total += len(self.token_bytes(i))
            ends.append(total)
        data = text.encode("utf-8")
        excess = max(0, total - len(data))  # bytes llama.cpp added (prefix spaces)
        char_at = _byte_to_char(text)
        spans, start = [], 0
        for end in ends:
            end = min(max(end - excess, 0), len(data))
            spans.append((char_at[start], char_at[end]))
            start = end
        return ids, spans

    def close(self) -> None:
        model, self._model = getattr(self, "_model", None), None
        if model is not None:
            model.close()


def _byte_to_char(text: str) -> list[int]:
    """For every byte offset 0..len(utf8) the character offset it falls in (rounded down)."""
    if len(text) == len(text.encode("utf-8")):
        return list(range(len(text) + 1))
    out = []
    for ci, ch in enumerate(text):
        out += [ci] * len(ch.encode("utf-8"))
    out.append(len(text))
    return out


def _token_or_none(token: int, n_vocab: int) -> int | None:
    return token if 0 <= token < n_vocab else None


def _meta(model, key: str) -> str | None:
    buf = ctypes.create_string_buffer(256)
    n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, 256)
    return buf.value.decode("utf-8", "replace") if n >= 0 else None
