"""The `mlxgen` command line. Text goes to stdout, everything else to stderr.

Only click is imported at start-up; each command imports what it needs, so
`mlxgen --help` stays fast and works without any backend installed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from mlxgen import __version__
from mlxgen.errors import MlxgenError, PromptError


class _Group(click.Group):
    """Turn mlxgen's user errors into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlxgenError as e:
            click.echo(f"mlxgen: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C outside a stream (loading, converting)
            click.echo("\nmlxgen: interrupted", err=True)
            ctx.exit(130)
        except BrokenPipeError:  # `mlxgen run ... | head`
            sys.stderr.close()
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlxgen")
def cli() -> None:
    """Local text generation you can see into: one loop, MLX or llama.cpp underneath."""


def config_options(f):
    """Flags that mirror config keys; each overrides the YAML value."""
    options = [
        click.option("-c", "--config", "config", metavar="FILE|PRESET", help="YAML config or preset name (default: smollm2-135m)."),
        click.option("--backend", type=click.Choice(["auto", "mlx", "llama.cpp"]), help="Override hardware detection."),
        click.option("--model", "model_path", metavar="PATH", help="A local GGUF file (llm.path)."),
        click.option("--temperature", "--temp", type=float, help="0 = greedy."),
        click.option("--top-k", type=int, help="0 = off."),
        click.option("--top-p", type=float),
        click.option("--min-p", type=float),
        click.option("--repetition-penalty", "--repeat-penalty", type=float),
        click.option("--max-length", "--max-tokens", "-n", "max_length", type=int, help="Tokens to generate."),
        click.option("--seed", type=int, help="Same seed, same text; none: fresh randomness."),
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        click.option("--system", help="System prompt."),
        click.option("--think/--no-think", "thinking", default=None, help="Thinking switch (Qwen3 style)."),
        click.option("--raw", is_flag=True, default=None, help="No chat template: plain completion."),
        click.option("--ctx", "n_ctx", type=int, help="Context length (llm.n_ctx)."),
        click.option("--threads", "n_threads", type=int, help="CPU threads (llm.n_threads)."),
        click.option("--gpu-layers", "n_gpu_layers", type=int, help="llama.cpp layers on the GPU (-1 = all)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


OVERRIDES = {
    "backend": "backend",
    "model_path": "llm.path",
    "temperature": "inference.temperature",
    "top_k": "inference.top_k",
    "top_p": "inference.top_p",
    "min_p": "inference.min_p",
    "repetition_penalty": "inference.repetition_penalty",
    "max_length": "inference.max_length",
    "seed": "inference.seed",
    "stop": "inference.stop",
    "system": "inference.system_prompt",
    "thinking": "inference.thinking",
    "raw": "inference.raw",
    "n_ctx": "llm.n_ctx",
    "n_threads": "llm.n_threads",
    "n_gpu_layers": "llm.n_gpu_layers",
}


def resolve_config(options: dict[str, Any]):
    from mlxgen.config import load_config

    overrides = {OVERRIDES[k]: v for k, v in options.items() if k in OVERRIDES and v not in (None, ())}
    if "stop" in options and options["stop"]:
        overrides["inference.stop"] = list(options["stop"])
    if overrides.get("llm.path"):  # a local file replaces whatever source the preset named
        overrides.update({"llm.package": None, "llm.repo": None, "llm.mlx.repo": None, "llm.mlx.path": None})
    return load_config(options.get("config"), overrides)


# ------------------------------------------------------------------------ run


@cli.command()
@click.argument("prompt", required=False)
@config_options
@click.option("--dry-run", is_flag=True, help="Print the resolved config, backend and sources; load nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@click.option("--trace", type=click.Path(dir_okay=False, writable=True), help="Write every token id, text and time as JSON.")
@click.option("--show-prompt", is_flag=True, help="Print the templated prompt and its token ids (stderr).")
@click.option("--quiet", "-q", is_flag=True, help="No stats on stderr.")
def run(prompt: str | None, dry_run: bool, as_json: bool, trace: str | None, show_prompt: bool, quiet: bool, **options: Any) -> None:
    """Generate text for PROMPT (or stdin), streamed to stdout."""
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import render, session

    plan = session.plan(cfg, facts)
    if dry_run:
        render.dry_run(plan, as_json)
        return
    message = read_prompt(prompt)
    if trace and not os.path.isdir(os.path.dirname(os.path.abspath(trace))):
        raise MlxgenError(f"--trace {trace}: its folder does not exist")
    sess = session.open_session(cfg, plan.choice)
    try:
        text, ids = sess.prompt(message)
        if show_prompt:
            render.show_prompt(sess, text, ids)
        events = sess.generate(ids)
        done = render.stream(events, echo=not as_json)
    finally:
        sess.close()
    done.stats.load_s = sess.load_s
    if trace:
        render.write_trace(trace, sess, ids, done)
    if as_json:
        click.echo(json.dumps(render.result_dict(sess, plan, done, ids), ensure_ascii=False))
    elif not quiet:
        render.stats(sess, done)
    if done.reason == "interrupted":
        sys.exit(130)


def probe_hardware():
    """Hardware facts, probed before numpy or tokenizers are imported.

    The probe imports llama_cpp. On a CUDA build of llama.cpp (seen on an H200 box),
    loading a model segfaults when numpy or tokenizers was imported before llama_cpp,
    even in plain llama-cpp-python; importing it first avoids that.
    """
    from mlxgen import hardware

    return hardware.gather_facts()


def read_prompt(prompt: str | None) -> str:
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise PromptError("no prompt: give one as an argument or pipe it on stdin")
        data = sys.stdin.buffer.read()
        try:
            prompt = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(f"stdin is not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 1]!r})") from None
        prompt = prompt.removesuffix("\n")
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    return prompt


# --------------------------------------------------------------------- doctor


@cli.command()
@config_options
def doctor(**options: Any) -> None:
    """Show this machine, the installed backends and which one `run` would pick."""
    facts = probe_hardware()
    from mlxgen import backends, hardware

    rows = hardware.describe(facts)
    for name in backends.REGISTRY:
        if backends.is_installed(name):
            try:
                rows += backends.load_module(name).doctor_rows()
            except Exception as e:  # a broken install is a finding, not a crash
                rows.append((f"{name}", f"installed but fails to import: {type(e).__name__}: {e}"))
    try:
        choice = hardware.detect(facts, resolve_config(options).backend)
        rows += [("choice", choice.backend), ("reason", choice.reason)]
    except MlxgenError as e:
        rows += [("choice", "none"), ("reason", str(e))]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key:<{width}}  {value}")


# ---------------------------------------------------------------------- bench


@cli.command()
@click.argument("prompt", required=False)
@config_options
@click.option("--backends", "backend_list", default=None, help="Comma list to compare, baseline first (default: the detected one).")
@click.option("--native", is_flag=True, help="Also time each backend library's own loop on the same model.")
@click.option("--runs", type=int, default=5, show_default=True, help="Measured runs per contestant (after one warm-up).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results.")
def bench(prompt: str | None, backend_list: str | None, native: bool, runs: int, as_json: bool, **options: Any) -> None:
    """Prefill and decode tok/s (greedy, EOS ignored), as ratios against the first contestant."""
    if options.get("temperature") is None:
        options["temperature"] = 0.0
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import bench as benchmod

    names = [b.strip() for b in backend_list.split(",")] if backend_list else None
    result = benchmod.run_bench(cfg, names, prompt or benchmod.DEFAULT_PROMPT, runs, native=native, facts=facts)
    click.echo(json.dumps(result, indent=2) if as_json else benchmod.format_table(result))


# -------------------------------------------------------------------- convert


@cli.command()
@click.argument("source")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: the mlxgen cache).")
@click.option("--bits", type=click.Choice(["2", "3", "4", "5", "6", "8"]), default="4", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
@click.option("--revision", default="main", show_default=True, help="Hub revision (for a repo id).")
def convert(source: str, out: str | None, bits: str, group_size: str, revision: str) -> None:
    """Convert a Hugging Face repo (or local HF folder) or a GGUF file to an MLX model folder."""
    from pathlib import Path

    from mlxgen import backends

    backends.require("mlx")
    from mlxgen.backends import mlx_convert

    path = mlx_convert.convert(source, Path(out) if out else None, int(bits), int(group_size), revision)
    click.echo(str(path))


def main() -> None:
    cli(prog_name="mlxgen")


if __name__ == "__main__":
    main()
