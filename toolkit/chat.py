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
    if spec.template is None:
        return message
    messages = ([{"role": "system", "content": spec.system}] if spec.system else []) + [
        {"role": "user", "content": message}
    ]
    context = dict(special or {})
    context.update(messages=messages, message=message, add_generation_prompt=True)
    supports_switch = "enable_thinking" in spec.template
    if spec.thinking is not None and supports_switch:
        context["enable_thinking"] = spec.thinking
    try:
        # A config template (the article's `{{ message }}` form) is the literal prompt:
        # keep its trailing newline. Model templates render as transformers does (dropped).
        text = _compile(spec.template, keep_trailing_newline=spec.origin == "config").render(**context)
    except ConfigError:
        raise
    except Exception as e:  # jinja2.TemplateError and errors raised by the template itself
        raise ConfigError(f"chat template ({spec.origin}): {type(e).__name__}: {e}") from None
    prefill_empty = spec.thinking is False and not supports_switch and spec.think_token
    if prefill_empty and not text.rstrip().endswith("</think>"):
        text += EMPTY_THINK  # the article's trick: prefill an empty thinking block
    return text


@functools.lru_cache(maxsize=8)
def _compile(template: str, keep_trailing_newline: bool = False):
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise ConfigError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=keep_trailing_newline, extensions=[loopcontrols]
    )
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ConfigError(f"chat template: not valid Jinja: {e}") from None
