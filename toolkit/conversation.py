"""A multi-turn conversation on one session: history, settings and KV-cache reuse.

Every turn renders the whole conversation with the chat template and tokenizes it.
The backend's cache is then trimmed to the longest common prefix of what it holds and
the new prompt, and only the rest is prefilled: turn n costs the new user message (and
the template's tokens around it), not the whole history again.

``_cached`` is always a list whose first ``backend.n_cached`` ids are exactly what the
cache holds, even after an interrupted turn: it is set to the new prompt before the
loop starts and to prompt + sampled tokens after it ends.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Iterator

from mlxgen import chat
from mlxgen.cache import atomic_write_text
from mlxgen.errors import ConfigError, MlxgenError, PromptError
from mlxgen.loop import Done, Event
from mlxgen.session import Session, sampling_params

FORMAT = "mlxgen-chat"
SETTINGS = {  # /set NAME VALUE: the type of each setting
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "repetition_penalty": float,
    "repetition_context": int,
    "seed": int,
    "max_length": int,
}
ALIASES = {"temp": "temperature", "max_tokens": "max_length", "n": "max_length", "repeat_penalty": "repetition_penalty"}


class ContextFull(PromptError):
    """The conversation no longer fits the context window."""


@dataclass(frozen=True)
class Turn:
    done: Done
    reused: int  # prompt tokens already in the cache
    new: int  # prompt tokens prefilled this turn

    @property
    def prompt_tokens(self) -> int:
        return self.reused + self.new


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class Conversation:
    def __init__(self, sess: Session) -> None:
        self.sess = sess
        self.spec = sess.template
        self.params = sampling_params(sess.cfg)
        self.max_length = sess.cfg.inference.max_length
        self.messages: list[dict] = []
        self.turns: list[Turn] = []
        self._cached: list[int] = []

    # ------------------------------------------------------------------ turns
    def prompt_ids(self, user: str) -> list[int]:
        messages = self.messages + [{"role": "user", "content": user}]
        text = chat.render_messages(self.spec, messages, self.sess.tokenizer.special)
        return self.sess.tokenizer.encode(text)

    @property
    def n_cached(self) -> int:
        """Positions the backend's cache holds (0 for a backend that cannot say)."""
        return int(getattr(self.sess.backend, "n_cached", 0))

    def turn(self, user: str, consume: Callable[[Iterator[Event]], Done]) -> Turn:
        """Send one user message; ``consume`` drains the loop's events (streaming them)."""
        ids = self.prompt_ids(user)
        n_ctx = self.sess.backend.n_ctx
        if len(ids) >= n_ctx:
            raise ContextFull(
                f"the context is full: the conversation is {len(ids)} tokens and the context holds {n_ctx}; "
                "/reset to start over (or raise --ctx)"
            )
        known = self._cached[: self.n_cached]
        reused = min(common_prefix(known, ids), len(ids) - 1)
        self.sess.backend.trim(reused)
        self._cached = ids
        sample = self.sess.sampler(self.params)
        done = consume(self.sess.generate(ids, cached=reused, max_tokens=self.max_length, sample=sample))
        self._cached = ids + [tid for tid, _ in done.trace]
        if not (done.reason == "interrupted" and not done.text):  # Ctrl-C before any text: no turn to keep
            self.messages = self.messages + [
                {"role": "user", "content": user},
                {"role": "assistant", "content": done.text},
            ]
        turn = Turn(done, reused, len(ids) - reused)
        self.turns.append(turn)
        return turn

    def reset(self) -> None:
        """Forget the history and empty the backend's cache (the system prompt stays)."""
        self.messages, self.turns, self._cached = [], [], []
        self.sess.backend.trim(0)

    # --------------------------------------------------------------- settings
    def set_system(self, text: str | None) -> None:
        self.spec = dataclasses.replace(self.spec, system=text or None)

    def set_thinking(self, on: bool | None) -> None:
        self.spec = dataclasses.replace(self.spec, thinking=on)

    def settings(self) -> dict:
        values = dataclasses.asdict(self.params)
        return {name: (self.max_length if name == "max_length" else values[name]) for name in SETTINGS}

    def set(self, name: str, value: str) -> None:
        """``/set NAME VALUE``; the value is checked as the config checks it."""
        key = name.strip().lower().replace("-", "_")
        key = ALIASES.get(key, key)
        if key not in SETTINGS:
            raise ConfigError(f"/set {name}: unknown setting; one of {', '.join(SETTINGS)}")
        self.apply({key: parse_value(key, value)})

    def apply(self, values: dict) -> None:
        max_length = values.get("max_length", self.max_length)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
            raise ConfigError(f"max_length: {max_length!r} is not allowed; expected a positive integer")
        fields = {k: v for k, v in values.items() if k in SETTINGS and k != "max_length"}
        params = dataclasses.replace(self.params, **fields)
        params.validate()
        self.params, self.max_length = params, max_length

    # ------------------------------------------------------------ save / load
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": 1,
            "system": self.spec.system,
            "thinking": self.spec.thinking,
            "settings": self.settings(),
            "messages": self.messages,
        }

    def save(self, path: str) -> None:
        try:
            atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n")
        except OSError as e:
            raise MlxgenError(f"/save {path}: cannot write ({e.strerror or e})") from None

    def load(self, path: str) -> None:
        """Replace the history (and system prompt, thinking, settings) with a saved one.

        The cache is kept: the next turn reuses whatever prefix it shares with the file.
        """
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise MlxgenError(f"/load {path}: cannot read ({e.strerror or e})") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise MlxgenError(f"/load {path}: not a JSON file ({e})") from None
        messages = check_saved(data, path)
        self.apply(data.get("settings") or {})
        self.spec = dataclasses.replace(self.spec, system=data.get("system"), thinking=data.get("thinking"))
        self.messages, self.turns = messages, []


def parse_value(key: str, text: str):
    text = text.strip()
    if key == "seed" and text.lower() in ("none", "off", "random"):
        return None
    try:
        return SETTINGS[key](text)
    except ValueError:
        kind = "an integer" if SETTINGS[key] is int else "a number"
        raise ConfigError(f"/set {key}: {text!r} is not {kind}") from None


def check_saved(data, path: str) -> list[dict]:
    """The messages of a saved conversation, or a one-line error saying what is wrong."""

    def bad(why: str) -> MlxgenError:
        return MlxgenError(f"/load {path}: {why}")

    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise bad(f"not a saved mlxgen conversation (no \"format\": \"{FORMAT}\")")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise bad("\"messages\" must be a list")
    if len(messages) % 2:
        raise bad("the last message must be the assistant's (turns alternate, user first)")
    for i, m in enumerate(messages):
        role = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != role or not isinstance(m.get("content"), str):
            raise bad(f"messages[{i}] must be {{\"role\": \"{role}\", \"content\": TEXT}} (turns alternate, user first)")
    if not isinstance(data.get("system"), (str, type(None))) or data.get("thinking") not in (True, False, None):
        raise bad("\"system\" must be text or null and \"thinking\" true, false or null")
    if not isinstance(data.get("settings", {}), dict):
        raise bad("\"settings\" must be an object")
    unknown = set(data.get("settings") or {}) - set(SETTINGS)
    if unknown:
        raise bad(f"unknown setting {sorted(unknown)[0]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
