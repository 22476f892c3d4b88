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
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from mlxgen import __version__, backends, hardware, render
from mlxgen.backends.base import KVMemory, Measured, NativeStream, prefill_chunk
from mlxgen.config import Config
from mlxgen.errors import ConfigError, MlxgenError, first_line
from mlxgen.loop import PREFILL_CHUNK, Done, TokenEvent

Clock = Callable[[], float]
Stream = Callable[[list[int], int, int], Iterable]  # (ids, cached, n) -> tokens; the untimed setup runs in the call
LOOPS = ("mlxgen", "native", "constrained")


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
    constraint: Any = None  # a mlxgen.constraint.Spec: also run the "constrained" loop, interleaved

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
    loop: str  # "mlxgen", "native" or "speculative" (mlxgen's loop with the config's drafter)
    test: Test
    tps: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    drafted: int | None = None  # speculative: tokens drafted and accepted over the timed runs
    accepted: int | None = None

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tps)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tps) if len(self.tps) > 1 else 0.0

    @property
    def cv(self) -> float:
        """Coefficient of variation of the runs (sd / mean)."""
        return self.stdev / self.mean if self.tps and self.mean else 0.0


UNSTABLE_CV = 0.10  # runs spread wider than this are too noisy to publish as a number
PAIRS_DISAGREE = 0.10  # interleaved ours/native ratios further apart than this: no verdict


def unstable(result: Result) -> bool:
    return result.cv > UNSTABLE_CV


def pairs_disagree(ours: Result, native: Result) -> bool:
    """The interleaved pairs' ratios spread more than PAIRS_DISAGREE around their median."""
    ratios = sorted(a / b for a, b in zip(ours.tps, native.tps))
    if len(ratios) < 2:
        return False
    mid = statistics.median(ratios)
    q1, q3 = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    return (q3 - q1) / mid > PAIRS_DISAGREE


def untrusted(a: Result, b: Result) -> bool:
    """A ratio of a to b that is no verdict: either side's runs are noisy or their pairs disagree (†)."""
    return pairs_disagree(a, b) or unstable(a) or unstable(b)


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
    ranks: int = 1  # processes the model is split across (a distributed MLX group), rank 0 measured
    kv_type: str = ""  # the KV cache's element type (llm.kv_bits): "f16", "q8_0", "8-bit (group 32, keys rotated)" …
    kv_bytes: int | None = None  # the most memory the KV cache held after any run (llama.cpp: allocated at load)


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


def mlxgen_stream(sess, speculate: bool = False) -> Stream:
    """mlxgen's shared loop on the session's backend (greedy, EOS ignored); ``speculate``:
    with the session's drafter (``--draft-model``, ``--lookup``), else plain decoding."""

    def stream(ids: list[int], cached: int, n: int) -> Iterator[int]:
        sess.cache.fill(ids[:cached])  # an empty cache, then the depth, chunked as the loop prefills
        return tokens(sess.generate(ids, ignore_eos=True, max_tokens=n, cached=cached, speculate=speculate))

    def tokens(events) -> Iterator[int]:
        for event in events:
            if isinstance(event, TokenEvent) and event.id >= 0:
                yield event.id
            elif isinstance(event, Done) and event.reason == "interrupted":
                raise KeyboardInterrupt  # the loop keeps Ctrl-C as a stop reason; bench stops

    stream.tokens = tokens
    return stream


