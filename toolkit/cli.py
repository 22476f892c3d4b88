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
from mlxgen.errors import MlxgenError, PromptError, rank_lost
from mlxgen.prompt_cache import PREFIX_ENTRIES


class _Group(click.Group):
    """Turn mlxgen's user errors, and Click's usage errors, into one line on stderr and a non-zero exit."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as e:
            click.echo(f"mlxgen: error: {usage_line(e)}", err=True)
            sys.exit(e.exit_code)
        except click.exceptions.Abort:  # Ctrl-C inside a Click prompt
            click.echo("\nmlxgen: interrupted", err=True)
            sys.exit(130)
        except click.ClickException as e:  # a bad file argument, say
            click.echo(f"mlxgen: error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        sys.exit(code if isinstance(code, int) else 0)  # ctx.exit(n) comes back as n

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
        except RuntimeError as e:  # another rank of a distributed run went away (mid-step, inside MLX)
            lost = rank_lost(e)
            if lost is None:
                raise
            click.echo(f"mlxgen: error: {lost}", err=True)
            ctx.exit(lost.exit_code)


def usage_line(e: click.UsageError) -> str:
    """A usage error as one line, with the closest real option or command and where help is."""
    import difflib

    ctx = e.ctx
    where = f"'{ctx.command_path} --help'" if ctx else "'mlxgen --help'"
    if isinstance(e, click.NoSuchOption) and ctx is not None:
        known = [o for p in ctx.command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
        close = difflib.get_close_matches(e.option_name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        return f"{ctx.command_path}: unknown option {e.option_name}{hint} (see {where})"
    message = " ".join(e.format_message().split())
    if ctx is not None and isinstance(ctx.command, click.Group) and message.startswith("No such command"):
        name = message.split("'")[1] if "'" in message else ""
        close = difflib.get_close_matches(name, list(ctx.command.commands), n=1, cutoff=0.6)
        return f"unknown command {name!r}" + (f"; did you mean {close[0]}?" if close else "") + f" (see {where})"
    return f"{ctx.command_path + ': ' if ctx else ''}{message} (see {where})"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlxgen")
def cli() -> None:
    """Local text generation you can see into: one loop, MLX or llama.cpp underneath."""


class BackendChoice(click.Choice):
    """``--backend``: auto or a registered backend (read when the flag is parsed or shown)."""

    def __init__(self, *extra: str) -> None:
        super().__init__(["auto"])
        self.extra = extra

    @property
    def choices(self):
        from mlxgen.backends import REGISTRY

        return ("auto", *REGISTRY, *self.extra)

    @choices.setter
    def choices(self, value) -> None:  # click.Choice.__init__ assigns it
        pass


class ConfigOption(click.Option):
    """A flag that overrides a config key; its help shows the value the default preset gives it."""

    def __init__(self, *args: Any, config_key: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config_key = config_key

    def get_help_record(self, ctx: click.Context):
        record = super().get_help_record(ctx)
        value = preset_default(self.config_key)
        if record is None or value is None:
            return record
        return record[0], f"{record[1]}  [default: {value}]".strip()


def preset_default(dotted: str) -> Any:
    """The default preset's value for a dotted key (for --help); None if it has none or fails to load."""
    global _PRESET
    if _PRESET is None:
        try:
            from mlxgen.config import load_config

            _PRESET = load_config(None).to_dict()
        except Exception:  # help must print even if the preset cannot load
            _PRESET = {}
    node: Any = _PRESET
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


_PRESET: dict | None = None


FLASH_ATTN = click.option("--flash-attn/--no-flash-attn", "flash_attn", default=None,
                          help="llama.cpp flash attention (llm.flash_attn; default on).")
KV_BITS = click.option("--kv-bits", "kv_bits", type=int, metavar="8|4",
                       help="Quantize the KV cache to 8 or 4 bits (llm.kv_bits; 16 = full precision).")


