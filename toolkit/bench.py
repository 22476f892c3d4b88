"""`mlxgen bench`: llama-bench's tests on every backend, one token trace, one run.

Tests follow llama-bench. ``ppN`` prefills N tokens and samples one; ``tgN`` feeds one
token and generates N, each through the KV cache. ``@ dD`` runs either one after D
tokens are already cached (that prefill is not timed). Every test uses the same seeded
random token trace on every backend, greedy, EOS ignored, so all of them do the same
work. Each test runs ``warmup`` untimed times, then ``repetitions`` timed times. With
``vs_native`` the backend library's own loop (llama-cpp-python's ``Llama.generate``,
mlx-lm's ``stream_generate``) runs the same trace, interleaved with ours (A B A B …),
so machine drift hits both alike.

All loops are timed the same way, from outside, with one clock:

    pp t/s = N / time to the first token        tg t/s = N / time to the N-th token

Backends run one after another, each in its own session. Its peak memory is the
process's peak RSS from its load to its last test (Linux resets the high-water
mark per backend; elsewhere it is the process's peak so far).
"""

from __future__ import annotations

import dataclasses
import itertools
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from mlxgen import __version__, hardware, render
from mlxgen.config import Config
from mlxgen.errors import ConfigError, MlxgenError
from mlxgen.loop import PREFILL_CHUNK, Done, TokenEvent, prefill

Clock = Callable[[], float]
Stream = Callable[[list[int], int, int], Iterable]  # (ids, cached, n) -> tokens; the untimed setup runs in the call
LOOPS = ("mlxgen", "native")


@dataclass(frozen=True)
class Test:
    kind: str  # "pp" or "tg"
    n: int
    depth: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}" + (f" @ d{self.depth}" if self.depth else "")

    @property
    def positions(self) -> int:
        """Cache positions the test fills (depth, prompt, generated tokens)."""
        return self.depth + self.n + 1

    def prompt(self, trace: list[int]) -> list[int]:
        return trace[: self.depth + (self.n if self.kind == "pp" else 1)]

    @property
    def new_tokens(self) -> int:
        return 1 if self.kind == "pp" else self.n


@dataclass(frozen=True)
class Settings:
    n_prompt: tuple[int, ...] = (512,)
    n_gen: tuple[int, ...] = (128,)
    depths: tuple[int, ...] = (0,)
    repetitions: int = 5
    warmup: int = 1
    seed: int = 42
    vs_native: bool = False

    def tests(self) -> list[Test]:
        return [Test("pp", n, d) for d in self.depths for n in self.n_prompt] + [
            Test("tg", n, d) for d in self.depths for n in self.n_gen
        ]

    def check(self, n_ctx: int, where: str = "llm.n_ctx") -> None:
        for test in self.tests():
            if test.positions > n_ctx:
                raise ConfigError(
                    f"bench {test.name}: needs {test.positions} positions but the context holds {n_ctx} "
                    f"({where}); lower -p/-n/--depth or raise --ctx"
                )


def parse_counts(text: str, flag: str, minimum: int = 1) -> tuple[int, ...]:
    """A llama-bench style comma list (``512,1024``), each at least ``minimum``."""
    values = []
    for part in str(text).split(","):
        try:
            value = int(part.strip())
        except ValueError:
            raise ConfigError(f"{flag} {text!r}: expected a number or a comma list of numbers") from None
        if value < minimum:
            raise ConfigError(f"{flag} {value}: must be at least {minimum}")
        values.append(value)
    return tuple(dict.fromkeys(values))


# -------------------------------------------------------------------- results


@dataclass
class Result:
    """One test of one loop on one backend: a sample per timed repetition."""

    backend: str
    loop: str  # "mlxgen" or "native"
    test: Test
    tps: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tps)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tps) if len(self.tps) > 1 else 0.0


