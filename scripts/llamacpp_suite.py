"""llama.cpp's tokenizer test suite and real chat templates, from the llama-cpp-python sdist.

The sdist ships ``vendor/llama.cpp/models/ggml-vocab-*.gguf`` (vocabulary-only GGUFs),
each with a ``.inp`` (test texts split on ``\\n__ggml_vocab_test__\\n``) and a ``.out``
(one line of ids per text: llama.cpp's ``test-tokenizer-0`` expectations, no BOS, no
special-token parsing), and ``models/templates/*.jinja``. ``fetch`` downloads the sdist
once with pip and keeps only those files, in a cache folder keyed by version.

    python scripts/llamacpp_suite.py            # both tokenizers on every vocabulary
    python scripts/llamacpp_suite.py --templates
    python scripts/llamacpp_suite.py --fuzz 600  # and 600 random texts per vocabulary, both ways

Nothing of the sdist is committed; the tests that use it skip when it cannot be fetched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_VERSION = "0.3.36"
SEP = "\n__ggml_vocab_test__\n"
WANTED = ("/vendor/llama.cpp/models/ggml-vocab-", "/vendor/llama.cpp/models/templates/")


def installed_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:
        return DEFAULT_VERSION


def cache_dir(version: str) -> Path:
    base = os.environ.get("MLXGEN_TEST_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlxgen-test"
    return Path(base) / f"llama-cpp-python-{version}"


def fetch(version: str | None = None) -> tuple[Path | None, str]:
    """The folder holding ``models/`` of that version's sdist, or (None, why not)."""
    version = version or installed_version()
    target = cache_dir(version)
    if (target / "complete").is_file():
        return target, ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as tmp:
            tarball = os.environ.get("MLXGEN_LLAMA_SDIST")  # a local copy, for machines without PyPI
            if not tarball:
                r = subprocess.run(
                    [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                     f"llama-cpp-python=={version}", "-d", tmp],
                    capture_output=True, text=True, timeout=600,
                )
                found = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
                if r.returncode != 0 or not found:
                    last = (r.stderr.strip().splitlines() or ["no sdist downloaded"])[-1]
                    return None, f"cannot download the llama-cpp-python {version} sdist ({last})"
                tarball = str(found[0])
            out = Path(tmp) / "out"
            (out / "models" / "templates").mkdir(parents=True)
            with tarfile.open(tarball) as tar:
                for member in tar:
                    if not member.isfile() or not any(w in member.name for w in WANTED):
                        continue
                    rel = member.name.split("/vendor/llama.cpp/", 1)[1]
                    if rel.count("/") > 2 or ".." in rel:
                        continue
                    with tar.extractfile(member) as src, open(out / rel, "wb") as dst:
                        shutil.copyfileobj(src, dst)
            (out / "complete").write_text(version)
            try:
                out.rename(target)  # atomic: a concurrent fetch that finished first wins
            except OSError:
                if not (target / "complete").is_file():
                    raise
    except (OSError, tarfile.TarError, subprocess.SubprocessError) as e:
        return None, f"cannot prepare llama.cpp's test files in {target} ({e})"
    return target, ""


@dataclass
class Vocab:
    name: str  # "llama-spm"
    gguf: Path
    cases: list[tuple[str, list[int]]]


def vocabularies(root: Path) -> list[Vocab]:
    """Every vocabulary with test cases, its texts and expected ids (as test-tokenizer-0 reads them)."""
    out = []
    for inp in sorted((root / "models").glob("ggml-vocab-*.gguf.inp")):
        gguf = inp.with_suffix("")
        texts = inp.read_bytes().decode("utf-8").split(SEP)
        lines = gguf.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
        lines = lines[: len(texts)]
        cases = [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]
        out.append(Vocab(gguf.name.removeprefix("ggml-vocab-").removesuffix(".gguf"), gguf, cases))
    return out


def templates(root: Path) -> list[Path]:
    return sorted((root / "models" / "templates").glob("*.jinja"))


def score(tokenizer, vocab: Vocab) -> tuple[int, list[str]]:
    """Cases where ``tokenizer.encode(text, bos=False, special=False)`` gives the expected ids."""
    good, bad = 0, []
    for text, want in vocab.cases:
        got = tokenizer.encode(text, bos=False, special=False)
        if got == want:
            good += 1
        else:
            bad.append(f"{text[:40]!r}: {got[:12]} != {want[:12]}")
    return good, bad


