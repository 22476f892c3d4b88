"""`mlxgen tokens`: what the model sees. Counts, each id with its text, template tokens.

Large inputs are cut into chunks at newlines between two non-blank characters, a point
where a byte-level BPE pre-tokenizer always starts a new piece (the tokenizer says whether
it is one: ``Tokenizer.chunkable``), and encoded in batches (in parallel by either
implementation), so the ids are the same as one ``encode`` of the whole text and a
progress bar can follow. Tokenizers of other kinds encode in one call.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Callable

from mlxgen.errors import PromptError
from mlxgen.render import plural
from mlxgen.tokenizer import Tokenizer

CHUNK_CHARS = 1 << 18
BATCH = 4  # chunks per encode_batch call (one progress update each)
BIG_CHARS = 1 << 20  # inputs at least this large get a progress bar on a terminal
_BOUNDARY = re.compile(r"(?<=\S)\n(?=\S)")


@dataclass
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]  # character spans in the text ((0, 0) for an added BOS)


# ------------------------------------------------------------------- input


def read_text(text: str | None, path: str | None, errors: str) -> str:
    """The text to count: an argument, a file (-f, '-' = stdin) or piped stdin (``mlxgen.inputs``)."""
    from mlxgen.inputs import read_text as read

    return read(text, path, errors, hint="; --errors replace reads it with U+FFFD for the bad bytes")


# ---------------------------------------------------------------- encoding


def split(text: str, size: int = CHUNK_CHARS) -> list[str]:
    chunks, start = [], 0
    while start < len(text):
        end = start + size
        match = _BOUNDARY.search(text, end) if end < len(text) else None
        end = match.end() if match else len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def encode(tok: Tokenizer, text: str, progress: Callable[[int], None] | None = None, offsets: bool = True) -> Encoded:
    """``tok.encode(text)`` (BOS rule included), with character offsets, in chunks when large."""
    chunks = split(text) if len(text) > CHUNK_CHARS and tok.chunkable else [text]
    ids: list[int] = []
    spans: list[tuple[int, int]] = []
    base = 0
    for i in range(0, len(chunks), BATCH):
        group = chunks[i : i + BATCH]
        for chunk, (chunk_ids, chunk_spans) in zip(group, tok.encode_spans(group, offsets)):
            ids += chunk_ids
            if offsets:
                spans += [(a + base, b + base) for a, b in chunk_spans]
            base += len(chunk)
        if progress:
            progress(base)
    if tok.add_bos and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids.insert(0, tok.bos_id)
        spans.insert(0, (0, 0))
    return Encoded(ids, spans)


def message_span(template_text: Callable[[str], str], message: str, text: str) -> tuple[int, int]:
    """Where the user's message sits in the templated text (the rest is the template's)."""
    marker = "\x00mlxgen-message\x00"
    before, _, after = template_text(marker).partition(marker)
    if text == before + message + after:
        return len(before), len(before) + len(message)
    start = text.rfind(message)
    return (start, start + len(message)) if start >= 0 and message else (0, 0)


def in_span(offset: tuple[int, int], span: tuple[int, int]) -> bool:
    a, b = offset
    return a < span[1] and b > span[0]


# ----------------------------------------------------------------- showing


def token_text(tok: Tokenizer, tid: int) -> str:
    """A token's text, quoted and escaped; part of a UTF-8 character shows as its bytes."""
    data = tok.token_bytes(tid)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return repr(data)
    return json.dumps(text, ensure_ascii=False)


def special_ids(tok: Tokenizer) -> frozenset[int]:
    return tok.special_ids()


def progress_bar(total: int, out=None) -> Callable[[int], None]:
    """A one-line bar on stderr, redrawn in place; finished by a newline at 100%."""
    out = out or sys.stderr

    def show(done: int) -> None:
        frac = min(done / total, 1.0) if total else 1.0
        bar = "#" * int(frac * 30)
        out.write(f"\rtokenizing [{bar:<30}] {frac:4.0%}  {done / 1e6:.1f}/{total / 1e6:.1f} M characters")
        if frac >= 1.0:
            out.write("\n")
        out.flush()

    return show


# ----------------------------------------------------------------- the report


def count(tok: Tokenizer, message: str, n_ctx: int, render: Callable[[str], str] | None = None,
          show: bool = False, progress: Callable[[int], None] | None = None) -> dict:
    """Token count of ``message`` (templated by ``render`` if given), and the ids with ``show``."""
    text = render(message) if render else message
    enc = encode(tok, text, progress, offsets=render is not None)
    n = len(enc.ids)
    data = {
        "tokens": n,
        "characters": len(message),
        "bytes": len(message.encode("utf-8")),
        "n_ctx": n_ctx,
        "fits": n < n_ctx,
    }
    marks = None
    if render:
        span = message_span(render, message, text)
        marks = [not in_span(o, span) for o in enc.offsets]
        data["template_tokens"] = sum(marks)
        data["message_tokens"] = n - sum(marks)
    if show:
        specials = special_ids(tok)
        data["pieces"] = [
            {"id": t, "text": tok.decode([t]), "special": t in specials, **({"template": marks[i]} if marks else {})}
            for i, t in enumerate(enc.ids)
        ]
    return data


def summary(data: dict) -> str:
    n, n_ctx = data["tokens"], data["n_ctx"]
    line = f"{plural(n, 'token')} · {plural(data['characters'], 'character')} · {plural(data['bytes'], 'byte')}"
    if "template_tokens" in data:
        line += f" · {data['template_tokens']} from the template, {data['message_tokens']} from the text"
    share = n / n_ctx if n_ctx else 0
    if data["fits"]:
        return line + f" · {share:.1%} of the {n_ctx}-token context"
    return line + f" · {share:.1f}x the {n_ctx}-token context: does not fit"


def listing(tok: Tokenizer, pieces: list[dict]) -> str:
    lines = [f"{'pos':>6} {'id':>7}  text"]
    for pos, p in enumerate(pieces):
        marks = [m for m, on in (("special", p["special"]), ("template", p.get("template"))) if on]
        shown = token_text(tok, p["id"])
        lines.append(f"{pos:>6} {p['id']:>7}  {shown}" + (f"  ({', '.join(marks)})" if marks else ""))
    return "\n".join(lines)
