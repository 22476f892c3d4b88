"""A multi-turn conversation on one session: history, settings and KV-cache reuse.

Every turn renders the whole conversation with the chat template and tokenizes it.
The session's prompt cache (``mlxgen.prompt_cache``) then keeps the longest common
prefix of what the backend holds and the new prompt, and only the rest is prefilled:
turn n costs the new user message (and the template's tokens around it), not the
whole history again.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Iterator

from mlxgen import chat, settings
from mlxgen.cache import atomic_write_text
from mlxgen.errors import ConfigError, MlxgenError, PromptError
from mlxgen.loop import Done, Event
from mlxgen.session import Session, sampling_params

FORMAT = "mlxgen-chat"


class ContextFull(PromptError):
    """The conversation no longer fits the context window."""


@dataclass(frozen=True)
class Turn:
    done: Done
    reused: int  # prompt tokens already in the cache
    new: int  # prompt tokens prefilled this turn
    dropped_turns: int = 0  # oldest turns this turn's context shift dropped (--context-overflow shift)
    dropped_tokens: int = 0  # their prompt tokens
    shifted: int = 0  # of those, positions removed from the cache in place (llama.cpp); the rest re-prefilled
    complete: bool | None = None  # the answer completes the constraint (None: no constraint)
    constraint: str | None = None  # the constraint's label

    @property
    def shift(self) -> dict | None:
        """What the context shifts of this turn did: before it (turns dropped) and inside the answer."""
        s = self.done.stats
        if not self.dropped_turns and not s.context_shifts:
            return None
        return {"dropped_turns": self.dropped_turns, "dropped_tokens": self.dropped_tokens,
                "in_place": bool(self.shifted), "answer_shifts": s.context_shifts,
                "answer_dropped_tokens": s.dropped_tokens}

    @property
    def prompt_tokens(self) -> int:
        return self.reused + self.new


class Conversation:
    def __init__(self, sess: Session) -> None:
        self.sess = sess
        self.spec = sess.template
        self.params = sampling_params(sess.cfg)
        self.messages: list[dict] = []  # the whole conversation (/save writes it all)
        self.start = 0  # the first message still in the context (context shifts drop whole turns)
        self.turns: list[Turn] = []

    # ------------------------------------------------------------------ turns
    def prompt_ids(self, user: str) -> list[int]:
        messages = self.messages[self.start :] + [{"role": "user", "content": user}]
        text = chat.render_messages(self.spec, messages, self.sess.tokenizer.special)
        return self.sess.tokenizer.encode(text)

    @property
    def n_cached(self) -> int:
        """Positions the backend's cache holds (0 for a backend that cannot say)."""
        return len(self.sess.cache.ids)

    def turn(self, user: str, consume: Callable[[Iterator[Event]], Done]) -> Turn:
        """Send one user message; ``consume`` drains the loop's events (streaming them)."""
        ids = self.prompt_ids(user)
        n_ctx = self.sess.backend.n_ctx
        overflow = self.sess.overflow("shift")  # chat's default: a full context drops the oldest turns
        start, before = self.start, len(ids)
        if overflow == "shift":
            # Room for the answer (past it, the answer itself shifts). When it runs out, drop the
            # oldest turns until the prompt takes half the context, as llama.cpp discards half:
            # a shift every few turns, not every turn (each one re-prefills on a backend without Shift).
            reserve = min(self.params.max_length, n_ctx // 4)
            if len(ids) + reserve > n_ctx:
                while len(ids) > n_ctx // 2 and self.start < len(self.messages):
                    self.start += 2
                    ids = self.prompt_ids(user)
            if len(ids) >= n_ctx:
                self.start = start
                raise ContextFull(f"the message is {len(ids)} tokens with the template and the system prompt, and the "
                                  f"context holds {n_ctx}: shorten it or raise --ctx")
        elif len(ids) >= n_ctx:
            raise ContextFull(
                f"the context is full: the conversation is {len(ids)} tokens and the context holds {n_ctx}; "
                "/reset to start over (or raise --ctx)"
            )
        sample = self.sess.sampler(self.params)
        matcher = sample.constraints[0] if sample.constraints else None  # the constraint /json-schema etc. set
        done = consume(self.sess.complete(ids, shift=overflow == "shift", max_tokens=self.params.max_length,
                                          sample=sample, overflow=overflow))
        reused = done.stats.cached_tokens
        if not (done.reason == "interrupted" and not done.text):  # Ctrl-C before any text: no turn to keep
            self.messages = self.messages + [
                {"role": "user", "content": user},
                {"role": "assistant", "content": done.text},
            ]
        dropped = (self.start - start) // 2
        complete, label = (matcher.complete, matcher.grammar.spec.label) if matcher else (None, None)
        turn = Turn(done, reused, len(ids) - reused, dropped, before - len(ids) if dropped else 0, self.sess.cache.shifted,
                    complete, label)
        self.turns.append(turn)
        return turn

    def reset(self) -> None:
        """Forget the history and empty the backend's cache (the system prompt stays)."""
        self.messages, self.turns, self.start = [], [], 0
        self.sess.cache.reset()

    # --------------------------------------------------------------- settings
    def set_system(self, text: str | None) -> None:
        self.spec = dataclasses.replace(self.spec, system=text or None)

    def set_thinking(self, on: bool | None) -> None:
        self.spec = dataclasses.replace(self.spec, thinking=on)

    def settings(self) -> dict:
        return settings.values(self.params)

    @property
    def constraint(self) -> str | None:
        """The constraint every answer follows (``--json-schema`` etc., or a chat command), as its label."""
        return self.sess.constraint.spec.label if self.sess.constraint is not None else None

    def set_constraint(self, kind: str | None, value: object = None) -> None:
        """``/json-schema FILE|JSON``, ``/json-object``, ``/regex P``, ``/grammar FILE``; None: ``/constraint off``.

        Checked and bound to the model before it replaces the current one (a bad schema changes nothing).
        """
        if kind is None:
            self.sess.constraint = None
            return
        from mlxgen import constraint

        spec = constraint.make_spec(kind, True if kind == "json_object" else value, where="/" + kind.replace("_", "-"))
        self.sess.constraint = self.sess.bind(spec)

    def set(self, name: str, value: str) -> None:
        """``/set NAME VALUE``; the value is checked as the config checks it."""
        key = settings.canonical(name)
        if key is None:
            import difflib

            known = [*settings.BY_NAME, *settings.ALIASES]
            close = difflib.get_close_matches(name.strip().lower().replace("-", "_"), known, n=1, cutoff=0.6)
            hint = f"did you mean {settings.canonical(close[0])}? " if close else ""
            raise ConfigError(f"/set {name}: unknown setting; {hint}one of {', '.join(settings.BY_NAME)}")
        self.apply({key: settings.parse(key, value)})

    def apply(self, values: dict) -> None:
        params = dataclasses.replace(self.params, **{k: v for k, v in values.items() if k in settings.BY_NAME})
        params.validate()
        self.params = params

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
        self.messages, self.turns, self.start = messages, [], 0


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
    unknown = set(data.get("settings") or {}) - set(settings.BY_NAME)
    if unknown:
        raise bad(f"unknown setting {sorted(unknown)[0]!r}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]
