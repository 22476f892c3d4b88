"""A Hugging Face ``tokenizers`` tokenizer built from a GGUF file's vocabulary.

A GGUF carries its tokenizer as metadata (``tokenizer.ggml.*``). This module rebuilds
the tokenizer llama.cpp runs (llama-vocab.cpp), for the MLX backend and machines
without llama.cpp (the llama.cpp backend uses llama.cpp's own):

- byte-level BPE (``gpt2``: SmolLM, Qwen, Llama 3, DeepSeek, Falcon, Command-R, ...):
  the merges, llama.cpp's regexes for the ``tokenizer.ggml.pre`` type, its rule of
  taking a piece that is a whole token before merging (``IGNORE_MERGES``);
- SentencePiece (``llama``: Llama 2, Mistral, Phi-3, Gemma 1-3): scores as merge ranks,
  a ``▁`` before every run of text, ``<0xNN>`` byte fallback;
- Gemma 4 (``gemma4``).

Every vocabulary it accepts gives llama.cpp's ids on llama.cpp's own tokenizer suite
(``tests/test_llamacpp_suite.py``) and on random multilingual text; anything else
(WordPiece ``bert``, ``t5``, ``rwkv``, ...) is refused in one line naming the vocabulary,
never tokenized differently. The special tokens, BOS rule and
end-of-generation set follow llama.cpp's rules too.

Reading a large vocabulary through ``gguf.GGUFReader`` takes seconds, so the result is
cached as a tokenizer.json keyed by the file's identity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mlxgen.cache import atomic_dir, cache_root, fingerprint
from mlxgen.gguf_check import field_value, open_reader
from mlxgen.errors import ModelError, first_line

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
QWEN35 = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
DEEPSEEK_LLM = [
    '[\r\n]',
    '\\s?[A-Za-z\xb5\xc0-\xd6\xd8-\xf6\xf8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+',
    '\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3001-\u3002]+',
    '\\s+$',
    '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+',
    '\\p{N}+',
]
DEEPSEEK_CODER = [
    '[\r\n]',
    '\\s?\\p{L}+',
    '\\s?\\p{P}+',
    '[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+',
    '\\p{N}',
]
# llama.cpp runs regexes without \p{..} classes through std::wregex, where \s is ASCII and
# Latin-1 whitespace only (NEL, NBSP; not U+2003 or U+3000) and U+3000 falls outside DeepSeek's
# [\u3000-\u3002] (found by comparing random text with llama.cpp): say so for Oniguruma.
WREGEX_SPACE = "[\t\n\x0b\x0c\r \x85\xa0]"  # the characters themselves: Oniguruma reads \xHH as a byte
DEEPSEEK_LLM = [rx if "\\p{" in rx else rx.replace("\\s", WREGEX_SPACE) for rx in DEEPSEEK_LLM]
PRE_TOKENIZERS: dict[str, list[str]] = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt-2": [GPT2],
    "mpt": [GPT2],
    "llama-bpe": [LLAMA3],
    "llama3": [LLAMA3],
    "dbrx": [LLAMA3],
    "smaug-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "qwen35": [QWEN35],
    "deepseek-r1-qwen": [QWEN2],
    "smollm": [r"\p{N}", GPT2],
    "starcoder": [r"\p{N}", GPT2],
    "refact": [r"\p{N}", GPT2],
    "codeshell": [r"\p{N}", GPT2],
    "command-r": [r"\p{N}", GPT2],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
    "deepseek-llm": DEEPSEEK_LLM,
    "deepseek-coder": DEEPSEEK_CODER,
}
# Pre-tokenizers for which llama.cpp takes a piece that is itself a token whole, before any merge.
IGNORE_MERGES = {"llama-bpe", "llama3"}  # llama.cpp also adds BOS by default for these
# Tokens llama.cpp ends generation on by their text, besides the eos/eot/eom/fim ids (llama-vocab.cpp).
EOG_TEXTS = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
             "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
             "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
             "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["}
FIM_TEXTS = {"fim_pad": {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"},
             "fim_rep": {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"},
             "fim_sep": {"<|file_sep|>"}}
NORMAL, UNKNOWN, CONTROL, USER_DEFINED = 1, 2, 3, 4
CACHE_VERSION = "v4"  # v2: SentencePiece, Gemma 4, more pre-tokenizers, ignore_merges; v3: llama.cpp token types; v4: DeepSeek's wregex whitespace


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


def build(reader, path: str | Path | None = None) -> GGUFVocab:
    """The tokenizer from an open reader; every problem is a ``ModelError`` naming the file."""
    try:
        return _build(reader)
    except ModelError as e:
        if path is None or str(e).startswith(str(path)):
            raise
        raise ModelError(f"{path}: {e}") from None


def _build(reader) -> GGUFVocab:
    from tokenizers import AddedToken, Tokenizer

    model = field_value(reader, "tokenizer.ggml.model")
    if model is None:
        raise ModelError("the GGUF has no tokenizer metadata (tokenizer.ggml.model); set tokenizer.repo or tokenizer.path")
    pre = field_value(reader, "tokenizer.ggml.pre", "default")
    if model not in BUILDERS:
        raise ModelError(
            f"GGUF tokenizer model {model!r} cannot be rebuilt exactly with Hugging Face tokenizers "
            f"(rebuilt: {', '.join(sorted(BUILDERS))}); run it on the llama.cpp backend (--backend llama.cpp) "
            "or set tokenizer.repo or tokenizer.path to the model's tokenizer.json"
        )
    if model == "gpt2" and (not isinstance(pre, str) or pre not in PRE_TOKENIZERS):
        raise ModelError(
            f"GGUF pre-tokenizer {pre!r} cannot be rebuilt exactly with Hugging Face tokenizers "
            f"(rebuilt: {', '.join(sorted(PRE_TOKENIZERS))}); run it on the llama.cpp backend (--backend llama.cpp) "
            "or set tokenizer.repo or tokenizer.path to the model's tokenizer.json"
        )
    tokens = _list_of(reader, "tokenizer.ggml.tokens", str, None)
    if not tokens:
        raise ModelError("GGUF metadata tokenizer.ggml.tokens is missing or empty")
    types = _list_of(reader, "tokenizer.ggml.token_type", int, [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ModelError(
            f"GGUF metadata tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens"
        )
    tok: Tokenizer = BUILDERS[model](reader, tokens, types, pre)
    types = _llamacpp_types(tokens, types, model)
    rstrip = model == "llama" and _is_phi3(reader)  # llama.cpp strips spaces after Phi-3's special tokens
    specials = [
        AddedToken(tokens[i], special=(t != USER_DEFINED), normalized=False,
                   rstrip=rstrip and tokens[i] not in ("<unk>", "<s>", "<|endoftext|>"))
        for i, t in enumerate(types)
        if t in (CONTROL, USER_DEFINED, UNKNOWN)
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
    eos_ids = _end_of_generation(tokens, token_id)
    special = {}
    if bos_id is not None:
        special["bos_token"] = tokens[bos_id]
    if eos_ids:
        special["eos_token"] = tokens[eos_ids[0]]
    add_bos = field_value(reader, "tokenizer.ggml.add_bos_token", None)
    if add_bos is None or (model == "gemma4" and not add_bos):  # llama.cpp's defaults (and its Gemma 4 override)
        add_bos = model in ("llama", "gemma4") or pre in IGNORE_MERGES
    return GGUFVocab(
        tokenizer=tok,
        model=model,
        pre=pre if model == "gpt2" else model,
        add_bos=bool(add_bos),
        bos_id=bos_id,
        eos_ids=eos_ids,
        chat_template=_text_or_none(reader, "tokenizer.chat_template"),
        special=special,
    )


def _llamacpp_types(tokens: list[str], types: list[int], model: str) -> list[int]:
    """The token types llama.cpp works with: it makes end-of-generation and FIM tokens found by
    their text control tokens (so a Qwen ``</s>`` is parsed as special), gpt-oss's channel
    markers user-defined, and Gemma 4's ``</s>`` normal."""
    types = list(types)
    marked = EOG_TEXTS.union(*FIM_TEXTS.values())
    for i, t in enumerate(tokens):
        if t in marked:  # llama.cpp adds the control flag: parsed only as a special token
            types[i] = CONTROL
        elif t in ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"):
            types[i] = USER_DEFINED
    texts = {t: i for i, t in enumerate(tokens)}
    if "</s>" in texts and "<|tool_response>" in texts:
        types[texts["</s>"]] = NORMAL
    if "<|end|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts) and (
        "<|return|>" in texts or "<|flush|>" in texts
    ):
        types[texts["<|end|>"]] = USER_DEFINED
    return types