def config_options(f):
    """Flags that mirror config keys; each overrides the YAML value (``_overrides`` maps them)."""
    from mlxgen import settings

    sampling = [click.option(*s.flags, s.name, type=s.type, help=s.help, cls=ConfigOption,
                             config_key=f"inference.{s.name}") for s in settings.TABLE]
    options = [
        click.option("-c", "--config", "config", metavar="FILE|PRESET", help="YAML config or preset name (default: smollm2-135m)."),
        click.option("--backend", type=BackendChoice(), help="Override hardware detection."),
        click.option("--model", "model_path", metavar="SOURCE",
                     help="A GGUF file, an MLX model folder, OWNER/REPO/FILE.gguf or OWNER/REPO (MLX) on the Hub."),
        *sampling,
        click.option("--stop", multiple=True, help="Stop string (repeatable)."),
        click.option("--system", help="System prompt."),
        click.option("--think/--no-think", "thinking", default=None, help="Thinking switch (Qwen3 style)."),
        click.option("--raw", is_flag=True, default=None, help="No chat template: plain completion."),
        click.option("--ctx", "n_ctx", type=int, help="Context length (llm.n_ctx).", cls=ConfigOption,
                     config_key="llm.n_ctx"),
        click.option("-t", "--threads", "n_threads", type=int, help="CPU threads (llm.n_threads)."),
        click.option("--gpu-layers", "n_gpu_layers", type=int, help="llama.cpp layers on the GPU (-1 = all)."),
        FLASH_ATTN,
        KV_BITS,
        click.option("--context-overflow", "context_overflow", metavar="shift|stop",
                     help="A full context: drop the oldest tokens (chat: turns) and go on (shift, chat's default) "
                          "or stop (run's)."),
        click.option("--draft-model", "draft", metavar="SOURCE",
                     help="Speculative decoding with this draft model (same vocabulary, same backend; a source as --model)."),
        click.option("--draft-tokens", type=int, metavar="K", help="Tokens the draft model proposes per step (default 4)."),
        click.option("--lookup", type=int, metavar="N",
                     help="Speculative decoding by prompt lookup: propose up to N tokens copied from the prompt and output."),
        click.option("--adaptive-draft", is_flag=True, default=None,
                     help="Grow the draft length while every draft is accepted, shrink it on a miss."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


CONSTRAINT_FLAGS = {"json_schema": "inference.constraint.json_schema", "json_object": "inference.constraint.json_object",
                    "regex": "inference.constraint.regex", "grammar": "inference.constraint.grammar"}


def constraint_options(f):
    """Structured output (``inference.constraint``). Not ``--json``: on run and chat that flag already
    means "print JSON"; ``--json-object`` asks the model for JSON."""
    options = [
        click.option("--json-schema", "json_schema", metavar="FILE|JSON",
                     help="Output must be JSON valid against this schema (a file or the schema itself)."),
        click.option("--json-object", "json_object", is_flag=True, default=None, help="Output must be one JSON object."),
        click.option("--regex", "regex", metavar="PATTERN", help="Output must match this regular expression."),
        click.option("--grammar", "grammar", metavar="FILE", help="Output must follow this Lark grammar (llguidance's)."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def rank_options(f):
    """``--ranks N`` / ``--hosts FILE``: run this command as the ranks of an MLX group (``mlxgen.launch``)."""
    many = f.__name__ == "bench"

    def launch(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is None or ctx.resilient_parsing or os.environ.get("MLX_RANK") is not None:
            return  # a rank already (started by --ranks, --hosts or the user's own mlx.launch)
        from mlxgen import launch as launchmod

        try:
            code = launchmod.from_cli(ctx.info_name, param.name, value)
        except MlxgenError as e:
            click.echo(f"mlxgen: error: {e}", err=True)
            code = e.exit_code
        ctx.exit(code)

    ranks_help = ("Run as N ranks on this machine, one table per count (comma list: 1,2)" if many else
                  "Run as N ranks of an MLX group on this machine (ring over 127.0.0.1), to try it.")
    f = click.option("--hosts", metavar="FILE", is_eager=True, expose_value=False, callback=launch,
                     help="Run as one rank per host of mlx's hostfile JSON (mlx.launch over ssh).")(f)
    return click.option("--ranks", metavar="N", is_eager=True, expose_value=False, callback=launch,
                        help=ranks_help)(f)


def prompt_options(f):
    """-p/--prompt and -f/--file, as llama-cli and mlx_lm take the prompt."""
    f = click.option("-f", "--file", "prompt_file", metavar="FILE", help="Read the prompt from FILE ('-' = stdin).")(f)
    return click.option("-p", "--prompt", "prompt_text", metavar="TEXT", help="The prompt (instead of PROMPT).")(f)


def prompt_cache_options(f):
    """--prompt-cache FILE (a saved prompt cache) and --prompt-cache-dir DIR (automatic, by prefix)."""
    f = click.option("--prompt-cache-dir", "prompt_cache_dir", metavar="DIR",
                     help="Save the prompt's fixed prefix (system prompt) here and load it on later runs "
                          "(llm.prompt_cache_dir).")(f)
    return click.option("--prompt-cache", "prompt_cache", metavar="FILE",
                        help="Load this saved prompt cache (`mlxgen cache-prompt`); prefill only what follows it.")(f)


def use_prompt_cache(sess, ids: list[int], path: str | None, quiet: bool) -> dict | None:
    """Load ``--prompt-cache FILE`` (or the best file of ``--prompt-cache-dir``) into the session.

    A file that cannot serve this model, version or setting is one warning line (shown even
    with --quiet) and the prompt is prefilled as usual. Returns what ``--json`` reports.
    """
    from mlxgen import prompt_file

    if path:
        try:
            n, seconds, size = prompt_file.load(path, sess)
        except prompt_file.Refused as e:
            warn([prompt_file.warning(path, e)])
            return {"file": path, "used": False, "why": str(e)}
        if not quiet:
            click.echo(f"prompt cache: {n} tokens loaded from {path} in {seconds * 1e3:.0f} ms "
                       f"({size / 2**20:.1f} MiB)", err=True)
        return {"file": path, "used": True, "tokens": n, "load_s": round(seconds, 6), "bytes": size}
    if sess.cfg.llm.prompt_cache_dir:
        warn(prompt_file.auto(sess, sess.cfg.llm.prompt_cache_dir, ids))
    return None


def _overrides() -> dict[str, str]:
    """Each flag's config key: the sampling settings' from their table, then the rest."""
    from mlxgen import settings

    return {
        "backend": "backend",
        **{s.name: f"inference.{s.name}" for s in settings.TABLE},
        "stop": "inference.stop",
        "system": "inference.system_prompt",
        "thinking": "inference.thinking",
        "raw": "inference.raw",
        "n_ctx": "llm.n_ctx",
        "n_threads": "llm.n_threads",
        "n_gpu_layers": "llm.n_gpu_layers",
        "flash_attn": "llm.flash_attn",
        "prompt_cache_dir": "llm.prompt_cache_dir",
        "kv_bits": "llm.kv_bits",
        "context_overflow": "inference.context_overflow",
        "draft": "inference.draft",
        "draft_tokens": "inference.draft_tokens",
        "lookup": "inference.lookup",
        "adaptive_draft": "inference.adaptive_draft",
    }


def constraint_report(matcher, done) -> dict | None:
    """What ``run --json`` says about the constraint: its kind and whether the output completes it."""
    if matcher is None:
        return None
    g = matcher.grammar
    return {"kind": g.spec.kind, "label": g.spec.label, "complete": matcher.complete, "check_ms": round(g.spec.check_ms, 3),
            "compile_ms": round(g.compile_ms, 3), "tokenizer_ms": round(g.tokenizer_ms, 1)}


def warn_incomplete(matcher, done) -> bool:
    """One warning line when the output does not complete the constraint (never claimed valid)."""
    if matcher is None or matcher.complete:
        return False
    why = {"length": "max_length was reached (raise -n)", "context": "the context is full",
           "stop": "a stop string ended it", "interrupted": "it was interrupted"}.get(done.reason, done.reason)
    click.echo(f"mlxgen: warning: the output is incomplete for {matcher.grammar.spec.label}: {why}", err=True)
    return True


def resolve_config(options: dict[str, Any]):
    from mlxgen.config import load_config
    from mlxgen.errors import ConfigError

    keys = _overrides()
    overrides = {keys[k]: v for k, v in options.items() if k in keys and v not in (None, ())}
    flags = [k for k in CONSTRAINT_FLAGS if options.get(k) not in (None, False)]
    if len(flags) > 1:
        raise ConfigError(f"--{flags[0].replace('_', '-')} and --{flags[1].replace('_', '-')}: give one constraint")
    if flags:  # a flag replaces whatever constraint the config names
        overrides.update({key: None for key in CONSTRAINT_FLAGS.values()})
        overrides[CONSTRAINT_FLAGS[flags[0]]] = options[flags[0]]
    if "stop" in options and options["stop"]:
        overrides["inference.stop"] = list(options["stop"])
    if options.get("model_path"):
        source = model_source(options["model_path"])
        claimed, requested = source.pop("backend", None), overrides.get("backend", "auto")
        if claimed and requested not in ("auto", claimed):
            raise ConfigError(f"--model {options['model_path']}: {source.pop('what')}, which only the {claimed} "
                              f"backend runs, not {requested}; use --backend {claimed}, or give a GGUF file")
        source.pop("what", None)
        if claimed:
            source["backend"] = claimed
        overrides.update(source)
        if not options.get("config"):  # the default preset's tokenizer facts belong to its own model
            overrides.update({"tokenizer.eos_token": None, "tokenizer.chat_template": None})
    return load_config(options.get("config"), overrides)


def model_source(value: str) -> dict[str, Any]:
    """``--model``'s config keys (``mlxgen.sources.model_source``; ``--draft-model`` takes the same)."""
    from mlxgen.sources import model_source as keys

    return keys(value)


# ------------------------------------------------------------------------ run


@cli.command(short_help='Generate text for a prompt, streamed to stdout.')
@click.argument("prompt", required=False)
@config_options
@constraint_options
@click.option("--dry-run", is_flag=True, help="Print the resolved config, backend and sources; load nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@click.option("--trace", type=click.Path(dir_okay=False, writable=True), help="Write every token id, text and time as JSON.")
@click.option("--show-prompt", is_flag=True, help="Print the templated prompt and its token ids (stderr).")
@click.option("--logprobs", type=int, metavar="K", help="Record the top-K log-probabilities of each token (--json, --trace).")
@click.option("--quiet", "-q", is_flag=True, help="No stats on stderr.")
@prompt_cache_options
@prompt_options
@rank_options
def run(prompt: str | None, dry_run: bool, as_json: bool, trace: str | None, show_prompt: bool, logprobs: int | None,
        quiet: bool, prompt_cache: str | None, **options: Any) -> None:
    """Generate text for PROMPT (or -p TEXT, -f FILE, stdin), streamed to stdout."""
    if logprobs is not None and logprobs < 1:
        raise MlxgenError(f"--logprobs {logprobs}: expected a positive number of alternatives")
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import render, session

    plan = session.plan(cfg, facts)
    if dry_run:
        render.dry_run(plan, as_json)
        return
    message = read_prompt(prompt, options)
    if trace and not os.path.isdir(os.path.dirname(os.path.abspath(trace))):
        raise MlxgenError(f"--trace {trace}: its folder does not exist")
    from mlxgen import prompt_file

    prompt_file.check_exists(prompt_cache)
    sess = session.open_session(cfg, plan.choice)
    try:
        warn(sess.warnings(), quiet)
        text, ids = sess.prompt(message)
        if show_prompt:
            render.show_prompt(sess, text, ids)
        sample = sess.sampler()
        matcher = sample.constraints[0] if sample.constraints else None  # the session's constraint, if any
        recorder = logprob_recorder(sess, logprobs, sample) if logprobs else None
        saved = use_prompt_cache(sess, ids, prompt_cache, quiet)
        events = sess.complete(ids, sample=recorder or sample)  # reuses what a prompt cache loaded
        done = render.stream(events, echo=not as_json, end="exact")
    finally:
        sess.close()
    done.stats.load_s = sess.load_s
    top = recorder.entries(sess.tokenizer, done.trace) if recorder else None
    if trace:
        render.write_trace(trace, sess, ids, done, top)
    if as_json:
        result = render.result_dict(sess, plan, done, ids, top)
        if saved is not None:
            result["prompt_cache"] = saved
        if matcher is not None:
            result["constraint"] = constraint_report(matcher, done)
        click.echo(json.dumps(result, ensure_ascii=False))
    elif not quiet:
        render.stats(sess, done)
    incomplete = warn_incomplete(matcher, done)
    if done.reason == "interrupted":
        sys.exit(130)
    if incomplete:
        sys.exit(INCOMPLETE_EXIT)


INCOMPLETE_EXIT = 3  # the text was printed, but it does not complete the constraint (never claimed valid)


def warn(lines: list[str], quiet: bool = False) -> None:
    """One ``mlxgen: warning:`` line each on stderr (a flag that does nothing, a slow backend)."""
    if not quiet:
        for line in lines:
            click.echo(f"mlxgen: warning: {line}", err=True)


def probe_hardware():
    """Hardware facts, probed before numpy or tokenizers are imported.

    The probe imports llama_cpp. On a CUDA build of llama.cpp (seen on an H200 box),
    loading a model segfaults when numpy or tokenizers was imported before llama_cpp,
    even in plain llama-cpp-python; importing it first avoids that.
    """
    from mlxgen import hardware

    return hardware.gather_facts()


def read_prompt(prompt: str | None, options: dict[str, Any] | None = None) -> str:
    """The prompt: PROMPT or -p, -f FILE or piped stdin (``mlxgen.inputs``, as `mlxgen tokens` reads it)."""
    from mlxgen.inputs import read_text

    options = options or {}
    text, path = options.pop("prompt_text", None), options.pop("prompt_file", None)
    if text is not None and prompt is not None:
        raise PromptError("give PROMPT or -p TEXT, not both")
    prompt = read_text(text if text is not None else prompt, path, what="prompt")
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    return prompt


def logprob_recorder(sess, k: int, sample=None):
    from mlxgen.logits import LogprobRecorder

    if k > sess.backend.vocab_size:
        raise MlxgenError(f"--logprobs {k}: the vocabulary has only {sess.backend.vocab_size} tokens")
    return LogprobRecorder(sample or sess.sampler(), k, sess.ops)


# ------------------------------------------------------- chat, tokens, logits


@cli.command(short_help='Talk with the model; the KV cache is reused between turns.')
@config_options
@constraint_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per answer on stdout instead of streamed text.")
@click.option("--quiet", "-q", is_flag=True, help="No banner and no per-turn stats on stderr.")
@prompt_cache_options
@rank_options
def chat(as_json: bool, quiet: bool, prompt_cache: str | None, **options: Any) -> None:
    """Talk with the model: one line per message, answers streamed; /help lists the commands.

    \b
    Each turn prefills only what the KV cache does not hold yet. Ctrl-C stops an
    answer (keeping it), Ctrl-D or /exit quits. Lines can be piped in.
    """
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import conversation, prompt_file, repl, session

    choice = session.plan(cfg, facts).choice
    prompt_file.check_exists(prompt_cache)
    sess = session.open_session(cfg, choice)
    try:
        warn(sess.warnings(), quiet)
        use_prompt_cache(sess, sess.prompt("")[1], prompt_cache, quiet)  # the first turn reuses its prefix
        if not quiet:
            click.echo(f"mlxgen chat · {sess.backend.name} on {sess.backend.device} · context {sess.backend.n_ctx} "
                       f"tokens · {sess.template.origin} template · /help for commands, Ctrl-D to quit", err=True)
        code = repl.Repl(conversation.Conversation(sess), as_json=as_json, quiet=quiet).run()
    finally:
        sess.close()
    sys.exit(code)


@cli.command("cache-prompt", short_help="Prefill a prompt once and save its KV cache to a file.")
@click.argument("prompt", required=False)
@config_options
@click.option("-o", "--output", "out", required=True, metavar="FILE.mlxcache", help="The file to write.")
@click.option("--quiet", "-q", is_flag=True, help="No stats on stderr.")
@prompt_options
def cache_prompt(prompt: str | None, out: str, quiet: bool, **options: Any) -> None:
    """Prefill PROMPT (or -p TEXT, -f FILE, stdin), templated as `run` would, and save the KV cache.

    \b
    mlxgen cache-prompt -f manual.txt -o manual.mlxcache
    mlxgen run --prompt-cache manual.mlxcache -f manual-and-question.txt

    The file is valid for this model, backend (and its version) and KV settings only;
    any other is refused with a warning and the prompt prefilled.
    """
    from mlxgen import prompt_file

    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(out):
        why = "is a folder" if os.path.isdir(out) else ("its folder does not exist" if not os.path.isdir(folder)
                                                         else "its folder is not writable")
        raise prompt_file.PromptCacheError(f"{out}: cannot write the prompt cache: {why}")
    cfg = resolve_config(options)
    facts = probe_hardware()
    import time

    from mlxgen import session
    from mlxgen.loop import check_prompt

    message = read_prompt(prompt, options)
    sess = session.open_session(cfg, session.plan(cfg, facts).choice)
    try:
        prompt_file.identity(sess)  # a backend that cannot save says so before the prefill
        _, ids = sess.prompt(message)
        check_prompt(ids, sess.backend.n_ctx)
        t0 = time.perf_counter()
        sess.cache.fill(ids, prefill_chunk=None)
        prefill_s = time.perf_counter() - t0
        size, save_s = prompt_file.save(out, sess)
    finally:
        sess.close()
    if not quiet:
        click.echo(f"{out}: {len(ids)} tokens, {size / 2**20:.1f} MiB; prefilled in {prefill_s:.2f} s, "
                   f"saved in {save_s * 1e3:.0f} ms", err=True)


@cli.command(short_help='Count and list the tokens of a text, as run sees them.')
@click.argument("text", required=False)
@click.option("-f", "--file", "path", metavar="FILE", help="Count a file ('-' = stdin).")
@click.option("--show", is_flag=True, help="List every token: position, id, text (special tokens marked).")
@click.option("--chat", "templated", is_flag=True, help="Apply the chat template first; mark the template's tokens.")
@click.option("--errors", type=click.Choice(["strict", "replace"]), default="strict", show_default=True,
              help="Invalid UTF-8: fail, or read the bad bytes as U+FFFD.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: large inputs on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with --show: every token).")
@config_options
def tokens(text: str | None, path: str | None, show: bool, templated: bool, errors: str, progress: bool | None,
           as_json: bool, **options: Any) -> None:
    """Count the tokens of TEXT (or -f FILE, or stdin) with the tokenizer `run` uses."""
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import chat as chatmod
    from mlxgen import session
    from mlxgen import tokens as tokmod

    message = tokmod.read_text(text, path, errors)
    tok = session.open_tokenizer(cfg, session.plan(cfg, facts).choice)
    render = None
    if templated:
        spec = session.prompt_spec(cfg, tok)
        render = lambda m: chatmod.render(spec, m, tok.special)  # noqa: E731
    bar = progress if progress is not None else sys.stderr.isatty() and len(message) >= tokmod.BIG_CHARS
    total = len(render(message)) if render else len(message)
    data = tokmod.count(tok, message, cfg.llm.n_ctx, render, show, tokmod.progress_bar(total) if bar else None)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    if show:
        click.echo(tokmod.listing(tok, data["pieces"]))
    click.echo(tokmod.summary(data))


@cli.command(short_help='One prefill: the next-token distribution and what sampling keeps.')
@click.argument("prompt", required=False)
@config_options
@constraint_options
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Rows in the table.")
@click.option("--json", "as_json", is_flag=True, help="The same data as one JSON object.")
@prompt_options
def logits(prompt: str | None, top: int, as_json: bool, **options: Any) -> None:
    """One prefill of PROMPT: the most probable next tokens and what sampling would keep."""
    cfg = resolve_config(options)
    facts = probe_hardware()
    from mlxgen import logits as logmod
    from mlxgen import session
    from mlxgen.loop import check_prompt, prefill
    from mlxgen.sampling import NUMPY

    message = read_prompt(prompt, options)
    sess = session.open_session(cfg, session.plan(cfg, facts).choice)
    try:
        _, ids = sess.prompt(message)
        check_prompt(ids, sess.backend.n_ctx)
        values = logmod.to_numpy(prefill(sess.backend, ids), sess.ops)
    finally:
        sess.close()
    chain = sess.run_processors(ops=NUMPY)  # the values are numpy here, whatever the backend
    data = logmod.inspect(values, session.sampling_params(cfg), ids, sess.tokenizer, top, chain)
    data.update(prompt_tokens=len(ids), backend=sess.backend.name, template=sess.template.origin)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
    else:
        click.echo(logmod.table(data, sess.tokenizer))


# --------------------------------------------------------------------- doctor


@cli.command(short_help='This machine, the backends, and which one run picks.')
@config_options
@rank_options
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


@cli.command(short_help='llama-bench style pp/tg tests; ratios between backends and loops.')
@click.option("-c", "--config", "config", metavar="FILE|PRESET", help="YAML config or preset name (default: smollm2-135m).")
@click.option("--model", "model_path", metavar="SOURCE", help="A GGUF file, an MLX folder, OWNER/REPO/FILE.gguf or OWNER/REPO.")
@click.option("--backend", type=BackendChoice("all"), default="auto", show_default=True,
              help="all: every installed backend on the same model (MLX imports the GGUF).")
@click.option("-p", "--n-prompt", default="512", show_default=True, help="Prompt-processing tests ppN (comma list).")
@click.option("-n", "--n-gen", default="128", show_default=True, help="Generation tests tgN (comma list).")
@click.option("-d", "--depth", default="0", show_default=True, help="Tokens already in the cache (comma list).")
@click.option("-r", "--repetitions", default=5, show_default=True, type=click.IntRange(min=1), help="Timed runs per test.")
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--vs-native", is_flag=True, help="Also run each backend library's own loop; report ours/native.")
@click.option("--seed", default=42, show_default=True, type=int, help="Seed of the random token trace.")
@click.option("-o", "--output", type=click.Choice(["md", "csv", "json", "jsonl"]), default="md", show_default=True)
@click.option("--plot", metavar="FILE.png", help="Bar chart of t/s with error bars (needs matplotlib).")
@click.option("--ctx", "n_ctx", type=int, help="Context length (llm.n_ctx).")
@click.option("-t", "--threads", "n_threads", type=int, help="CPU threads (llm.n_threads).")
@click.option("--gpu-layers", "n_gpu_layers", type=int, help="llama.cpp layers on the GPU (-1 = all).")
@FLASH_ATTN
@KV_BITS
@constraint_options
@click.option("--draft-model", "draft", metavar="SOURCE", help="Also run speculative decoding with this draft model.")
@click.option("--draft-tokens", type=int, metavar="K", help="Tokens the draft model proposes per step (default 4).")
@click.option("--lookup", type=int, metavar="N", help="Also run speculative decoding by prompt lookup (N tokens per step).")
@click.option("--adaptive-draft", is_flag=True, default=None, help="Adaptive draft length.")
@rank_options
def bench(n_prompt: str, n_gen: str, depth: str, repetitions: int, warmup: int, vs_native: bool, seed: int,
          output: str, plot: str | None, **options: Any) -> None:
    """llama-bench style pp/tg tests on one seeded token trace; table on stdout, progress on stderr.

    \b
    mlxgen bench                                  pp512 + tg128 on the detected backend
    mlxgen bench --backend all --vs-native        every backend, each against its own library's loop
    mlxgen bench -p 128,512 -n 64 -d 0,2048 -o csv
    mlxgen bench -p 16 -n 128 --json-schema s.json   the constraint's cost: constrained/plain, interleaved
    mlxgen bench --model target.gguf --draft-model draft.gguf   speculative vs plain, interleaved
    """
    from mlxgen import bench as benchmod
    from mlxgen import bench_output

    settings = benchmod.Settings(
        n_prompt=benchmod.parse_counts(n_prompt, "-p"),
        n_gen=benchmod.parse_counts(n_gen, "-n"),
        depths=benchmod.parse_counts(depth, "--depth", minimum=0),
        repetitions=repetitions,
        warmup=warmup,
        seed=seed,
        vs_native=vs_native,
    )
    if plot:
        bench_output.check_plot_path(plot)
    everything = options.get("backend") == "all"
    if everything:
        options["backend"] = "auto"
    cfg = resolve_config(options)
    if cfg.inference.constraint.active:
        import dataclasses

        from mlxgen import constraint

        settings = dataclasses.replace(settings, constraint=constraint.from_config(cfg.inference.constraint))
    facts = probe_hardware()
    from mlxgen import backends, hardware

    if everything:
        names = backends.installed()
        cfg = benchmod.same_weights(cfg)
    else:
        names = [hardware.detect(facts, cfg.backend).backend]
    report = benchmod.run_bench(cfg, names, settings, facts, progress=bench_progress())
    if sys.stderr.isatty():
        click.echo("\r\x1b[K", err=True, nl=False)
    click.echo(bench_output.FORMATS[output](report))
    if plot and report.results:
        bench_output.plot(report, plot)
        click.echo(f"plot: {plot}", err=True)
    if report.interrupted:
        sys.exit(130)


def bench_progress():
    """Progress on stderr: one line rewritten in place on a terminal, else a line per test."""
    tty = sys.stderr.isatty()
    last = [""]

    def show(message: str) -> None:
        if tty:
            click.echo(f"\r\x1b[K{message}", err=True, nl=False)
        elif message.split(":")[0] != last[0]:
            click.echo(message, err=True)
        last[0] = message.split(":")[0]

    return show


# -------------------------------------------------------------------- convert


@cli.command(short_help='HF repo or folder, or a GGUF -> an MLX model folder.')
@click.argument("source")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (default: the mlxgen cache).")
@click.option("--bits", type=click.Choice(["2", "3", "4", "5", "6", "8"]), default="4", show_default=True)
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True)
@click.option("--revision", default="main", show_default=True, help="Hub revision (for a repo id).")
def convert(source: str, out: str | None, bits: str, group_size: str, revision: str) -> None:
    """Convert a Hugging Face repo (or local HF folder) or a GGUF file to an MLX model folder."""
    from pathlib import Path

    from mlxgen import backends

    name = next(info.name for info in backends.REGISTRY.values() if info.converter)  # the backend with its own format
    module = backends.load_module(name)
    path = getattr(module, backends.REGISTRY[name].converter)(source, Path(out) if out else None, int(bits),
                                                              int(group_size), revision)
    click.echo(str(path))


# ---------------------------------------------------------------- serve, models


@cli.command(short_help="An OpenAI-compatible server (chat, completions, models) on the shared loop.")
@config_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--api-key", envvar="MLXGEN_API_KEY", help="Require Authorization: Bearer KEY (env MLXGEN_API_KEY).")
@click.option("--max-queue", default=32, show_default=True, type=click.IntRange(min=1),
              help="Requests waiting for the model; beyond it: 503 with Retry-After.")
@click.option("--max-body", default=1 << 20, show_default=True, type=click.IntRange(min=1024),
              help="Largest request body in bytes (413 beyond).")
@click.option("--read-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a request's headers and body may take to arrive (408 beyond).")
@click.option("--prefix-cache", default=PREFIX_ENTRIES, show_default=True, type=click.IntRange(min=0), metavar="N",
              help="Keep the KV states of N earlier prompt prefixes in memory, so alternating conversations "
                   "each reuse their own (0: only the live cache).")
@rank_options
def serve(host: str, port: int, api_key: str | None, max_queue: int, max_body: int, read_timeout: float,
          prefix_cache: int, **options: Any) -> None:
    """Serve the model over OpenAI's API: POST /v1/chat/completions, /v1/completions; GET /v1/models,
    /health, and a chat page at /.

    \b
    One worker runs the model; requests queue in order and reuse the KV cache's common
    prefix. Binds 127.0.0.1 unless --host says otherwise.
    """
    from mlxgen import serve as server_mod
    from mlxgen import session

    cfg = resolve_config(options)
    facts = probe_hardware()
    if not server_mod.is_loopback(host) and not api_key:
        warn([f"--host {host} without --api-key: anyone who can reach this port can use the model"])
    if cfg.inference.context_overflow == "shift":
        warn(["--context-overflow shift does nothing in serve: max_tokens is capped by the context, and a "
              "request that reaches it ends with finish_reason length"])
    sess = session.open_session(cfg, session.plan(cfg, facts).choice)
    warn(sess.warnings())
    try:
        server = server_mod.make_server(sess, host, port, api_key=api_key, max_queue=max_queue, max_body=max_body,
                                        read_timeout=read_timeout, prefix_cache=prefix_cache)
    except OSError as e:
        sess.close()
        raise MlxgenError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}") from None
    try:
        server_mod.serve_forever(server, sess)
    finally:
        sess.close()


@cli.group(invoke_without_command=True, short_help="The models in the local caches (and `models rm`).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """The models on this machine: GGUFs in the Hugging Face cache, MLX conversions and imports, the embedded one."""
    if ctx.invoked_subcommand:
        return
    from mlxgen import models as found

    rows = found.scan()
    if as_json:
        click.echo(json.dumps([{"id": m.id, "kind": m.kind, "size": m.size, "path": str(m.path),
                                "removable": m.removable} for m in rows]))
        return
    if not rows:
        click.echo("no models in the local caches", err=True)
        return
    width = max(len(m.id) for m in rows)
    for m in rows:
        click.echo(f"{m.id:<{width}}  {m.kind:<16} {found.size_text(m.size):>10}  {m.path}")


@models.command("rm", short_help="Delete a cached model.")
@click.argument("name")
def models_rm(name: str) -> None:
    """Delete the cached model NAME (an id or a path from `mlxgen models`)."""
    from mlxgen import models as found

    m = found.remove(name)
    click.echo(f"removed {m.id} ({found.size_text(m.size)}): {m.path}", err=True)


def main() -> None:
    cli(prog_name="mlxgen")


if __name__ == "__main__":
    main()
