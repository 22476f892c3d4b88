"""`mlxgen chat`: read a line, stream the answer, repeat. Slash commands steer it.

Answers go to stdout (or one JSON object per turn with ``--json``); prompts, per-turn
stats and command replies go to stderr. Works the same on a terminal and with lines
piped in. Ctrl-C stops the answer being streamed (what was said is kept) or, at the
prompt, clears the line; Ctrl-D (end of input) or /exit ends the chat.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Callable, TextIO

import textwrap

from mlxgen import render, settings
from mlxgen.conversation import Conversation, Turn
from mlxgen.errors import MlxgenError

CONSTRAINTS = {"json-schema": "json_schema", "json-object": "json_object", "regex": "regex", "grammar": "grammar"}
PROMPT = ">>> "
MORE = "... "  # inside a multi-line message
FENCE = '"""'  # a message between triple quotes spans lines
_SET = textwrap.fill("a sampling setting: " + ", ".join(settings.BY_NAME), 58, subsequent_indent=" " * 21)
HELP = f"""\
/reset               forget the conversation and empty the cache
/system [TEXT]       set the system prompt (no TEXT: remove it)
/think on|off        the thinking switch (Qwen3 style); /think alone shows it
/set [NAME VALUE]    {_SET}
/json-schema FILE    answers must be JSON valid against this schema (a file or the JSON)
/json-object         answers must be one JSON object
/regex PATTERN       answers must match this regular expression
/grammar FILE        answers must follow this Lark grammar (a file or the text)
/constraint [off]    show the constraint (as --json-schema etc. set it), or remove it
/stats               tokens reused and prefilled, speeds, the settings
/save FILE           the conversation as JSON       /load FILE   continue a saved one
/exit                quit (or Ctrl-D)               //text       send text that starts with /
\"\"\"                  start and end a message of several lines"""