def _end_of_generation(tokens: list[str], token_id) -> tuple[int, ...]:
    """The ids llama.cpp ends generation on: eos/eot/eom, the FIM pad/repo/file-separator tokens
    (named in the metadata or found by their text), and the tokens of ``EOG_TEXTS``, with its
    two exceptions (Gemma 4's normal ``</s>``, gpt-oss's ``<|end|>``)."""
    ids = [token_id(f"tokenizer.ggml.{k}_token_id") for k in ("eos", "eot", "eom")]
    for key, texts in FIM_TEXTS.items():
        found = token_id(f"tokenizer.ggml.{key}_token_id")
        if found is None:
            found = next((i for i, t in enumerate(tokens) if t in texts), None)
        ids.append(found)
    ids += [i for i, t in enumerate(tokens) if t in EOG_TEXTS]
    eog = dict.fromkeys(i for i in ids if i is not None)
    texts = {tokens[i]: i for i in eog}
    if "</s>" in texts and "<|tool_response>" in texts:
        eog.pop(texts["</s>"])
    if "<|end|>" in texts and ("<|call|>" in texts or "<|calls|>" in texts) and (
        "<|return|>" in texts or "<|flush|>" in texts
    ):
        eog.pop(texts["<|end|>"])
    return tuple(eog)