def constrained_stream(sess, spec, report: Report) -> Stream:
    """mlxgen's loop with the constraint's mask applied to every token (a fresh matcher per run).

    EOS is ignored, as in every test: once the grammar is complete only EOS is allowed, so
    ``report.environment["constraint"]`` records how many tokens the grammar was still open for.
    """
    from mlxgen import constraint

    grammar = constraint.bind(spec, sess.tokenizer, sess.backend.vocab_size, sess.eos_ids)
    info = report.environment.setdefault("constraint", {"label": spec.label, "check_ms": spec.check_ms})
    info.update(compile_ms=grammar.compile_ms, tokenizer_ms=grammar.tokenizer_ms)
    plain = mlxgen_stream(sess)

    def stream(ids: list[int], cached: int, n: int) -> Iterator[int]:
        matcher = grammar.matcher(sess.ops)
        sample = sess.sampler(processors=(matcher,))
        sess.cache.fill(ids[:cached])
        events = sess.generate(ids, ignore_eos=True, max_tokens=n, cached=cached, sample=sample)
        for i, tid in enumerate(plain.tokens(events), 1):
            info["open_tokens"], info["of_tokens"] = matcher.open_tokens, i
            yield tid

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
    speculation=None,
    observe: Callable[[], None] = lambda: None,
) -> None:
    """Warm-ups, then timed repetitions interleaved A B B A A B …; results land in ``report`` as they come.

    ``speculation``: the drafter the "speculative" stream uses (its counts go on that loop's results).
    ``observe``: called after every run (bench reads the KV cache's size there).
    """
    for test in settings.tests():
        results = {loop: Result(backend, loop, test) for loop in streams}
        report.results.extend(results.values())
        for i in range(settings.warmup):
            for loop, stream in streams.items():
                progress(f"{backend} {test.name}: warm-up {i + 1}/{settings.warmup} ({loop})")
                run_test(stream, test, trace, clock, settle)
                observe()
        for i in range(settings.repetitions):
            order = list(streams.items())
            for loop, stream in order if i % 2 == 0 else order[::-1]:
                progress(f"{backend} {test.name}: run {i + 1}/{settings.repetitions} ({loop})")
                before = _draft_counts(speculation) if loop == "speculative" else None
                tps, ttft = run_test(stream, test, trace, clock, settle)
                results[loop].tps.append(tps)
                results[loop].ttft_s.append(ttft)
                observe()
                if before is not None:
                    drafted, accepted = (a - b for a, b in zip(_draft_counts(speculation), before))
                    results[loop].drafted = (results[loop].drafted or 0) + drafted
                    results[loop].accepted = (results[loop].accepted or 0) + accepted


def _draft_counts(speculation) -> tuple[int, int]:
    return (speculation.drafted, speculation.accepted) if speculation is not None else (0, 0)


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
    load: Callable[[], dict] | None = None,
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
        raise backends.nothing_installed()
    settings.check(cfg.llm.n_ctx)
    cfg = bench_config(cfg)
    report = Report(settings, sources.describe_llm(cfg.llm), settings.seed, environment=environment(facts, names))
    report.environment["config"] = cfg.source
    inf = cfg.inference
    if inf.lookup or inf.draft:
        report.environment["draft"] = (f"lookup {inf.lookup}" if inf.lookup else f"draft model {inf.draft}, "
                                       f"{inf.draft_tokens} tokens") + (", adaptive" if inf.adaptive_draft else "")
    load = load or machine_load
    busy_start = load()
    try:
        for name in names:
            try:
                _bench_backend(name, cfg, facts, open_session, settings, clock, report, progress)
            except (MlxgenError, RuntimeError, ValueError, OSError) as e:
                if len(names) == 1:
                    raise
                report.errors.append(f"{name}: {first_line(e)}")
                progress(f"{name}: failed ({report.errors[-1]})")
    except KeyboardInterrupt:
        report.interrupted = True
    report.results = [r for r in report.results if r.tps]
    report.environment["load"] = load_report(busy_start, load(), facts.cpu_count)
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
        measured = isinstance(sess.backend, Measured)
        if measured:
            sess.backend.reset_peak_memory()
        streams = {"mlxgen": mlxgen_stream(sess)}
        if settings.constraint is not None:
            streams["constrained"] = constrained_stream(sess, settings.constraint, report)
        if sess.speculation is not None:  # --draft-model / --lookup: against plain decoding, interleaved
            streams["speculative"] = mlxgen_stream(sess, speculate=True)
        if settings.vs_native:
            streams["native"] = _native_stream(sess, name)
        settle = sess.backend.synchronize if measured else lambda: None

        def observe() -> None:  # the KV cache's size after a run: the deepest test's is the peak
            if isinstance(sess.backend, KVMemory):
                kv = sess.backend.kv_cache()
                run.kv_type, run.kv_bytes = kv["type"], max(run.kv_bytes or 0, kv["bytes"])

        observe()
        measure(name, streams, settle, report.trace, settings, clock, report, progress, sess.speculation, observe)
    finally:
        if report.backends and report.backends[-1].name == name:
            run = report.backends[-1]
            run.peak_rss_bytes, run.peak_rss_scope = peak_rss()
            run.device_peak_bytes = sess.backend.peak_memory() if isinstance(sess.backend, Measured) else None
        sess.close()