@dataclass
class BackendRun:
    name: str
    device: str
    threads: int | None
    model: str
    size_bytes: int | None
    params: int | None
    load_s: float  # first load in this run: includes any download or GGUF->MLX conversion
    reload_s: float | None  # the same load again right after: everything cached (warm)
    source: str = ""  # where the weights came from (a GGUF, its MLX import, an MLX repo)
    note: str = ""  # e.g. how the GGUF import went (lossless or requantized)
    n_ctx: int | None = None
    n_gpu_layers: int | None = None
    prefill_chunk: int | None = None
    build: str = ""  # the backend library's build / device facts
    peak_rss_bytes: int | None = None
    peak_rss_scope: str = "backend"  # "backend" (reset per backend) or "process" (peak so far)
    rss_start_bytes: int | None = None  # resident before this backend loaded (what it shares with earlier ones)
    device_peak_bytes: int | None = None  # the backend library's own allocator peak (MLX), if it keeps one


@dataclass
class Report:
    settings: Settings
    model_source: str
    trace_seed: int
    backends: list[BackendRun] = field(default_factory=list)
    results: list[Result] = field(default_factory=list)
    environment: dict = field(default_factory=dict)
    interrupted: bool = False
    errors: list[str] = field(default_factory=list)  # backends that failed, one line each
    trace: list[int] | None = None  # the token trace every backend and loop ran

    def result(self, backend: str, loop: str, test: Test) -> Result | None:
        for r in self.results:
            if (r.backend, r.loop, r.test) == (backend, loop, test) and r.tps:
                return r
        return None


# -------------------------------------------------------------------- timing


def random_trace(seed: int, length: int, vocab_size: int, skip: Iterable[int] = ()) -> list[int]:
    """``length`` token ids drawn uniformly (seeded) from the vocabulary minus ``skip`` (special tokens)."""
    import numpy as np

    pool = np.setdiff1d(np.arange(vocab_size), np.fromiter(skip, dtype=np.int64))
    return [int(i) for i in pool[np.random.default_rng(seed).integers(0, len(pool), size=length)]]


def time_tokens(tokens: Iterable, n: int, clock: Clock) -> list[float]:
    """Seconds from the start to each of the first ``n`` tokens the iterator gives."""
    t0 = clock()
    times: list[float] = []
    for _ in tokens:
        times.append(clock() - t0)
        if len(times) == n:
            break
    return times


def run_test(stream: Stream, test: Test, trace: list[int], clock: Clock, settle: Callable[[], None]) -> tuple[float, float]:
    """One timed repetition -> (tokens/s, time to first token in s).

    Untimed: the stream's setup (an empty cache, the depth prefilled) and ``settle``,
    which waits for any device work still queued (a GPU eval, mlx-lm's look-ahead step).
    """
    tokens = stream(test.prompt(trace), test.depth, test.new_tokens)
    settle()
    times = time_tokens(tokens, test.new_tokens, clock)
    if len(times) != test.new_tokens:
        raise MlxgenError(f"bench {test.name}: the loop gave {len(times)} of {test.new_tokens} tokens")
    return (test.n / times[0] if test.kind == "pp" else test.n / times[-1]), times[0]


def mlxgen_stream(sess) -> Stream:
    """mlxgen's shared loop on the session's backend (greedy, EOS ignored)."""
    backend = sess.backend

    def stream(ids: list[int], cached: int, n: int) -> Iterator[int]:
        backend.trim(0)
        if cached:
            prefill(backend, ids[:cached])  # the depth, chunked as the loop prefills
        return tokens(sess.generate(ids, ignore_eos=True, max_tokens=n, cached=cached))

    def tokens(events) -> Iterator[int]:
        for event in events:
            if isinstance(event, TokenEvent) and event.id >= 0:
                yield event.id
            elif isinstance(event, Done) and event.reason == "interrupted":
                raise KeyboardInterrupt  # the loop keeps Ctrl-C as a stop reason; bench stops

    return stream