def _bpe(reader, tokens: list[str], types: list[int], pre: str):
    """Byte-level BPE (``gpt2``): the merges, the pre-tokenizer's regexes, GPT-2's byte alphabet."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers

    tok = Tokenizer(_bpe_model(reader, tokens, ignore_merges=pre in IGNORE_MERGES))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZERS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _gemma4(reader, tokens: list[str], types: list[int], pre: str):
    """Gemma 4: BPE on raw UTF-8 with spaces as ``▁``, split only at newlines, ``<0xNN>`` byte fallback."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

    tok = Tokenizer(_bpe_model(reader, tokens, ignore_merges=False, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated")
    tok.decoder = _sentencepiece_decoder()
    return tok


def _bpe_model(reader, tokens: list[str], ignore_merges: bool, byte_fallback: bool = False):
    from tokenizers import models

    merges = [tuple(m.split(" ", 1)) for m in _list_of(reader, "tokenizer.ggml.merges", str, [])]
    if any(len(m) != 2 for m in merges):
        raise ModelError("GGUF metadata tokenizer.ggml.merges has an entry without a space ('a b' expected)")
    try:
        return models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=ignore_merges,
                          byte_fallback=byte_fallback)
    except Exception as e:  # tokenizers raises a bare Exception (e.g. a merge of unknown tokens)
        raise ModelError(f"GGUF tokenizer cannot be built from its metadata ({first_line(e)})") from None


def _spm(reader, tokens: list[str], types: list[int], pre: str):
    """SentencePiece (``llama``: Llama 2, Mistral, Phi-3, Gemma 1-3) as llama.cpp runs it.

    llama.cpp puts a space before every run of text that follows a special token (or
    starts the input), writes spaces as ``▁``, and merges adjacent pieces greedily, the
    highest-scoring resulting token first; characters no token covers become
    ``<0xNN>`` byte tokens. That is a BPE whose merge ranks are the scores.
    """
    from tokenizers import Tokenizer, models, normalizers

    scores = _list_of(reader, "tokenizer.ggml.scores", float, None)
    if scores is None or len(scores) != len(tokens):
        raise ModelError("GGUF metadata tokenizer.ggml.scores is missing or does not match tokenizer.ggml.tokens")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for i, token in enumerate(tokens):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                merges.append((-scores[i], i, vocab[left], left, right))
    merges.sort()
    unk = next((tokens[i] for i, t in enumerate(types) if t == UNKNOWN), None)
    try:
        bpe = models.BPE(vocab=vocab, merges=[(m[3], m[4]) for m in merges], unk_token=unk, fuse_unk=True,
                         byte_fallback=True)
    except Exception as e:
        raise ModelError(f"GGUF tokenizer cannot be built from its metadata ({first_line(e)})") from None
    tok = Tokenizer(bpe)
    steps = [normalizers.Replace(" ", "\u2581")]
    if field_value(reader, "tokenizer.ggml.add_space_prefix", True):
        steps.insert(0, normalizers.Prepend("\u2581"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.decoder = _sentencepiece_decoder()
    return tok


def _sentencepiece_decoder():
    from tokenizers import decoders

    return decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])


def _is_phi3(reader) -> bool:
    name = field_value(reader, "general.name", "")
    return isinstance(name, str) and any(k in name.lower() for k in ("phi-3", "phi3"))


# Not rebuilt: WordPiece (bert). Bert's normalizer passes llama.cpp's 47 suite cases, but
# random text shows llama.cpp's own Unicode tables differ (Hangul vowel jamo, Devanagari
# vowel signs dropped as accents), and a silent difference is worse than a refusal.
BUILDERS = {"gpt2": _bpe, "llama": _spm, "gemma4": _gemma4}


def _kind(value) -> str:
    return {str: "a string", list: "an array", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )


def _list_of(reader, key: str, kind: type, default):
    value = field_value(reader, key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        want = {str: "strings", float: "numbers"}.get(kind, "integers")
        raise ModelError(f"GGUF metadata {key} is {_kind(value)}, not an array of {want}")
    return value


def _text_or_none(reader, key: str) -> str | None:
    value = field_value(reader, key)
    if value is not None and not isinstance(value, str):
        raise ModelError(f"GGUF metadata {key} is {_kind(value)}, not a string")
    return value


# ----------------------------------------------------------------- the cache


def _cache_dir(path: Path) -> Path:
    """The entry for this file's content (``cache.fingerprint``): the same GGUF in two venvs is one entry."""
    try:
        key = fingerprint(path)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file does not exist") from None
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
