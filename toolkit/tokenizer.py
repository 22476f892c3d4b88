"""One tokenizer for every backend: Hugging Face ``tokenizers``.

Built from a ``tokenizer.json`` (a repo, a local path, or an MLX model folder) or,
for a GGUF that carries only its vocabulary, from the GGUF metadata
(``mlxgen.gguf_vocab``), giving the same ids as llama.cpp's own tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from mlxgen.errors import ConfigError, ModelError


@dataclass
class Tokenizer:
    hf: "tokenizers.Tokenizer"  # noqa: F821
    add_bos: bool = False
    bos_id: int | None = None
    eos_ids: tuple[int, ...] = ()  # the model's own EOS ids
    chat_template: str | None = None
    special: dict[str, str] = field(default_factory=dict)  # bos_token / eos_token strings for templates
    source: str = ""

    # ------------------------------------------------------------ loading
    @classmethod
    def from_json(cls, path: str | Path) -> "Tokenizer":
        """A tokenizer.json, with tokenizer_config.json / generation_config.json beside it if present."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        try:
            hf = HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise ModelError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
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
    def from_gguf(cls, path: str | Path, reader=None) -> "Tokenizer":
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

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """Token ids; special tokens written in the text (``<|im_start|>``) are parsed as such."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if bos and self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def piece(self, token: int) -> str:
        return self.hf.id_to_token(token) or ""

    def resolve_eos(self, names: Iterable[str]) -> tuple[int, ...]:
        """The model's EOS ids plus the named ones; a name not in the vocabulary is an error."""
        ids = list(self.eos_ids)
        for name in names:
            tid = self.token_id(name)
            if tid is None:
                raise ConfigError(
                    f"tokenizer.eos_token: {name!r} is not in the model's vocabulary ({self.source}); "
                    "without it generation would never stop on it"
                )
            ids.append(tid)
        return tuple(dict.fromkeys(ids))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _token_str(value) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised
        value = value.get("content")
    return value if isinstance(value, str) and value else None