def measure(
    backend: str,
    streams: dict[str, Stream],
    settle: Callable[[], None],
    trace: list[int],
    settings: Settings,
    clock: Clock,
    report: Report,
    progress: Callable[[str], None],
) -> None:
    """Warm-ups, then timed repetitions interleaved A B B A A B …; results land in ``report`` as they come."""
    for test in settings.tests():
        results = {loop: Result(backend, loop, test) for loop in streams}
        report.results.extend(results.values())
        for i in range(settings.warmup):
            for loop, stream in streams.items():
                progress(f"{backend} {test.name}: warm-up {i + 1}/{settings.warmup} ({loop})")
                run_test(stream, test, trace, clock, settle)
        for i in range(settings.repetitions):
            order = list(streams.items())
            for loop, stream in order if i % 2 == 0 else order[::-1]:
                progress(f"{backend} {test.name}: run {i + 1}/{settings.repetitions} ({loop})")
                tps, ttft = run_test(stream, test, trace, clock, settle)
                results[loop].tps.append(tps)
                results[loop].ttft_s.append(ttft)


def paired(ours: Result, native: Result) -> tuple[float, float]:
    """(ours/native t/s, ours - native µs per token): medians over the interleaved pairs.

    Pairing run i with run i cancels slow drift; medians ignore a run a neighbour
    process disturbed. Both figures come from the same pairs, so they agree in sign.
    """
    pairs = list(zip(ours.tps, native.tps))
    ratio = statistics.median(a / b for a, b in pairs)
    overhead = statistics.median(1e6 / a - 1e6 / b for a, b in pairs)
    return ratio, overhead


# -------------------------------------------------------------------- run


