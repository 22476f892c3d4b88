"""How `mlxgen run` shows things: text on stdout, stats and inspection on stderr."""

from __future__ import annotations

import json
import resource
import sys
from typing import Iterator

from mlxgen.cache import atomic_write_text
from mlxgen.errors import MlxgenError
from mlxgen.loop import Done, Event


def dry_run(plan, as_json: bool) -> None:
    from mlxgen.sources import weights_status

    info = {
        "config_source": plan.cfg.source,
        "backend": plan.choice.backend,
        "reason": plan.choice.reason,
        "model": plan.model,
        "weights": weights_status(plan.cfg.llm),
        "tokenizer": plan.tokenizer,
        "config": plan.cfg.to_dict(),
    }
    if as_json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
        return
    print(f"# config:    {info['config_source']}")
    print(f"# backend:   {info['backend']} ({info['reason']})")
    print(f"# model:     {info['model']}")
    print(f"# weights:   {info['weights']}")
    print(f"# tokenizer: {info['tokenizer']}")
    print(readable_yaml(info["config"]), end="")


def readable_yaml(data: dict) -> str:
    """YAML with text of several lines (a chat template) as a literal block, as it is written."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def show_prompt(sess, text: str, ids: list[int]) -> None:
    err = sys.stderr
    print(f"--- prompt ({sess.template.origin} template, {plural(len(ids), 'token')}) ---", file=err)
    print(text, file=err)
    print(f"--- token ids ---\n{ids}", file=err)
    print("---", file=err, flush=True)


def stream(events: Iterator[Event], echo: bool = True, end: str = "line") -> Done:
    """Consume the loop's events, printing text as it comes (flushed per token).

    ``end``: what follows the text. ``"line"``: a newline, so the next output starts on
    its own line (chat). ``"exact"``: nothing when stdout is not a terminal, so
    ``mlxgen run > out.txt`` holds exactly the text; on a terminal a newline only where
    the text does not already end with one.

    Ctrl-C while this code runs is thrown into the loop, which ends the stream with
    reason ``interrupted`` and keeps the text so far.
    """
    out = sys.stdout
    pending: Event | None = None
    last = ""
    while True:
        try:
            event = pending if pending is not None else next(events)
            pending = None
            if isinstance(event, Done):
                if echo and (end == "line" or (_isatty(out) and not last.endswith("\n"))):
                    out.write("\n")
                    out.flush()
                return event
            if echo and event.text:
                out.write(event.text)
                out.flush()
                last = event.text
        except KeyboardInterrupt:
            pending = events.throw(KeyboardInterrupt)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def process_peak_bytes() -> int:
    """The process's peak resident memory (ru_maxrss: bytes on macOS, KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_memory_mb() -> float:
    return process_peak_bytes() / 2**20


def plural(n: int, word: str) -> str:
    """``1 turn``, ``2 turns``: a count and its noun."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def stats(sess, done: Done) -> None:
    s = done.stats
    lines = [
        f"backend {sess.backend.name} on {sess.backend.device} · load {_fmt(s.load_s, '.2f')} s",
        f"prompt {plural(s.prompt_tokens, 'token')} · prefill {_fmt(s.prefill_tps, '.1f')} tok/s · "
        f"first token {_fmt(s.ttft_s, '.3f')}{' s' if s.ttft_s is not None else ''}",
        f"generated {plural(s.generated_tokens, 'token')} · decode {_fmt(s.decode_tps, '.1f')} tok/s · "
        f"stop: {done.reason} · peak memory {peak_memory_mb():.0f} MB",
    ]
    if s.drafted_tokens is not None:
        lines.append(speculation_line(s))
    if s.context_shifts:
        lines.append(f"context shift: the context was full {plural(s.context_shifts, 'time')}; "
                     f"{plural(s.dropped_tokens, 'token')} dropped after the system prompt")
    print("\n".join(lines), file=sys.stderr, flush=True)


def speculation_line(s) -> str:
    rate = f" ({s.acceptance:.0%})" if s.acceptance is not None else ""
    return f"speculative ({s.draft}): {plural(s.drafted_tokens, 'token')} drafted · {s.accepted_tokens} accepted{rate}"


def result_dict(sess, plan, done: Done, prompt_ids: list[int], logprobs: list[dict] | None = None) -> dict:
    """``logprobs`` line up with ``tokens``; the EOS token that ended generation (not in
    ``tokens``) gets its entry as ``stop_logprob``."""
    extra = {}
    if logprobs is not None:
        extra["logprobs"] = logprobs[: len(done.tokens)]
        if done.stop_token is not None and len(logprobs) > len(done.tokens):
            extra["stop_logprob"] = logprobs[len(done.tokens)]
    return {
        "text": done.text,
        "tokens": done.tokens,  # the text's tokens; stats.generated_tokens also counts stop_token
        "stop_reason": done.reason,
        "stop_token": done.stop_token,
        "prompt_tokens": len(prompt_ids),
        "backend": sess.backend.name,
        "device": sess.backend.device,
        "reason": plan.choice.reason,
        "model": plan.model,
        "stats": {**done.stats.as_dict(), "peak_memory_mb": round(peak_memory_mb(), 1)},
        **({"from_draft": done.from_draft[: len(done.tokens)]} if done.stats.drafted_tokens is not None else {}),
        **extra,
    }


def write_trace(path: str, sess, prompt_ids: list[int], done: Done, logprobs: list[dict] | None = None) -> None:
    """Every prompt and generated token; with ``logprobs``, each generated one's log-probability and top K."""
    tok = sess.tokenizer
    generated = [{"id": i, "text": tok.decode([i]), "t": round(t, 6)} for i, t in done.trace]
    for entry, lp in zip(generated, logprobs or ()):
        entry.update(logprob=lp["logprob"], top=lp["top"])
    for entry, drafted in zip(generated, done.from_draft):  # speculative runs: proposed by the draft, kept
        entry["draft"] = drafted
    data = {
        "backend": sess.backend.name,
        "prompt": [{"id": i, "text": tok.decode([i])} for i in prompt_ids],
        "generated": generated,
        "stop_reason": done.reason,
        "stats": done.stats.as_dict(),
    }
    try:
        atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=1))
    except OSError as e:
        raise MlxgenError(f"--trace {path}: cannot write ({e.strerror or e})") from None
