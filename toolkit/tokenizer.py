"""The tokenizer interface, and its Hugging Face ``tokenizers`` implementation.

Every part of mlxgen that turns text into ids or ids into text (the loop's streaming,
stop strings, chat templates, ``tokens``, ``logits``, ``--logprobs``) talks to a
:class:`Tokenizer`. Two implementations exist:

- :class:`HFTokenizer` here: a ``tokenizer.json`` (a repo, a path, an MLX folder) or a
  GGUF's vocabulary rebuilt with ``tokenizers`` (``mlxgen.gguf_vocab``), for the MLX
  backend and machines without llama.cpp;
- ``mlxgen.backends.llamacpp_vocab.LlamaCppTokenizer``: llama.cpp's own tokenizer on
  the GGUF, exact by construction, used on the llama.cpp backend.

Text is decoded by joining the tokens' bytes (no space stripped, no clean-up), so a
window of ids decodes to the same text wherever it starts, and bytes of an unfinished
UTF-8 character decode to U+FFFD, which the incremental decoder holds back.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Protocol, Sequence, runtime_checkable

from mlxgen.errors import ConfigError, ModelError, first_line

Span = tuple[int, int]  # character offsets [start, end) in the encoded text


@runtime_checkable
class Tokenizer(Protocol):
    source: str  # where it came from, for messages
    add_bos: bool  # encode() puts bos_id first
    bos_id: int | None
    eos_ids: tuple[int, ...]  # every end-of-generation id the model's files name
    chat_template: str | None  # the model's own Jinja template
    special: dict[str, str]  # bos_token / eos_token strings for templates
    chunkable: bool  # cutting a text at a newline between two non-blank characters changes no id

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        """Token ids; with ``special`` the special tokens written in the text are parsed as such."""

    def encode_spans(self, texts: Sequence[str], offsets: bool = True) -> list[tuple[list[int], list[Span]]]:
        """``encode(t, bos=False)`` of each text, with each token's character span if ``offsets``."""

    def decode(self, ids: Sequence[int]) -> str:
        """The tokens' bytes joined, as UTF-8 (U+FFFD for incomplete characters)."""

    def token_bytes(self, token: int) -> bytes:
        """One token's bytes (a special token's own text)."""

    def token_id(self, token: str) -> int | None:
        """The id of the token whose text is exactly ``token`` (``<|im_end|>``), or None."""

    def special_ids(self) -> frozenset[int]:
        """Control tokens: what ``tokens --show`` marks as special."""

    def resolve_eos(self, names: Iterable[str]) -> tuple[int, ...]:
        """The model's EOS ids plus the named ones; a name not in the vocabulary is an error."""


def resolve_eos(tok: Tokenizer, names: Iterable[str]) -> tuple[int, ...]:
    ids = list(tok.eos_ids)
    for name in names:
        tid = tok.token_id(name)
        if tid is None:
            raise ConfigError(
                f"tokenizer.eos_token: {name!r} is not in the model's vocabulary ({tok.source}); "
                "without it generation would never stop on it"
            )
        ids.append(tid)
    return tuple(dict.fromkeys(ids))


def from_json(path: str | Path) -> "HFTokenizer":
    return HFTokenizer.from_json(path)


def from_gguf(path: str | Path, reader=None) -> "HFTokenizer":
    return HFTokenizer.from_gguf(path, reader)


