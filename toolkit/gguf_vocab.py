"""A Hugging Face ``tokenizers`` tokenizer built from a GGUF file's vocabulary.

A GGUF carries its tokenizer as metadata (``tokenizer.ggml.*``). For byte-level BPE
models (``tokenizer.ggml.model == "gpt2"``: SmolLM, Qwen, Llama 3, ...) this module
rebuilds the same tokenizer llama.cpp runs: the vocabulary and merges, the
pre-tokenizer regexes llama.cpp uses for the model's ``tokenizer.ggml.pre`` type, and
its control tokens as special tokens. The ids match llama.cpp's tokenizer
(``tests/test_tokenizer_parity.py`` checks a varied corpus).

Reading 50k strings through ``gguf.GGUFReader`` takes a second or two, so the result
is cached as a tokenizer.json keyed by the file's identity.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlxgen.cache import atomic_dir, cache_root
from mlxgen.errors import ModelError

# llama.cpp's pre-tokenizer regexes (llama-vocab.cpp), per tokenizer.ggml.pre.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt-2": [GPT2],
    "llama-bpe": [LLAMA3],
    "llama3": [LLAMA3],
    "dbrx": [LLAMA3],
    "smaug-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "qwen35": [QWEN2],
    "deepseek-r1-qwen": [QWEN2],
    "smollm": [r"\p{N}", GPT2],
    "starcoder": [r"\p{N}", GPT2],
    "refact": [r"\p{N}", GPT2],
    "codeshell": [r"\p{N}", GPT2],
}
CONTROL, USER_DEFINED = 3, 4
CACHE_VERSION = "v1"


@dataclass
class GGUFVocab:
    tokenizer: "tokenizers.Tokenizer"  # noqa: F821
    model: str
    pre: str
    add_bos: bool
    bos_id: int | None
    eos_ids: tuple[int, ...]
    chat_template: str | None
    special: dict[str, str] = field(default_factory=dict)


def read(path: str | Path, reader=None) -> GGUFVocab:
    """The tokenizer and its settings for a GGUF file (cached after the first build)."""
    from tokenizers import Tokenizer

    path = Path(path)
    cached = _cache_dir(path)
    meta_file, tok_file = cached / "meta.json", cached / "tokenizer.json"
    if meta_file.is_file() and tok_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            return GGUFVocab(Tokenizer.from_file(str(tok_file)), **_meta_from_json(meta))
        except Exception:  # a damaged cache entry is rebuilt below
            pass
    vocab = build(reader if reader is not None else open_reader(path), path)
    _store(cached, vocab)
    return vocab


def open_reader(path: Path):
    """``gguf.GGUFReader`` on a file ``mlxgen.gguf_check`` has checked first (it trusts every count)."""
    import gguf

    from mlxgen.gguf_check import check

    check(path)
    try:
        return gguf.GGUFReader(str(path))
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
    except Exception as e:  # anything the structural check does not cover
        raise ModelError(f"{path}: not a valid GGUF file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def field_value(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except (UnicodeDecodeError, ValueError, IndexError) as e:
        raise ModelError(f"GGUF metadata {key} cannot be read ({type(e).__name__}: {_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def build(reader, path: str | Path | None = None) -> GGUFVocab:
    """The tokenizer from an open reader; every problem is a ``ModelError`` naming the file."""
    try:
        return _build(reader)
    except ModelError as e:
        if path is None or str(e).startswith(str(path)):
            raise
        raise ModelError(f"{path}: {e}") from None


def _build(reader) -> GGUFVocab:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    model = field_value(reader, "tokenizer.ggml.model")
    if model is None:
        raise ModelError("the GGUF has no tokenizer metadata (tokenizer.ggml.model); set tokenizer.repo or tokenizer.path")
    if model != "gpt2":
        raise ModelError(
            f"GGUF tokenizer model {model!r} is not supported yet (only byte-level BPE, 'gpt2'); "
            "set tokenizer.repo or tokenizer.path to the model's tokenizer.json"
        )
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise ModelError(
            f"GGUF pre-tokenizer {pre!r} is not supported yet (known: {', '.join(sorted(PRE_TOKENIZERS))}); "
            "set tokenizer.repo or tokenizer.path to the model's tokenizer.json"
        )
    tokens = _list_of(reader, "tokenizer.ggml.tokens", str, None)
    if not tokens:
        raise ModelError("GGUF metadata tokenizer.ggml.tokens is missing or empty")
    types = _list_of(reader, "tokenizer.ggml.token_type", int, [1] * len(tokens))
    if len(types) != len(tokens):
        raise ModelError(
            f"GGUF metadata tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    merges = [tuple(m.split(" ", 1)) for m in _list_of(reader, "tokenizer.ggml.merges", str, [])]
    if any(len(m) != 2 for m in merges):
        raise ModelError("GGUF metadata tokenizer.ggml.merges has an entry without a space ('a b' expected)")
    try:
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=False)
    except Exception as e:  # tokenizers raises a bare Exception (e.g. a merge of unknown tokens)
        raise ModelError(f"GGUF tokenizer cannot be built from its metadata ({_first_line(e)})") from None
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [
        AddedToken(tokens[i], special=(t == CONTROL), normalized=False)
        for i, t in enumerate(types)
        if t in (CONTROL, USER_DEFINED)
    ]
    tok.add_tokens(specials)  # ids are already in the vocabulary, so they keep them

    def token_id(key: str) -> int | None:
        value = field_value(reader, key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelError(f"GGUF metadata {key} is {_kind(value)}, not a token id")
        return value if 0 <= value < len(tokens) else None

    bos_id = token_id("tokenizer.ggml.bos_token_id")
    eos_ids = tuple(
        dict.fromkeys(
            i
            for i in (token_id(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom"))
            if i is not None
        )
    )
    special = {}
    if bos_id is not None:
        special["bos_token"] = tokens[bos_id]
    if eos_ids:
        special["eos_token"] = tokens[eos_ids[0]]
    return GGUFVocab(
        tokenizer=tok,
        model=model,
        pre=pre,
        add_bos=bool(field_value(reader, "tokenizer.ggml.add_bos_token", False)),
        bos_id=bos_id,
        eos_ids=eos_ids,
        chat_template=_text_or_none(reader, "tokenizer.chat_template"),
        special=special,
    )


def _kind(value) -> str:
    return {str: "a string", list: "an array", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _list_of(reader, key: str, kind: type, default):
    value = field_value(reader, key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        want = "strings" if kind is str else "integers"
        raise ModelError(f"GGUF metadata {key} is {_kind(value)}, not an array of {want}")
    return value


def _text_or_none(reader, key: str) -> str | None:
    value = field_value(reader, key)
    if value is not None and not isinstance(value, str):
        raise ModelError(f"GGUF metadata {key} is {_kind(value)}, not a string")
    return value


# ----------------------------------------------------------------- the cache


def _cache_dir(path: Path) -> Path:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_root() / "gguf-vocab" / CACHE_VERSION / key


def _meta_from_json(meta: dict) -> dict:
    meta = dict(meta)
    meta["eos_ids"] = tuple(meta["eos_ids"])
    return meta


def _store(folder: Path, vocab: GGUFVocab) -> None:
    """Write the cache entry atomically: a temp folder renamed into place."""
    meta = {
        "model": vocab.model,
        "pre": vocab.pre,
        "add_bos": vocab.add_bos,
        "bos_id": vocab.bos_id,
        "eos_ids": list(vocab.eos_ids),
        "chat_template": vocab.chat_template,
        "special": vocab.special,
    }
    try:
        with atomic_dir(folder) as tmp:
            vocab.tokenizer.save(str(tmp / "tokenizer.json"))
            (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    except OSError:
        pass  # a read-only or contended cache only costs time
