"""Chat templates: the prompt text the model actually sees.

Precedence: ``--raw`` (no template) > the config's ``chat_template`` (the article's
``{{ message }}`` form) > the model's own Jinja template (tokenizer config or GGUF
metadata) > a plain ChatML fallback. Templates render in a sandbox, as transformers
does, with a ``messages`` list (the optional system prompt first).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime

from mlxgen.errors import ConfigError

EMPTY_THINK = "<think>\n\n</think>\n\n"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class PromptSpec:
    template: str | None  # None: raw completion
    origin: str  # "raw", "config", "model", "fallback (ChatML)"
    system: str | None = None
    thinking: bool | None = None
    think_token: bool = True  # the vocabulary has <think>: an empty block can be prefilled


def choose_template(
    raw: bool,
    config_template: str | None,
    model_template: str | None,
    system: str | None = None,
    thinking: bool | None = None,
    think_token: bool = True,
) -> PromptSpec:
    if raw:
        template, origin = None, "raw"
    elif config_template:
        template, origin = config_template, "config"
    elif model_template:
        template, origin = model_template, "model"
    else:
        template, origin = CHATML, "fallback (ChatML)"
    return PromptSpec(template, origin, system, thinking, think_token)


def render(spec: PromptSpec, message: str, special: dict[str, str] | None = None) -> str:
    """The prompt text for one user message."""
    return render_messages(spec, [{"role": "user", "content": message}], special)


def render_messages(spec: PromptSpec, messages: list[dict], special: dict[str, str] | None = None) -> str:
    """The prompt text for a conversation: user and assistant turns, the last one the user's.

    A model's Jinja template gets the whole ``messages`` list (the system prompt first).
    A config ``{{ message }}`` template renders one turn only, so a conversation is the
    concatenation of its turns as each was sent: the rendered user message, the answer,
    and the end-of-turn token that closed it (``eos_token``, plus a newline where the
    template closes the user's message that way, as ChatML does). Raw mode joins the
    turns' texts, a newline before each new user line.
    """
    if spec.template is None:
        return "".join(("\n" if i and m["role"] == "user" else "") + m["content"] for i, m in enumerate(messages))
    if spec.origin == "config":
        return "".join(_config_turns(spec, messages, special or {}))
    return _render(spec, messages, special)


def _config_turns(spec: PromptSpec, messages: list[dict], special: dict[str, str]):
    eos = special.get("eos_token", "")
    closing = eos
    for m in messages:
        if m["role"] == "user":
            text = _render(spec, [m], special)
            after = text[text.rfind(m["content"]) + len(m["content"]) :] if m["content"] else ""
            closing = eos + "\n" if eos and after.startswith(eos + "\n") else eos
            yield text
        else:
            yield m["content"] + closing


def _render(spec: PromptSpec, messages: list[dict], special: dict[str, str] | None) -> str:
    messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + list(messages)
    try:
        text = _render_once(spec, messages, special)
    except ConfigError as first:
        folded = _fold_system(messages)
        if folded is None:
            raise
        try:  # a template that refuses the system role (Gemma): the system text opens the first user turn
            text = _render_once(spec, folded, special)
        except ConfigError:
            raise first from None
    prefill_empty = spec.thinking is False and "enable_thinking" not in spec.template and spec.think_token
    if prefill_empty and not text.rstrip().endswith("</think>"):
        text += EMPTY_THINK  # the article's trick: prefill an empty thinking block
    return text


def _render_once(spec: PromptSpec, messages: list[dict], special: dict[str, str] | None) -> str:
    context = dict(special or {})
    context.update(messages=messages, message=messages[-1]["content"], add_generation_prompt=True)
    if spec.thinking is not None and "enable_thinking" in spec.template:
        context["enable_thinking"] = spec.thinking
    try:
        # A config template (the article's `{{ message }}` form) is the literal prompt:
        # keep its trailing newline. Model templates render as transformers does (dropped).
        return _compile(spec.template, keep_trailing_newline=spec.origin == "config").render(**context)
    except ConfigError:
        raise
    except Exception as e:  # jinja2.TemplateError and errors raised by the template itself
        raise ConfigError(f"chat template ({spec.origin}): {type(e).__name__}: {e}; {RAW_HINT}") from None


def _fold_system(messages: list[dict]) -> list[dict] | None:
    """The conversation without a system message: its text put before the first user message's."""
    if not messages or messages[0]["role"] != "system":
        return None
    rest = [dict(m) for m in messages[1:]]
    first = next((m for m in rest if m["role"] == "user"), None)
    if first is None:
        return None
    first["content"] = f"{messages[0]['content']}\n\n{first['content']}"
    return rest


@functools.lru_cache(maxsize=8)
def _compile(template: str, keep_trailing_newline: bool = False):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise ConfigError(f"chat template: {message}; {RAW_HINT}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=keep_trailing_newline,
        extensions=[loopcontrols, _generation_extension()], undefined=_lenient_undefined(),
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ConfigError(f"chat template: not valid Jinja: {e}; {RAW_HINT}") from None


RAW_HINT = "--raw sends the prompt without a template"


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False, separators=None, **_):
    """transformers' ``tojson``: no HTML escaping, the indent/ensure_ascii/sort_keys/separators arguments."""
    from jinja2 import Undefined

    def default(o):
        if isinstance(o, Undefined):
            return None
        raise TypeError(f"{type(o).__name__} is not JSON serializable")

    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, sort_keys=sort_keys,
                      separators=separators, default=default)


@functools.lru_cache(maxsize=1)
def _generation_extension():
    """transformers' ``{% generation %}...{% endgeneration %}`` (it marks assistant text): renders its body."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


@functools.lru_cache(maxsize=1)
def _lenient_undefined():
    """Jinja's Undefined, except that joining it to a string gives the string (a tool list not passed)."""
    from jinja2 import Undefined

    class Lenient(Undefined):
        __slots__ = ()

        def __add__(self, other):
            return other if isinstance(other, str) else Undefined.__add__(self, other)

        def __radd__(self, other):
            return other if isinstance(other, str) else Undefined.__radd__(self, other)

    return Lenient