# Pieces random texts are made of: scripts, combining marks, emoji, digits, odd whitespace,
# punctuation, control characters and special-token text.
PIECES = ["Hello", " world", "  ", "\n", "\n\n", "\t", " \n ", "123", "4567890", "3.14", "'s", "'LL", "don't", "ñ",
          "é", "Ünïcödé", "你好", "世界", "日本語", "カタカナ", "한국어", "Русский", "ελληνικά", "العربية", "हिन्दी",
          "ไทย", "🙂", "👨\u200d👩\u200d👧", "🇪🇸", "!!", "?", "...", "—", "«»", "(x)", "[]", "{}", "<tag>", "</s>", "<s>",
          "$", "+", "=", "^", "~", "|", "`", "@", "#", "%", "\u00a0", "\u3000", "\u200b", "a", "Z", "ß", "İ", "ǅ", "ﬁ",
          "①", "²", "½", "Cửa Việt", "e\u0301", "\r\n", "    def f():", "x\u0308", "\u2003", "\u0085", "\u2028",
          "\u3000\u3000", " \u3001", "ア", "ｱ", "Ａ", "𝔘", "\U0001F600", "\x00", "\x7f"]


def random_texts(seed: int, n: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def differences(ours, theirs, texts: list[str]) -> list[str]:
    """Texts where the two tokenizers disagree, with or without special-token parsing (and BOS)."""
    return [repr(t) for t in texts for special in (False, True)
            if ours.encode(t, bos=special, special=special) != theirs.encode(t, bos=special, special=special)]


TURNS = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain? (mlxgen-last-user)"},
]


def render_template(text: str) -> str:
    from mlxgen import chat

    spec = chat.PromptSpec(text, "model", system=TURNS[0]["content"])
    return chat.render_messages(spec, TURNS[1:], {"bos_token": "<s>", "eos_token": "</s>"})


def main(argv: list[str]) -> int:
    root, why = fetch()
    if root is None:
        print(why, file=sys.stderr)
        return 1
    if "--templates" in argv:
        ok = 0
        paths = templates(root)
        for p in paths:
            try:
                out = render_template(p.read_text(encoding="utf-8"))
                assert TURNS[-1]["content"] in out, "the last user message is missing"
                ok += 1
            except Exception as e:  # noqa: BLE001 - a report
                print(f"{p.name}: {type(e).__name__}: {e}")
        print(f"{ok}/{len(paths)} templates render")
        return 0
    fuzz = int(argv[argv.index("--fuzz") + 1]) if "--fuzz" in argv else 0
    import os as _os

    _os.environ.setdefault("MLXGEN_CACHE", tempfile.mkdtemp())
    from mlxgen.errors import MlxgenError
    from mlxgen.tokenizer import HFTokenizer

    try:
        from mlxgen.backends import llamacpp_vocab
    except ImportError:
        llamacpp_vocab = None
    totals = {"llama.cpp": [0, 0], "rebuilt": [0, 0]}
    print(f"{'vocabulary':<16} {'cases':>5}  {'llama.cpp':>9}  rebuilt (tokenizers)")
    for v in vocabularies(root):
        n = len(v.cases)
        row = f"{v.name:<16} {n:>5}  "
        if llamacpp_vocab:
            good, _ = score(llamacpp_vocab.open(v.gguf), v)
            totals["llama.cpp"][0] += good
            totals["llama.cpp"][1] += n
            row += f"{good:>9}  "
        else:
            row += f"{'-':>9}  "
        try:
            tok = HFTokenizer.from_gguf(v.gguf)
        except MlxgenError as e:
            row += f"refused: {e}"
        else:
            good, bad = score(tok, v)
            totals["rebuilt"][0] += good
            totals["rebuilt"][1] += n
            row += f"{good}" + (f"   first miss {bad[0]}" if bad else "")
            if fuzz and llamacpp_vocab:
                diff = differences(tok, llamacpp_vocab.open(v.gguf), random_texts(0, fuzz))
                row += f"   random texts: {2 * fuzz - len(diff)}/{2 * fuzz} agree" + (f" (first {diff[0]})" if diff else "")
        print(row)
    for k, (g, n) in totals.items():
        print(f"{k}: {g} of {n} accepted cases")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