def run_bench(
    cfg: Config,
    names: list[str],
    settings: Settings,
    facts: hardware.Facts | None = None,
    *,
    open_session: Callable | None = None,
    clock: Clock = time.perf_counter,
    progress: Callable[[str], None] = lambda _: None,
) -> Report:
    """Run every test on every named backend; Ctrl-C ends early with what finished.

    A backend that fails (cannot load this model, say) is reported and skipped, so
    the others still run; if none runs, its error is raised.
    """
    facts = facts or hardware.gather_facts()  # first: it imports llama_cpp before numpy (see cli.probe_hardware)
    if open_session is None:
        from mlxgen.session import open_session
    from mlxgen import sources

    if not names:
        raise MlxgenError('no backend is installed: pip install "mlxgen[llamacpp]" (or "mlxgen[mlx]")')
    settings.check(cfg.llm.n_ctx)
    cfg = bench_config(cfg)
    report = Report(settings, sources.describe_llm(cfg.llm), settings.seed, environment=environment(facts, names))
    report.environment["config"] = cfg.source
    try:
        for name in names:
            try:
                _bench_backend(name, cfg, facts, open_session, settings, clock, report, progress)
            except (MlxgenError, RuntimeError, ValueError, OSError) as e:
                if len(names) == 1:
                    raise
                report.errors.append(f"{name}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
                progress(f"{name}: failed ({report.errors[-1]})")
    except KeyboardInterrupt:
        report.interrupted = True
    report.results = [r for r in report.results if r.tps]
    if not report.backends and report.errors and not report.interrupted:
        raise MlxgenError(f"bench: no backend ran; {'; '.join(report.errors)}")
    return report


def _bench_backend(name, cfg, facts, open_session, settings, clock, report, progress) -> None:
    choice = hardware.detect(facts, name)
    progress(f"{name}: loading")
    cfg = dataclasses.replace(cfg, backend=name)
    first = open_session(cfg, choice)  # converts or downloads if it must: its peak memory is not the model's
    first_load = first.load_s
    first.close()
    rss_start = current_rss()
    reset_peak_rss()
    sess = open_session(cfg, choice)
    try:
        settings.check(sess.backend.n_ctx, f"{name} context")
        if report.trace is None:
            report.trace = _trace(sess, settings)
        run = _backend_run(name, sess, cfg, facts, first_load, sess.load_s)
        run.rss_start_bytes = rss_start
        report.backends.append(run)
        getattr(sess.backend, "reset_peak_memory", lambda: None)()
        streams = {"mlxgen": mlxgen_stream(sess)}
        if settings.vs_native:
            streams["native"] = _native_stream(sess, name)
        settle = getattr(sess.backend, "synchronize", lambda: None)
        measure(name, streams, settle, report.trace, settings, clock, report, progress)
    finally:
        if report.backends and report.backends[-1].name == name:
            run = report.backends[-1]
            run.peak_rss_bytes, run.peak_rss_scope = peak_rss()
            device_peak = getattr(sess.backend, "peak_memory", None)
            run.device_peak_bytes = device_peak() if device_peak else None
        sess.close()


def bench_config(cfg: Config) -> Config:
    """Greedy, no stop strings, no repetition penalty: every loop does the same work."""
    inf = dataclasses.replace(cfg.inference, temperature=0.0, stop=(), repetition_penalty=1.0)
    return dataclasses.replace(cfg, inference=inf)


def same_weights(cfg: Config) -> Config:
    """For ``--backend all``: MLX imports the GGUF llama.cpp runs, so both run identical weights."""
    llm = cfg.llm
    if not (llm.path or llm.package or (llm.repo and llm.file)):
        return cfg
    mlx = dataclasses.replace(llm.mlx, repo=None, path=None)
    return dataclasses.replace(cfg, llm=dataclasses.replace(llm, mlx=mlx))


def _trace(sess, settings: Settings) -> list[int]:
    length = max(t.depth + t.n for t in settings.tests())
    hf = getattr(sess.tokenizer, "hf", None)
    special = hf.get_added_tokens_decoder().keys() if hf is not None else ()
    vocab = min(sess.tokenizer.vocab_size, sess.backend.vocab_size)
    return random_trace(settings.seed, length, vocab, special)


def _native_stream(sess, name: str) -> Stream:
    stream = getattr(sess.backend, "native_stream", None)
    if stream is None:
        raise MlxgenError(f"backend {name} has no native loop to compare with (--vs-native)")
    return stream


def _backend_run(name: str, sess, cfg: Config, facts: hardware.Facts, load_s: float, reload_s: float) -> BackendRun:
    from mlxgen import session

    describe = getattr(sess.backend, "describe", None)
    info = describe() if describe else {}
    return BackendRun(
        name=name,
        device=sess.backend.device,
        threads=getattr(sess.backend, "n_threads", None),
        model=info.get("model", "?"),
        size_bytes=info.get("size_bytes"),
        params=info.get("params"),
        load_s=load_s,
        reload_s=reload_s,
        source=session.plan(cfg, facts).model,
        note=info.get("note", ""),
        n_ctx=sess.backend.n_ctx,
        n_gpu_layers=getattr(sess.backend, "n_gpu_layers", None),
        prefill_chunk=getattr(sess.backend, "prefill_chunk", PREFILL_CHUNK),
        build=info.get("build", ""),
    )


# -------------------------------------------------------------------- machine


def reset_peak_rss() -> None:
    """Linux: reset the process's peak-RSS mark (VmHWM), so each backend gets its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _proc_status_bytes(field: str) -> int | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def current_rss() -> int | None:
    return _proc_status_bytes("VmRSS")


def peak_rss() -> tuple[int | None, str]:
    """(peak resident bytes, scope): since the last reset on Linux, else the process's peak."""
    peak = _proc_status_bytes("VmHWM")
    return (peak, "backend") if peak is not None else (render.process_peak_bytes(), "process")


def environment(facts: hardware.Facts, names: list[str]) -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    libs = {"llama.cpp": ["llama-cpp-python"], "mlx": ["mlx", "mlx-lm"]}
    return {
        "mlxgen": __version__,
        "libraries": {dist: version(dist) for name in names for dist in libs.get(name, [])},
        "platform": f"{facts.system} {facts.machine}",
        "chip": hardware.chip_name(),
        "cpus": facts.cpu_count,
        "python": platform.python_version(),
    }


# -------------------------------------------------------------------- output


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _device(run: BackendRun) -> str:
    d = run.device.lower()
    kind = "CPU" if d.startswith("cpu") else "Metal" if "metal" in d else "CUDA" if "cuda" in d else "GPU"
    return f"{run.name} {kind}"


def rows(report: Report) -> list[dict]:
    """One row per (backend, test) for mlxgen's loop, with the native and cross-backend comparisons."""
    base = report.backends[0].name if report.backends else None
    out = []
    for run, test in itertools.product(report.backends, report.settings.tests()):
        ours = report.result(run.name, "mlxgen", test)
        if ours is None:
            continue
        native = report.result(run.name, "native", test)
        first = report.result(base, "mlxgen", test)
        out.append({
            "run": run,
            "test": test,
            "ours": ours,
            "native": native,
            "vs_base": ours.mean / first.mean if first else None,
        })
    return out


def format_markdown(report: Report) -> str:
    many = len(report.backends) > 1
    native = report.settings.vs_native
    head = ["model", "size", "params", "backend", "threads", "test", "t/s", "ttft ms"]
    align = ["---", "---:", "---:", "---", "---:", "---:", "---:", "---:"]
    if native:
        head += ["native t/s", "ours/native", "overhead µs/tok"]
        align += ["---:", "---:", "---:"]
    if many:
        head.append(f"vs {report.backends[0].name}")
        align.append("---:")
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for row in rows(report):
        run, ours, nat = row["run"], row["ours"], row["native"]
        cells = [
            run.model, _size(run.size_bytes), _params(run.params), _device(run), str(run.threads or "-"),
            row["test"].name, _ts(ours, report), f"{statistics.fmean(ours.ttft_s) * 1e3:.1f}",
        ]
        if native:
            ratio, overhead = paired(ours, nat) if nat else (None, None)
            cells += [_ts(nat, report), f"{ratio:.3f}", f"{overhead:+.1f}"] if nat else ["-", "-", "-"]
        if many:
            cells.append("-" if row["vs_base"] is None else f"{row['vs_base']:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [footer(report)] + [
        f"{run.name}: {run.source}{f' ({run.note})' if run.note else ''} · {run.device} · "
        f"load {run.load_s:.2f} s first, {run.reload_s:.2f} s again · peak RSS {_size(run.peak_rss_bytes)}{_rss_note(run)}"
        + (f" · {run.name} allocator peak {_size(run.device_peak_bytes)}" if run.device_peak_bytes else "")
        for run in report.backends
    ]
    lines += [f"failed: {e}" for e in report.errors]
    if report.interrupted:
        lines.append("interrupted: the table holds what finished (n=k: a test cut short after k runs)")
    return "\n".join(lines)


def _ts(result: Result, report: Report) -> str:
    short = len(result.tps) < report.settings.repetitions
    return f"{result.mean:.2f} ± {result.stdev:.2f}" + (f" (n={len(result.tps)})" if short else "")


def _rss_note(run: BackendRun) -> str:
    if run.peak_rss_scope != "backend":
        return " (process peak so far)"
    if run.rss_start_bytes and run.peak_rss_bytes:
        return f" (+{_size(run.peak_rss_bytes - run.rss_start_bytes)} over the {_size(run.rss_start_bytes)} before its load)"
    return ""


def footer(report: Report) -> str:
    env, s = report.environment, report.settings
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    return (
        f"mlxgen {env['mlxgen']}" + (f" ({libs})" if libs else "") + f" · {env['platform']}, {env['chip']}, "
        f"{env['cpus']} CPUs · trace seed {report.trace_seed}, {s.repetitions} runs after {s.warmup} warm-up, "
        "mean ± sd" + ("; ours/native and overhead: medians over interleaved pairs" if s.vs_native else "")
    )


def records(report: Report) -> list[dict]:
    """Every result with every setting: one flat record per (backend, loop, test)."""
    s, env = report.settings, report.environment
    runs = {r.name: r for r in report.backends}
    out = []
    for r in report.results:
        run = runs[r.backend]
        out.append({
            "mlxgen": env["mlxgen"], "libraries": env["libraries"], "platform": env["platform"], "chip": env["chip"],
            "cpus": env["cpus"], "config": env.get("config"), "model_source": run.source, "model": run.model,
            "import": run.note, "n_ctx": run.n_ctx, "n_gpu_layers": run.n_gpu_layers,
            "prefill_chunk": run.prefill_chunk, "build": run.build,
            "size_bytes": run.size_bytes, "params": run.params, "backend": r.backend, "device": run.device,
            "threads": run.threads, "loop": r.loop, "test": r.test.name, "kind": r.test.kind, "n": r.test.n,
            "depth": r.test.depth, "repetitions": s.repetitions, "warmup": s.warmup, "seed": s.seed,
            "avg_ts": r.mean, "stddev_ts": r.stdev, "samples_ts": r.tps, "samples_ttft_s": r.ttft_s,
            "load_s": run.load_s, "reload_s": run.reload_s, "peak_rss_bytes": run.peak_rss_bytes,
            "rss_start_bytes": run.rss_start_bytes, "device_peak_bytes": run.device_peak_bytes,
            "interrupted": report.interrupted,
        })
    return out


def format_json(report: Report) -> str:
    import json

    return json.dumps(
        {
            "settings": dataclasses.asdict(report.settings),
            "environment": report.environment,
            "model_source": report.model_source,
            "backends": [dataclasses.asdict(b) for b in report.backends],
            "results": records(report),
            "errors": report.errors,
            "trace": report.trace,
            "interrupted": report.interrupted,
        },
        indent=2,
        ensure_ascii=False,
    )


def format_jsonl(report: Report) -> str:
    import json

    return "\n".join(json.dumps(r, ensure_ascii=False) for r in records(report))


def format_csv(report: Report) -> str:
    import csv
    import io
    import json

    recs = records(report)
    buf = io.StringIO()
    if recs:
        writer = csv.DictWriter(buf, fieldnames=list(recs[0]), lineterminator="\n")
        writer.writeheader()
        for rec in recs:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in rec.items()})
    return buf.getvalue().rstrip("\n")