@dataclass
class HFTokenizer:
    hf: "tokenizers.Tokenizer"  # noqa: F821
    add_bos: bool = False
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()  # the model's own EOS ids
    chat_template: str | None = None
    special: dict[str, str] = field(default_factory=dict)  # bos_token / eos_token strings for templates
    source: str = ""

    # ------------------------------------------------------------ loading
    @classmethod
    def from_json(cls, path: str | Path) -> "HFTokenizer":
        """A tokenizer.json, with tokenizer_config.json / generation_config.json beside it if present."""
        from tokenizers import Tokenizer as HF

        path = Path(path)
        try:
            hf = HF.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"{path}: not a readable tokenizer.json ({first_line(e)})") from None
        cfg = _read_json(path.with_name("tokenizer_config.json"))
        gen = _read_json(path.with_name("generation_config.json"))
        special = {k: _token_str(cfg.get(k)) for k in ("bos_token", "eos_token") if _token_str(cfg.get(k))}
        with_special = hf.encode("a", add_special_tokens=True).ids
        plain = hf.encode("a", add_special_tokens=False).ids
        bos_id = hf.token_to_id(special["bos_token"]) if "bos_token" in special else None
        add_bos = len(with_special) > len(plain) and with_special[0] != plain[0]
        if add_bos:
            bos_id = with_special[0]
        eos: list[int] = []
        gen_eos = gen.get("eos_token_id")
        eos += gen_eos if isinstance(gen_eos, list) else [gen_eos] if isinstance(gen_eos, int) else []
        if "eos_token" in special and hf.token_to_id(special["eos_token"]) is not None:
            eos.append(hf.token_to_id(special["eos_token"]))
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{name, template}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja = path.with_name("chat_template.jinja")
        if template is None and jinja.is_file():
            template = jinja.read_text(encoding="utf-8")
        return cls(hf, add_bos, bos_id, tuple(dict.fromkeys(eos)), template, special, str(path))

    @classmethod
    def from_gguf(cls, path: str | Path, reader=None) -> "HFTokenizer":
        from mlxgen import gguf_vocab

        vocab = gguf_vocab.read(path, reader)
        return cls(
            vocab.tokenizer,
            vocab.add_bos,
            vocab.bos_id,
            vocab.eos_ids,
            vocab.chat_template,
            vocab.special,
            f"{path} (GGUF vocabulary, {vocab.model} / {vocab.pre})",
        )

    # ------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def chunkable(self) -> bool:
        return hf_chunkable(self.hf)

    def encode(self, text: str, bos: bool = True, special: bool = True) -> list[int]:
        if special:
            ids = [i for part in _rstrip_parts(self.hf, text) for i in self.hf.encode(part, add_special_tokens=False).ids]
        else:
            ids = _plain(self.hf).encode(text, add_special_tokens=False).ids
        if bos and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def encode_spans(self, texts: Sequence[str], offsets: bool = True) -> list[tuple[list[int], list[Span]]]:
        parts = [_rstrip_parts(self.hf, t) for t in texts]
        flat = [p for ps in parts for p in ps]
        done = iter(self.hf.encode_batch(flat, add_special_tokens=False))
        out = []
        for ps in parts:
            ids, spans, base = [], [], 0
            for p in ps:
                e = next(done)
                ids += e.ids
                spans += [(a + base, b + base) for a, b in e.offsets]
                base += len(p)
            out.append((ids, spans))
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token: int) -> bytes:
        return _piece_bytes(self.hf, self.hf.id_to_token(token) or "", token)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def special_ids(self) -> frozenset[int]:
        try:
            return frozenset(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)
        except AttributeError:  # an old tokenizers
            return frozenset()

    def resolve_eos(self, names: Iterable[str]) -> tuple[int, ...]:
        return resolve_eos(self, names)


# ------------------------------------------------------------------ helpers


@functools.lru_cache(maxsize=4)
def hf_chunkable(hf) -> bool:
    """Byte-level pre-tokenizing and no normalizer: cutting at the boundaries changes no id."""
    spec = json.loads(hf.to_str())
    pre = json.dumps(spec.get("pre_tokenizer"))
    prefix_space = re.search(r'"add_prefix_space": true', pre) is not None  # would add a space to every chunk
    return spec.get("normalizer") is None and "ByteLevel" in pre and "Metaspace" not in pre and not prefix_space


ASCII_SPACE = " \t\n\r\x0b\x0c"  # what llama.cpp's isspace() strips after a token marked rstrip


def _rstrip_parts(hf, text: str) -> list[str]:
    """``text`` cut where llama.cpp's rstrip and ``tokenizers``' differ, else ``[text]``.

    After a special token marked rstrip (Phi-3's), llama.cpp drops ASCII whitespace only,
    ``tokenizers`` any Unicode whitespace. Cutting right after the ASCII run makes
    ``tokenizers`` stop there; the rest starts a new run of text, as it does in llama.cpp.
    """
    pattern = _rstrip_pattern(hf)
    if pattern is None or not any(c.isspace() and c not in ASCII_SPACE for c in text):
        return [text]
    cuts = [m.end() for m in pattern.finditer(text)]
    return [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)]) if b > a] or [text]


@functools.lru_cache(maxsize=4)
def _rstrip_pattern(hf):
    try:
        marked = [t.content for t in hf.get_added_tokens_decoder().values() if t.rstrip]
    except AttributeError:
        return None
    if not marked:
        return None
    alts = "|".join(re.escape(t) for t in sorted(marked, key=len, reverse=True))
    return re.compile(f"(?:{alts})[{re.escape(ASCII_SPACE)}]*(?=[^\\S{re.escape(ASCII_SPACE)}])")


@functools.lru_cache(maxsize=4)
def _plain(hf):
    """A copy of ``hf`` that reads special tokens written in the text as plain text.

    User-defined tokens still match (llama.cpp matches them without special parsing too).
    """
    from tokenizers import Tokenizer as HF

    copy = HF.from_str(hf.to_str())
    copy.encode_special_tokens = True
    return copy


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: piece character -> byte."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars, n = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _piece_bytes(hf, piece: str, token: int) -> bytes:
    """A vocabulary entry's bytes: GPT-2 byte-level, SentencePiece (``▁``, ``<0xNN>``), or as it is."""
    added = _added(hf)
    if token in added:
        return piece.encode("utf-8")
    m = _BYTE_TOKEN.fullmatch(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    table = byte_decoder()
    if _byte_level(hf) and all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return piece.replace("\u2581", " ").encode("utf-8")


@functools.lru_cache(maxsize=4)
def _added(hf) -> frozenset[int]:
    try:
        return frozenset(hf.get_added_tokens_decoder())
    except AttributeError:
        return frozenset()


@functools.lru_cache(maxsize=4)
def _byte_level(hf) -> bool:
    return "ByteLevel" in json.dumps(json.loads(hf.to_str()).get("decoder"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised
        value = value.get("content")
    return value if isinstance(value, str) and value else None
