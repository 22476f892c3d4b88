"""Where the text of `run`, `logits` and `tokens` comes from: an argument, a file, or stdin.

One reader for all of them, so the same input gives the same tokens everywhere: piped
stdin loses one trailing newline (the one `echo` and most editors add), an argument and
a file (``-f FILE``, ``-f -`` for stdin as is) are taken exactly.
"""

from __future__ import annotations

import sys

from mlxgen.errors import PromptError


def read_text(text: str | None, path: str | None, errors: str = "strict", *, what: str = "text",
              hint: str = "") -> str:
    """The text: ``text`` (an argument), ``path`` (a file, '-' = stdin) or piped stdin.

    ``errors``: "strict" refuses invalid UTF-8 in one line (ending in ``hint``), "replace"
    reads the bad bytes as U+FFFD.
    """
    if text is not None and path is not None:
        raise PromptError(f"give {what.upper()} or -f FILE, not both")
    if text is not None:  # an argument: undecodable bytes arrive as surrogate escapes
        data, name = text.encode("utf-8", "surrogateescape"), what.upper()
    elif path in (None, "-"):
        if path is None and (sys.stdin is None or sys.stdin.isatty()):
            raise PromptError(f"no {what}: give it as an argument, with -f FILE, or pipe it on stdin")
        data, name = sys.stdin.buffer.read(), "stdin"
        if path is None and data.endswith(b"\n"):
            data = data[:-1]
    else:
        try:
            with open(path, "rb") as f:
                data, name = f.read(), path
        except OSError as e:
            raise PromptError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise PromptError(f"{name} is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r}){hint}") from None