FORMATS = {"md": format_markdown, "csv": format_csv, "json": format_json, "jsonl": format_jsonl}


def check_plot_path(path: str) -> None:
    """Fail before any work if the plot cannot be written or drawn."""
    import importlib.util
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise MlxgenError(f"--plot {path}: is a folder; name a file such as bench.png")
    if not os.path.isdir(folder):
        raise MlxgenError(f"--plot {path}: its folder does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise MlxgenError(f"--plot {path}: not writable")
    if importlib.util.find_spec("matplotlib") is None:
        raise MlxgenError('--plot needs matplotlib, which is not installed: pip install "mlxgen[plot]"')
    from matplotlib.backend_bases import FigureCanvasBase

    kinds = FigureCanvasBase.get_supported_filetypes()
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    if ext not in kinds:
        raise MlxgenError(f"--plot {path}: unknown image type {ext or '(none)'!r}; use one of {', '.join(sorted(kinds))}")


def plot(report: Report, path: str) -> None:
    """A bar chart of t/s per test, one bar per backend and loop, with ±sd error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = [t for t in report.settings.tests() if any(r.test == t for r in report.results)]
    series = list(dict.fromkeys((r.backend, r.loop) for r in report.results))
    fig, axes = plt.subplots(1, len(tests), figsize=(3.2 * len(tests) + 1, 4), squeeze=False)
    for ax, test in zip(axes[0], tests):
        found = [(f"{b}\n{loop}", report.result(b, loop, test)) for b, loop in series]
        found = [(label, r) for label, r in found if r]
        ax.bar(range(len(found)), [r.mean for _, r in found], yerr=[r.stdev for _, r in found], capsize=4,
               color=[f"C{series.index((r.backend, r.loop))}" for _, r in found])
        ax.set_xticks(range(len(found)), [label for label, _ in found], fontsize=8)
        ax.set_title(test.name)
        ax.set_ylabel("tokens/s")
    fig.suptitle(f"mlxgen bench · {report.backends[0].model if report.backends else ''}", fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise MlxgenError(f"--plot {path}: cannot write ({e.strerror or e})") from None
    finally:
        plt.close(fig)
