"""`mlxgen bench`'s output: the markdown table and footer, csv / json / jsonl records, the plot.

Reads a finished ``mlxgen.bench.Report``; measures nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics

from mlxgen.bench import BackendRun, Report, Result, paired, unstable, untrusted
from mlxgen.errors import MlxgenError
from mlxgen.render import plural


def _size(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def _params(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _device(run: BackendRun) -> str:
    d = run.device.lower()
    kind = "CPU" if d.startswith("cpu") else "Metal" if "metal" in d else "CUDA" if "cuda" in d else "GPU"
    return f"{run.name} {kind}" + (f" ×{run.ranks} ranks" if run.ranks > 1 else "")


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
            "constrained": report.result(run.name, "constrained", test),
            "spec": report.result(run.name, "speculative", test),
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
    constrained = report.settings.constraint is not None
    if constrained:
        head += ["constrained t/s", "constrained/plain", "constraint µs/tok"]
        align += ["---:", "---:", "---:"]
    spec = any(r.loop == "speculative" for r in report.results)
    if spec:
        head += ["speculative t/s", "spec/plain", "accepted"]
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
            mark = " †" if nat and untrusted(ours, nat) else ""
            cells += [_ts(nat, report), f"{ratio:.3f}{mark}", f"{overhead:+.1f}"] if nat else ["-", "-", "-"]
        if constrained:
            con = row["constrained"]
            ratio, overhead = paired(con, ours) if con else (None, None)
            mark = " †" if con and untrusted(con, ours) else ""
            cells += [_ts(con, report), f"{ratio:.3f}{mark}", f"{overhead:+.1f}"] if con else ["-", "-", "-"]
        if spec:
            cells += _spec_cells(ours, row["spec"], report)
        if many:
            cells.append("-" if row["vs_base"] is None else f"{row['vs_base']:.2f}×")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += notes(report)
    lines += [footer(report)] + [
        f"{run.name}: {run.source}{f' ({run.note})' if run.note else ''} · {run.device} · "
        f"load {run.load_s:.2f} s first, {run.reload_s:.2f} s again · peak RSS {_size(run.peak_rss_bytes)}{_rss_note(run)}"
        + (f" · {run.name} allocator peak {_size(run.device_peak_bytes)}" if run.device_peak_bytes else "")
        + (f" · KV cache {run.kv_type} {_size(run.kv_bytes)}" if run.kv_bytes is not None else "")
        for run in report.backends
    ]
    lines += [f"failed: {e}" for e in report.errors]
    if report.interrupted:
        lines.append("interrupted: the table holds what finished (n=k: a test cut short after k runs)")
    return "\n".join(lines)


def _spec_cells(plain: Result, spec: Result | None, report: Report) -> list[str]:
    """Speculative t/s, its median interleaved ratio to plain decoding, and drafted tokens accepted."""
    if spec is None:
        return ["-", "-", "-"]
    ratio, _ = paired(spec, plain)
    mark = " †" if untrusted(spec, plain) else ""
    rate = f"{spec.accepted}/{spec.drafted} ({spec.acceptance:.0%})" if spec.drafted else "0/0"
    return [_ts(spec, report), f"{ratio:.2f}×{mark}", rate]


def _ts(result: Result, report: Report) -> str:
    short = len(result.tps) < report.settings.repetitions
    return (f"{result.mean:.2f} ± {result.stdev:.2f}" + (" ⚠" if unstable(result) else "")
            + (f" (n={len(result.tps)})" if short else ""))


def notes(report: Report) -> list[str]:
    """Footnotes for the marks in the table, and a warning if the machine was busy."""
    from mlxgen.bench import PAIRS_DISAGREE, UNSTABLE_CV

    out = []
    if any(unstable(r) for r in report.results):
        out.append(f"⚠ runs spread more than {UNSTABLE_CV:.0%} (sd/mean): too noisy to trust; "
                   "rerun on a quiet machine or with more -r")
    if any(other and untrusted(row["ours"], other) for row in rows(report) for other in (row["native"], row["spec"])):
        out.append(f"† not a verdict: the runs are noisy or the interleaved paired ratios disagree "
                   f"(interquartile spread above {PAIRS_DISAGREE:.0%})")
    con = report.environment.get("constraint")
    if con:
        open_part = (f"; the grammar was still open for {con['open_tokens']} of the last run's {con['of_tokens']} tokens "
                     "(after that only EOS is allowed, and ignored)" if "open_tokens" in con else "")
        out.append(f"constrained: {con['label']} · checked in {con['check_ms']:.1f} ms, compiled on the vocabulary in "
                   f"{con.get('compile_ms', 0):.1f} ms (its tokenizer built once in {con.get('tokenizer_ms', 0):.0f} ms)"
                   f"{open_part}; constrained/plain and µs/tok: medians over interleaved pairs")
    if report.settings.constraint is not None and any(
            row["constrained"] and untrusted(row["constrained"], row["ours"])
            for row in rows(report)):
        out.append("† constrained/plain not a verdict: noisy runs or disagreeing pairs")
    load = report.environment.get("load") or {}
    if load.get("busy"):
        steal = load.get("steal")
        out.append(f"warning: the machine was busy during the run (load average up to {load['loadavg_max']:.1f} "
                   f"on {load['cpus']} CPUs" + (f", steal {steal:.1%}" if steal else "") + "): numbers may be low "
                   "and ratios unreliable")
    return out


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
        f"{env['cpus']} CPUs · trace seed {report.trace_seed}, {plural(s.repetitions, 'run')} after {s.warmup} warm-up, "
        "mean ± sd" + ("; ours/native and overhead: medians over interleaved pairs" if s.vs_native else "")
        + (f"; speculative ({env['draft']}) vs plain: median over interleaved pairs" if env.get("draft") else "")
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
            "avg_ts": r.mean, "stddev_ts": r.stdev, "cv": r.cv, "unstable": unstable(r),
            "samples_ts": r.tps, "samples_ttft_s": r.ttft_s, "machine_busy": bool((env.get("load") or {}).get("busy")),
            "load_s": run.load_s, "reload_s": run.reload_s, "peak_rss_bytes": run.peak_rss_bytes,
            "rss_start_bytes": run.rss_start_bytes, "device_peak_bytes": run.device_peak_bytes,
            "kv_type": run.kv_type, "kv_bytes": run.kv_bytes,
            "interrupted": report.interrupted,
            **({"drafted": r.drafted, "accepted": r.accepted, "acceptance": r.acceptance,
                "draft": report.environment.get("draft")} if r.loop == "speculative" else {}),
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
