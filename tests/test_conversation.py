"""`mlxgen chat` without a real model: cache reuse, /reset, slash commands, Ctrl-C, context full.

A recording fake backend keeps the ids it holds, so every test can check that what
the conversation believes is cached is what the backend really holds.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from conftest import FakeTokenizer, one_hot_logits
from mlxgen import chat
from mlxgen.config import Config, InferenceConfig
from mlxgen.conversation import ContextFull, Conversation
from mlxgen.prompt_cache import PromptCache, common_prefix
from mlxgen.errors import ConfigError, MlxgenError
from mlxgen.hardware import Choice
from mlxgen.repl import Repl
from mlxgen.session import Session

EOS = "<|im_end|>"


class RecordingBackend:
    """Answers 'ok' then EOS; records every token it is sent; holds the ids it has cached."""

    name, device, vocab_size = "fake", "cpu (fake)", 300

    def __init__(self, tok: FakeTokenizer, n_ctx: int = 4096, answer: str = "ok", interrupt_at: int | None = None):
        self.tok, self.n_ctx = tok, n_ctx
        self.answer = [tok.piece(c) for c in answer] + [tok.eos_id]
        self.cache: list[int] = []
        self.prefills: list[list[int]] = []
        self.steps = 0
        self.interrupt_at = interrupt_at
        self._since_prefill = 0

    @property
    def n_cached(self) -> int:
        return len(self.cache)

    def prefill(self, ids):
        self.prefills.append([int(i) for i in ids])
        self.cache += [int(i) for i in ids]
        assert len(self.cache) <= self.n_ctx
        self._since_prefill = 0
        return self._logits()

    def step(self, token):
        self.steps += 1
        if self.interrupt_at is not None and self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        self.cache.append(int(token))
        assert len(self.cache) <= self.n_ctx
        self._since_prefill += 1
        return self._logits()

    def trim(self, n):
        del self.cache[n:]

    def close(self):
        pass

    def _logits(self):
        target = self.answer[min(self._since_prefill, len(self.answer) - 1)]
        return one_hot_logits(target, self.vocab_size)


class ChatTokenizer:
    """FakeTokenizer with the attributes a Session needs; the ChatML markers are single ids."""

    def __init__(self):
        self.fake = FakeTokenizer()
        self.special = {"eos_token": EOS}
        self.marks = {m: self.fake.piece(m) for m in ("<|im_start|>", EOS)}

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            mark = next((m for m in self.marks if text.startswith(m, i)), None)
            if mark:
                ids.append(self.marks[mark])
                i += len(mark)
            else:
                ids += list(text[i].encode())
                i += 1
        return ids

    def decode(self, ids):
        return self.fake.decode(ids)


def make_conv(n_ctx=4096, template=chat.CHATML, origin="model", answer="ok", interrupt_at=None, max_length=16,
              overflow=None, backend_cls=None):
    tok = ChatTokenizer()
    backend = (backend_cls or RecordingBackend)(tok.fake, n_ctx, answer, interrupt_at)
    cfg = Config(inference=InferenceConfig(temperature=0.0, max_length=max_length, context_overflow=overflow))
    spec = chat.PromptSpec(template, origin)
    sess = Session(cfg, Choice("fake", "test"), backend, tok, (tok.fake.eos_id,), spec, 0.0)
    return Conversation(sess), backend


def drain(events):
    *_, done = list(events)
    return done


def cache_is_true(conv: Conversation, backend: RecordingBackend) -> None:
    """What the conversation believes is cached is what the backend holds."""
    assert conv.sess.cache.ids == backend.cache


# ------------------------------------------------------------------ reuse


def test_second_turn_prefills_only_the_new_tokens():
    conv, backend = make_conv()
    ids1 = conv.prompt_ids("Hello")
    t1 = conv.turn("Hello", drain)
    assert (t1.reused, t1.new) == (0, len(ids1))
    assert t1.done.text == "ok" and t1.done.reason == "eos"
    ids2 = conv.prompt_ids("And you?")
    sent_before = sum(map(len, backend.prefills))
    t2 = conv.turn("And you?", drain)
    sent = sum(map(len, backend.prefills)) - sent_before
    assert sent == t2.new == len(ids2) - t2.reused  # the backend got exactly the new tokens
    # everything of turn 1 is reused: its prompt and the answer ("ok"; the EOS was never stepped)
    assert t2.reused == len(ids1) + 2
    assert ids2[: t2.reused] == ids1 + backend.answer[:2]
    assert backend.prefills[-1] == ids2[t2.reused :]
    cache_is_true(conv, backend)


def test_reset_clears_history_and_cache():
    conv, backend = make_conv()
    conv.turn("Hello", drain)
    conv.turn("Again", drain)
    conv.reset()
    assert backend.cache == [] and conv.messages == []
    ids = conv.prompt_ids("Again")
    t = conv.turn("Again", drain)
    assert (t.reused, t.new) == (0, len(ids))
    assert backend.prefills[-1] == ids
    assert conv.messages == [{"role": "user", "content": "Again"}, {"role": "assistant", "content": "ok"}]


def test_changing_the_system_prompt_reuses_only_the_common_prefix():
    conv, backend = make_conv()
    conv.turn("Hello", drain)
    held = list(backend.cache)
    conv.set_system("Be brief.")
    ids = conv.prompt_ids("More")
    assert "Be brief." in chat.render_messages(conv.spec, [{"role": "user", "content": "More"}])
    t = conv.turn("More", drain)
    assert t.reused == common_prefix(held, ids) == len(conv.sess.tokenizer.encode("<|im_start|>"))
    assert t.reused + t.new == len(ids)
    cache_is_true(conv, backend)


def test_identical_prompt_still_prefills_one_token():
    conv, backend = make_conv()
    conv.turn("Hello", drain)
    conv.messages = []  # the same first prompt again
    ids = conv.prompt_ids("Hello")
    t = conv.turn("Hello", drain)
    assert (t.new, t.reused) == (1, len(ids) - 1)
    cache_is_true(conv, backend)


def test_interrupted_answer_is_kept_and_the_cache_stays_consistent():
    conv, backend = make_conv(answer="abcdefgh", interrupt_at=3)
    ids1 = conv.prompt_ids("Tell me")
    t = conv.turn("Tell me", drain)
    assert t.done.reason == "interrupted"
    assert t.done.text == "abc"  # sampled before the interrupt
    assert conv.messages[-1] == {"role": "assistant", "content": "abc"}
    cache_is_true(conv, backend)
    backend.interrupt_at = None
    t2 = conv.turn("Go on", drain)
    assert (t2.done.reason, t2.done.text) == ("eos", "abcdefgh")
    assert t2.reused == len(ids1) + 2  # the prompt, "a" and "b": "c" was sampled but never stepped
    cache_is_true(conv, backend)


class PrefillInterrupted(RecordingBackend):
    """Ctrl-C lands during the prefill of the first turn, after half the prompt was cached."""

    def prefill(self, ids):
        if self.interrupt_at == 0:
            self.interrupt_at = None
            self.cache += [int(i) for i in ids[: len(ids) // 2]]
            raise KeyboardInterrupt
        return super().prefill(ids)


def test_ctrl_c_before_any_text_keeps_no_empty_turn():
    conv, _ = make_conv()
    backend = PrefillInterrupted(conv.sess.backend.tok, interrupt_at=0)
    conv.sess.backend, conv.sess.cache = backend, PromptCache(backend)
    t = conv.turn("Tell me", drain)
    assert (t.done.reason, t.done.text, conv.messages) == ("interrupted", "", [])
    cache_is_true(conv, backend)
    t2 = conv.turn("Tell me", drain)  # the same question again: a clean first turn
    assert (t2.done.reason, t2.done.text) == ("eos", "ok") and len(conv.messages) == 2
    cache_is_true(conv, backend)


def test_context_full_is_refused_before_touching_the_cache():
    conv, backend = make_conv(n_ctx=90, overflow="stop")
    conv.turn("Hello", drain)
    before = (list(backend.cache), list(conv.messages))
    with pytest.raises(ContextFull, match="/reset"):
        conv.turn("x" * 80, drain)
    assert (backend.cache, conv.messages) == before
    conv.reset()
    assert conv.turn("Hi", drain).done.text == "ok"


def test_answer_cut_by_the_context_says_context():
    conv, backend = make_conv(n_ctx=40, answer="a" * 60, max_length=100, overflow="stop")
    t = conv.turn("Hi", drain)
    assert t.done.reason == "context"
    assert len(backend.cache) < 40
    cache_is_true(conv, backend)


# --------------------------------------------------------------- settings


def test_set_checks_values_like_the_config():
    conv, _ = make_conv()
    conv.set("temperature", "0.2")
    conv.set("top-k", "5")
    conv.set("max_tokens", "7")
    conv.set("seed", "none")
    assert (conv.params.temperature, conv.params.top_k, conv.params.max_length, conv.params.seed) == (0.2, 5, 7, None)
    with pytest.raises(ConfigError, match="top_p: 1.5 is not allowed"):
        conv.set("top_p", "1.5")
    with pytest.raises(ConfigError, match="not a number"):
        conv.set("temperature", "hot")
    with pytest.raises(ConfigError, match="unknown setting"):
        conv.set("top_q", "1")
    with pytest.raises(ConfigError, match="max_length"):
        conv.set("max_length", "0")
    assert conv.params.top_p == InferenceConfig().top_p  # unchanged


def test_save_and_load_round_trip(tmp_path):
    conv, _ = make_conv()
    conv.set_system("Be brief.")
    conv.set("temperature", "0")
    conv.turn("Hello", drain)
    path = tmp_path / "chat.json"
    conv.save(str(path))
    data = json.loads(path.read_text())
    assert data["format"] == "mlxgen-chat" and data["system"] == "Be brief."
    assert data["messages"] == [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "ok"}]
    other, backend = make_conv()
    other.load(str(path))
    assert other.messages == conv.messages and other.spec.system == "Be brief."
    assert other.prompt_ids("Next") == conv.prompt_ids("Next")


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not a JSON file"),
        ('{"messages": []}', "not a saved mlxgen conversation"),
        ('{"format": "mlxgen-chat", "messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}',
         r"messages\[0\] must be"),
        ('{"format": "mlxgen-chat", "messages": [{"role": "user", "content": "x"}]}', "the last message"),
        ('{"format": "mlxgen-chat", "messages": [], "settings": {"top_p": 3}}', "top_p: 3 is not allowed"),
    ],
)
def test_load_refuses_bad_files(tmp_path, content, message):
    conv, _ = make_conv()
    conv.turn("Hello", drain)
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(MlxgenError, match=message):
        conv.load(str(path))
    assert len(conv.messages) == 2  # nothing changed


def test_save_to_a_missing_folder_is_an_error(tmp_path):
    conv, _ = make_conv()
    with pytest.raises(MlxgenError, match="cannot write"):
        conv.save(str(tmp_path / "nope" / "x.json"))


# -------------------------------------------------------------- templates


def test_config_template_conversation_is_the_turns_as_sent():
    article = "<|im_start|>user\n{{ message }}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    spec = chat.choose_template(False, article, None)
    special = {"eos_token": EOS}
    one = chat.render(spec, "Hi", special)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}]
    text = chat.render_messages(spec, messages, special)
    assert text == one + "Hello!<|im_end|>\n" + chat.render(spec, "Bye", special)


def test_model_template_gets_the_whole_history():
    spec = chat.choose_template(False, None, chat.CHATML, system="S")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye"}]
    assert chat.render_messages(spec, messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_raw_conversation_joins_the_turns():
    spec = chat.choose_template(True, None, None)
    messages = [{"role": "user", "content": "Once"}, {"role": "assistant", "content": " upon"},
                {"role": "user", "content": "a time"}]
    assert chat.render_messages(spec, messages) == "Once upon\na time"


# ------------------------------------------------------------------- REPL


class Stdin:
    def __init__(self, data: bytes):
        self.buffer = io.BytesIO(data)

    def isatty(self):
        return False


def repl_run(conv, text: bytes, **kw):
    err = io.StringIO()
    code = Repl(conv, stdin=Stdin(text), err=err, **kw).run()
    return code, err.getvalue()


def test_repl_piped_session_with_commands(tmp_path, capsys):
    conv, backend = make_conv()
    save = tmp_path / "c.json"
    script = f"Hello\n/set temperature 0\nAgain\n/stats\n/save {save}\n/reset\n/think off\n/exit\nignored\n"
    code, err = repl_run(conv, script.encode())
    out = capsys.readouterr().out
    assert code == 0, err
    assert out == "ok\nok\n"  # only the answers on stdout
    assert "0 reused" in err and "2 turns" in err and "cleared" in err and "thinking: off" in err
    assert len(json.loads(save.read_text())["messages"]) == 4
    assert backend.cache == [] and conv.messages == []  # /reset, then /exit before "ignored"


def test_repl_json_lines(capsys):
    conv, _ = make_conv()
    code, err = repl_run(conv, b"Hello\nAgain\n/stats\n", as_json=True)
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0, err
    assert [d.get("turn") for d in lines[:2]] == [1, 2]
    assert lines[1]["reused_tokens"] > 0 and lines[1]["new_tokens"] == lines[1]["stats"]["prefilled_tokens"]
    assert lines[2]["stats"]["turns"] == 2


def test_repl_errors_are_one_line_and_the_session_goes_on(capsys):
    conv, _ = make_conv(n_ctx=90)
    code, err = repl_run(conv, b"/nope\n/set top_p 7\n/think maybe\n/load\n\xff\xfe\n" + b"x" * 100 + b"\nHi\n")
    assert code == 1  # a piped session with errors says so
    lines = [line for line in err.splitlines() if line.startswith("mlxgen: error: ")]
    assert len(lines) == 6, err
    assert "unknown command" in lines[0] and "top_p" in lines[1] and "not valid UTF-8" in lines[4]
    assert "the context holds 90" in lines[5]  # too long for the context even with every earlier turn dropped
    assert capsys.readouterr().out == "ok\n"
    assert "Traceback" not in err


def test_repl_slash_escape_sends_the_text():
    conv, _ = make_conv()
    repl_run(conv, b"//etc/hosts\n")
    assert conv.messages[0]["content"] == "/etc/hosts"


def test_repl_interrupted_answer_says_it_was_kept(capsys):
    conv, _ = make_conv(answer="abcdef", interrupt_at=2)
    code, err = repl_run(conv, b"Go\n")
    assert "stop: interrupted" in err and "answer so far is kept" in err
    assert capsys.readouterr().out == "ab\n"


def test_fake_backend_logits_are_sane():
    tok = FakeTokenizer()
    b = RecordingBackend(tok)
    assert int(np.argmax(b.prefill([1, 2]))) == tok.piece("o")


def test_set_with_a_typo_suggests_the_setting():
    conv, _ = make_conv()
    with pytest.raises(ConfigError, match=r"/set temprature: unknown setting; did you mean temperature\? one of"):
        conv.set("temprature", "0.5")
    with pytest.raises(ConfigError, match=r"/set top-q: unknown setting; did you mean top_p\?"):
        conv.set("top-q", "0.5")


@pytest.mark.parametrize(
    "script, sent",
    [
        (b'"""\nfirst line\nsecond line\n"""\n', "first line\nsecond line"),
        (b'"""first line\nsecond line"""\n', "first line\nsecond line"),
        (b'"""one line"""\n', "one line"),
        (b'"""\nunterminated\n', "unterminated"),  # end of input inside the quotes: sent as written
    ],
)
def test_triple_quotes_send_one_message_of_several_lines(script, sent):
    conv, _ = make_conv()
    code, err = repl_run(conv, script)
    assert code == 0, err
    assert [m["content"] for m in conv.messages if m["role"] == "user"] == [sent]