class Repl:
    def __init__(self, conv: Conversation, *, as_json: bool = False, quiet: bool = False,
                 stdin=None, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.conv = conv
        self.as_json, self.quiet = as_json, quiet
        self.stdin = stdin if stdin is not None else sys.stdin
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.interactive = bool(getattr(self.stdin, "isatty", lambda: False)())
        if self.interactive:
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
        self.failed = False
        self.commands: dict[str, Callable[[str], bool | None]] = {
            "help": self.cmd_help, "reset": self.cmd_reset, "system": self.cmd_system, "think": self.cmd_think,
            "set": self.cmd_set, "stats": self.cmd_stats, "save": self.cmd_save, "load": self.cmd_load,
            "exit": self.cmd_exit, "quit": self.cmd_exit, "constraint": self.cmd_constraint,
            **{name: functools.partial(self.cmd_constrain, kind) for name, kind in CONSTRAINTS.items()},
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        """Until /exit or end of input; 1 if a line failed in a piped (scripted) session."""
        lineno = 0
        while True:
            try:
                line = self.read()
            except KeyboardInterrupt:
                self.say("\n(Ctrl-D or /exit to quit)")
                continue
            except UnicodeDecodeError as e:
                lineno += 1
                self.error(MlxgenError(f"input line {lineno} is not valid UTF-8 (byte {e.start}); skipped"))
                continue
            if line is None:
                if self.interactive:
                    self.say("")
                return 1 if self.failed and not self.interactive else 0
            lineno += 1
            try:
                if self.handle(line) is False:
                    return 1 if self.failed and not self.interactive else 0
            except KeyboardInterrupt:  # between the answer and its bookkeeping: nothing lost
                self.say("\n(interrupted)")
            except MlxgenError as e:
                self.error(e)

    def read(self) -> str | None:
        """One message: a line, or several between triple quotes (as ollama); None at end of input."""
        line = self.read_line()
        if line is None or not line.startswith(FENCE):
            return line
        parts, line = [], line[len(FENCE):]
        while not line.endswith(FENCE):
            parts.append(line)
            line = self.read_line(MORE)
            if line is None:  # end of input inside the quotes: send what was written
                return "\n".join(parts).strip("\n")
        parts.append(line[: -len(FENCE)])
        return "\n".join(parts).strip("\n")

    def read_line(self, prompt: str = PROMPT) -> str | None:
        """One line without its newline; None at end of input."""
        if self.interactive:
            try:
                if self.out.isatty():
                    return input(prompt)
                self.err.write(prompt)
                self.err.flush()
                return input()
            except EOFError:
                return None
        raw = self.stdin.buffer.readline() if hasattr(self.stdin, "buffer") else self.stdin.readline()
        if not raw:
            return None
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return text.rstrip("\r\n")

    def handle(self, line: str) -> bool | None:
        """One input line; False means: stop."""
        if not line.strip():
            return None
        if line.startswith("/") and not line.startswith("//"):
            name, _, arg = line[1:].partition(" ")
            command = self.commands.get(name.lower().replace("_", "-"))
            if command is None:
                raise MlxgenError(f"/{name}: unknown command; /help lists them")
            return command(arg.strip())
        self.answer(line[1:] if line.startswith("//") else line)
        return None

    def answer(self, text: str) -> None:
        turn = self.conv.turn(text, lambda events: render.stream(events, echo=not self.as_json))
        if self.as_json:
            self.emit(turn_dict(len(self.conv.turns), text, turn))
        elif not self.quiet:
            self.say(turn_line(turn))
        if turn.complete is False:  # never claimed valid (as run's warning)
            why = {"length": "max_length was reached (/set max_length N)", "context": "the context is full",
                   "stop": "a stop string ended it", "interrupted": "it was interrupted"}.get(turn.done.reason,
                                                                                           turn.done.reason)
            self.say(f"mlxgen: warning: the answer is incomplete for {turn.constraint}: {why}")
        if turn.done.reason == "context":
            self.say(f"the context is full ({self.conv.sess.backend.n_ctx} tokens): /reset to start over")
        elif turn.done.reason == "interrupted":
            self.say("(stopped: the answer so far is kept)")

    # -------------------------------------------------------------- commands
    def cmd_help(self, arg: str) -> None:
        self.say(HELP)

    def cmd_reset(self, arg: str) -> None:
        self.conv.reset()
        self.say("(conversation and cache cleared)")

    def cmd_system(self, arg: str) -> None:
        self.conv.set_system(arg)
        self.say(f"(system prompt: {arg!r})" if arg else "(system prompt removed: the template's default applies)")

    def cmd_think(self, arg: str) -> None:
        choice = {"on": True, "off": False, "": None}.get(arg.lower(), "bad")
        if choice == "bad":
            raise MlxgenError(f"/think {arg}: expected on or off")
        if choice is not None:
            self.conv.set_thinking(choice)
        state = {True: "on", False: "off", None: "the template's default"}[self.conv.spec.thinking]
        self.say(f"(thinking: {state})")

    def cmd_set(self, arg: str) -> None:
        if arg:
            name, _, value = arg.partition(" ")
            if not value.strip():
                raise MlxgenError(f"/set {name}: give a value, e.g. /set temperature 0.2")
            self.conv.set(name, value)
        self.say("(" + " · ".join(f"{k} {v}" for k, v in self.conv.settings().items()) + ")")

    def cmd_constrain(self, kind: str, arg: str) -> None:
        if kind == "json_object" and arg:
            raise MlxgenError(f"/json-object takes no value (any JSON object); /json-schema {arg} for a schema")
        self.conv.set_constraint(kind, arg)
        self.say(f"(constraint: {self.conv.constraint}; /constraint off removes it)")

    def cmd_constraint(self, arg: str) -> None:
        if arg.lower() == "off":
            self.conv.set_constraint(None)
        elif arg:
            raise MlxgenError(f"/constraint {arg}: expected off (or nothing, to show it); "
                              "/json-schema, /json-object, /regex or /grammar set one")
        self.say(f"(constraint: {self.conv.constraint or 'none'})")

    def cmd_stats(self, arg: str) -> None:
        data = stats_dict(self.conv)
        if self.as_json:
            self.emit({"stats": data})
        else:
            self.say(stats_text(data))

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise MlxgenError("/save FILE: give a file name")
        self.conv.save(arg)
        self.say(f"(saved {render.plural(len(self.conv.messages) // 2, 'turn')} to {arg})")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise MlxgenError("/load FILE: give a file name")
        self.conv.load(arg)
        self.say(f"(loaded {render.plural(len(self.conv.messages) // 2, 'turn')} from {arg})")

    def cmd_exit(self, arg: str) -> bool:
        return False

    # ---------------------------------------------------------------- output
    def say(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def error(self, e: MlxgenError) -> None:
        self.failed = True
        self.say(f"mlxgen: error: {e}")

    def emit(self, data: dict) -> None:
        print(json.dumps(data, ensure_ascii=False), file=self.out, flush=True)


def turn_line(turn: Turn) -> str:
    s = turn.done.stats
    return (
        f"[{turn.prompt_tokens} prompt tokens: {turn.reused} reused, {turn.new} new · "
        f"prefill {_fmt(s.prefill_tps)} tok/s · {s.generated_tokens} generated · "
        f"decode {_fmt(s.decode_tps)} tok/s · stop: {turn.done.reason}{shift_text(turn)}]"
    )


def shift_text(turn: Turn) -> str:
    """`` · context shift: …`` when a full context dropped the oldest turns or tokens this turn."""
    shift = turn.shift
    if shift is None:
        return ""
    parts = []
    if shift["dropped_turns"]:
        how = "shifted in place" if shift["in_place"] else "the rest prefilled again"
        parts.append(f"dropped the oldest {render.plural(shift['dropped_turns'], 'turn')} "
                     f"({shift['dropped_tokens']} tokens, {how})")
    if shift["answer_shifts"]:
        parts.append(f"{shift['answer_dropped_tokens']} tokens dropped mid-answer "
                     f"({render.plural(shift['answer_shifts'], 'shift')})")
    return " · context shift: " + "; ".join(parts)


def turn_dict(n: int, user: str, turn: Turn) -> dict:
    extra = {"constraint": {"label": turn.constraint, "complete": turn.complete}} if turn.constraint else {}
    return {
        "turn": n,
        "user": user,
        "text": turn.done.text,
        "tokens": turn.done.tokens,
        "stop_reason": turn.done.reason,
        "prompt_tokens": turn.prompt_tokens,
        "reused_tokens": turn.reused,
        "new_tokens": turn.new,
        "context_shift": turn.shift,
        "stats": turn.done.stats.as_dict(),
        **extra,
    }


def stats_dict(conv: Conversation) -> dict:
    last = conv.turns[-1] if conv.turns else None
    return {
        "turns": len(conv.messages) // 2,
        "cached_tokens": conv.n_cached,
        "n_ctx": conv.sess.backend.n_ctx,
        "reused_tokens": sum(t.reused for t in conv.turns),
        "prefilled_tokens": sum(t.new for t in conv.turns),
        "generated_tokens": sum(t.done.stats.generated_tokens for t in conv.turns),
        "last": turn_dict(len(conv.turns), "", last) if last else None,
        "settings": conv.settings(),
        "constraint": conv.constraint,
        "system": conv.spec.system,
        "thinking": conv.spec.thinking,
        "backend": conv.sess.backend.name,
        "device": conv.sess.backend.device,
    }


def stats_text(d: dict) -> str:
    lines = [
        f"backend {d['backend']} on {d['device']} · {render.plural(d['turns'], 'turn')} · "
        f"{d['cached_tokens']} of {d['n_ctx']} context tokens in the cache",
        f"prompt tokens: {d['reused_tokens']} reused, {d['prefilled_tokens']} prefilled · "
        f"{d['generated_tokens']} generated",
    ]
    if d["last"]:
        s = d["last"]["stats"]
        lines.append(
            f"last turn: {d['last']['reused_tokens']} reused, {d['last']['new_tokens']} new · "
            f"prefill {_fmt(s['prefill_tps'])} tok/s · decode {_fmt(s['decode_tps'])} tok/s · "
            f"stop: {d['last']['stop_reason']}"
        )
    lines.append("settings: " + " · ".join(f"{k} {v}" for k, v in d["settings"].items()))
    if d["constraint"]:
        lines.append(f"constraint: {d['constraint']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"