def bench_config(cfg: Config) -> Config:
    """Greedy, no stop strings, no repetition penalty, no constraint (``Settings.constraint`` adds
    its own loop): every loop does the same work."""
    from mlxgen.config import ConstraintConfig

    inf = dataclasses.replace(cfg.inference, temperature=0.0, stop=(), repetition_penalty=1.0,
                              constraint=ConstraintConfig())
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
    if not isinstance(sess.backend, NativeStream):
        raise MlxgenError(f"backend {name} has no native loop to compare with (--vs-native)")
    return sess.backend.native_stream


def _backend_run(name: str, sess, cfg: Config, facts: hardware.Facts, load_s: float, reload_s: float) -> BackendRun:
    from mlxgen import session

    info = sess.backend.describe() if isinstance(sess.backend, Measured) else {}
    return BackendRun(
        name=name,
        device=sess.backend.device,
        threads=info.get("threads"),
        model=info.get("model", "?"),
        size_bytes=info.get("size_bytes"),
        params=info.get("params"),
        load_s=load_s,
        reload_s=reload_s,
        source=session.plan(cfg, facts).model,
        note=info.get("note", ""),
        n_ctx=sess.backend.n_ctx,
        n_gpu_layers=info.get("n_gpu_layers"),
        prefill_chunk=prefill_chunk(sess.backend, PREFILL_CHUNK),
        build=info.get("build", ""),
        ranks=int(info.get("ranks", 1)),
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


def machine_load() -> dict:
    """The 1-minute load average and the CPU time counters (steal included) right now."""
    import os

    out: dict = {"time": time.monotonic()}
    try:
        out["loadavg"] = os.getloadavg()[0]
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        out["cpu_total"], out["cpu_steal"] = sum(fields[:8]), fields[7] if len(fields) > 7 else 0
    except (OSError, ValueError, IndexError):
        pass
    return out


def load_report(start: dict, end: dict, cpus: int) -> dict:
    """Was the machine busy while bench ran? Load above the core count (more runnable
    threads than cores) or more than 2% steal time means the numbers may be off."""
    load = max((x["loadavg"] for x in (start, end) if "loadavg" in x), default=None)
    steal = None
    if "cpu_total" in start and "cpu_total" in end and end["cpu_total"] > start["cpu_total"]:
        steal = (end["cpu_steal"] - start["cpu_steal"]) / (end["cpu_total"] - start["cpu_total"])
    busy = (load is not None and load > cpus) or (steal is not None and steal > 0.02)
    return {"loadavg_max": load, "steal": steal, "cpus": cpus, "busy": busy}


def environment(facts: hardware.Facts, names: list[str]) -> dict:
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "mlxgen": __version__,
        "libraries": {dist: version(dist) for name in names for dist in backends.REGISTRY[name].libraries},
        "platform": f"{facts.system} {facts.machine}",
        "chip": hardware.chip_name(),
        "cpus": facts.cpu_count,
        "python": platform.python_version(),
    }
