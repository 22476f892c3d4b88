"""Chat templates: precedence, rendering, system prompt, the thinking switch."""

from __future__ import annotations

import pytest

from mlxgen.chat import CHATML, EMPTY_THINK, choose_template, render
from mlxgen.errors import ConfigError

ARTICLE = "<|im_start|>user\n{{ message }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

# A model's own template, HF style: messages, add_generation_prompt, special tokens.
MODEL = (
    "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}[/{{ m.role }}]{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)

# Qwen3-like: the template itself reacts to enable_thinking.
QWEN3 = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)

# Shows what the template received, so a test can see the switch was passed.
SWITCH_PROBE = "{{ messages[-1].content }}|enable_thinking={{ enable_thinking if enable_thinking is defined else 'unset' }}"


def spec(model=MODEL, config=None, raw=False, system=None, thinking=None, think_token=True):
    return choose_template(raw, config, model, system, thinking, think_token)


# -------------------------------------------------------------------------- precedence


def test_precedence_raw_config_model_fallback():
    assert choose_template(True, ARTICLE, MODEL).origin == "raw"
    assert choose_template(True, ARTICLE, MODEL).template is None
    assert choose_template(False, ARTICLE, MODEL).origin == "config"
    assert choose_template(False, None, MODEL).origin == "model"
    fallback = choose_template(False, None, None)
    assert (fallback.origin, fallback.template) == ("fallback (ChatML)", CHATML)


def test_empty_config_template_does_not_override_the_model():
    assert choose_template(False, "", MODEL).template == MODEL


# ------------------------------------------------------------------------------ render


def test_model_template_gets_messages_with_the_system_prompt_first():
    text = render(spec(system="Be brief."), "Hi!", {"bos_token": "<s>"})
    assert text == "<s>[system]Be brief.[/system][user]Hi![/user][assistant]"


def test_model_template_without_system_prompt():
    assert render(spec(), "Hi!", {"bos_token": ""}) == "[user]Hi![/user][assistant]"


def test_config_template_overrides_the_models():
    s = spec(config=ARTICLE)
    assert s.origin == "config"
    text = render(s, "¿Qué es MLX? 你好")
    assert text == ARTICLE.replace("{{ message }}", "¿Qué es MLX? 你好")
    assert "[user]" not in text


def test_raw_gives_the_text_unchanged():
    message = "  Once upon a time {{ not jinja }}\n"
    for thinking in (None, False, True):
        s = spec(config=ARTICLE, raw=True, system="ignored", thinking=thinking)
        assert render(s, message) == message


def test_chatml_fallback():
    s = spec(model=None, system="sys")
    assert render(s, "hi") == "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_template_is_not_reformatted_by_jinja_options():
    # trim_blocks/lstrip_blocks must not eat the newlines around {{ message }}
    text = render(spec(config="A\n{{ message }}\n  B\n"), "m")
    assert text == "A\nm\n  B\n"


def test_config_template_keeps_its_trailing_newlines():
    # The article's template ends in "</think>\n\n": the model must see both newlines.
    assert render(spec(config="U: {{ message }}\n"), "hi") == "U: hi\n"
    assert render(spec(config=ARTICLE), "hi").endswith("</think>\n\n")


def test_model_template_drops_one_trailing_newline_like_transformers():
    assert render(spec(model="U: {{ message }}\n"), "hi") == "U: hi"


# ----------------------------------------------------------------------------- thinking


def test_thinking_false_is_passed_to_a_template_that_supports_it():
    s = spec(model=QWEN3, thinking=False)
    text = render(s, "hi")
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert text.count("<think>") == 1  # the template's block, not a second one from us


@pytest.mark.parametrize("thinking, shown", [(False, "False"), (True, "True"), (None, "unset")])
def test_enable_thinking_reaches_the_template(thinking, shown):
    text = render(spec(model=SWITCH_PROBE, thinking=thinking), "q")
    assert text == f"q|enable_thinking={shown}"  # and nothing appended


@pytest.mark.parametrize("thinking", [True, None])
def test_thinking_on_or_default_leaves_a_switch_template_alone(thinking):
    text = render(spec(model=QWEN3, thinking=thinking), "hi")
    assert "<think>" not in text
    assert text.endswith("<|im_start|>assistant\n")


def test_thinking_false_without_switch_prefills_an_empty_think_block():
    text = render(spec(model=MODEL, thinking=False, think_token=True), "hi", {"bos_token": ""})
    assert text == "[user]hi[/user][assistant]" + EMPTY_THINK
    assert EMPTY_THINK == "<think>\n\n</think>\n\n"


def test_thinking_false_without_a_think_token_prefills_nothing():
    text = render(spec(model=MODEL, thinking=False, think_token=False), "hi", {"bos_token": ""})
    assert text == "[user]hi[/user][assistant]"


@pytest.mark.parametrize("thinking", [True, None])
def test_no_prefill_unless_thinking_is_off(thinking):
    text = render(spec(model=MODEL, thinking=thinking), "hi", {"bos_token": ""})
    assert "<think>" not in text


@pytest.mark.parametrize("thinking", [False, None, True])
def test_article_template_is_never_double_prefilled(thinking):
    text = render(spec(config=ARTICLE, thinking=thinking), "hi")
    assert text == ARTICLE.replace("{{ message }}", "hi")
    assert text.count("<think>") == 1 and text.count("</think>") == 1


# ------------------------------------------------------------------------------- errors


def test_template_raise_exception_becomes_a_config_error():
    s = spec(model="{{ raise_exception('System role not supported') }}")
    with pytest.raises(ConfigError, match="System role not supported"):
        render(s, "hi")


def test_invalid_jinja_is_a_config_error():
    with pytest.raises(ConfigError, match="Jinja"):
        render(spec(model="{% for m in messages %}unclosed"), "hi")


def test_template_runtime_error_names_the_origin():
    with pytest.raises(ConfigError, match=r"chat template \(model\)"):
        render(spec(model="{{ messages[5].content }}"), "hi")


def test_templates_render_in_a_sandbox():
    with pytest.raises(ConfigError):
        render(spec(model="{{ ''.__class__.__mro__[1].__subclasses__() }}"), "hi")


def test_tojson_keeps_non_ascii():
    assert render(spec(model="{{ messages | tojson }}"), "ñ") == '[{"role": "user", "content": "ñ"}]'
