"""MLX across ranks (mx.distributed, ring over 127.0.0.1): the same logits and tokens as one
process, the launcher, and what happens when a rank dies, cannot join or is unreachable.

Tiny random qwen3 (tensor parallel: its heads and 4-bit groups of 32 split in two) and llama
(groups of 64 do not split: pipeline parallel, mlxgen's own stack) models, 2 ranks. Every
multi-rank run has a timeout; nothing is left running. The embedded SmolLM2 over 2 ranks
(pipeline: 9 heads) is measured by scripts/distributed_check.py (too slow for the suite).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlxgen import launch  # noqa: E402
from mlxgen.errors import MlxgenError, RankLost, rank_lost  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "distributed_check.py"
pytestmark = pytest.mark.mlx


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return {**os.environ, "MLXGEN_CACHE": str(tmp_path_factory.mktemp("cache")), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def models(tmp_path_factory, env):
    from test_mlx_backend import build_hf_model

    base = tmp_path_factory.mktemp("hf")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLXGEN_CACHE", env["MLXGEN_CACHE"])
        from mlxgen.backends import mlx_convert

        out["qwen3"] = mlx_convert.convert(str(build_hf_model(base / "qwen3", "qwen3", seed=1)), group_size=32)
        out["llama"] = mlx_convert.convert(str(build_hf_model(base / "llama", "llama", seed=2)))
    return out


def ranks(n: int, argv: list[str], env: dict, extra: dict | None = None, **kw) -> list[subprocess.Popen]:
    """n processes of ``python ARGV`` as ring ranks on 127.0.0.1 (the environment mlx.launch sets)."""
    base = launch.free_ports(n)
    hostfile = Path(env["MLXGEN_CACHE"]) / f"hosts-{base}.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{base + r}"] for r in range(n)]))
    return [subprocess.Popen([sys.executable, *argv], env={**env, **(extra or {}), "MLX_RANK": str(r),
                                                          "MLX_HOSTFILE": str(hostfile)}, **kw) for r in range(n)]


def finish(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    try:
        return [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------ same numbers


@pytest.mark.parametrize("arch, mode", [("qwen3", "tensor parallel"), ("llama", "pipeline parallel")])
def test_two_ranks_give_the_single_process_logits_and_tokens(models, env, tmp_path, arch, mode) -> None:
    """200 teacher-forced positions within 1e-4, greedy 64 tokens identical, sampled (seeded) identical."""
    folder = str(models[arch])
    single, split = tmp_path / "one.npz", tmp_path / "two.npz"
    subprocess.run([sys.executable, str(CHECK), folder, str(single)], env=env, check=True, timeout=120)
    procs = ranks(2, [str(CHECK), folder, str(split)], env, stderr=subprocess.PIPE)
    assert finish(procs, 240) == [0, 0], procs[0].stderr.read().decode()[-2000:]
    a, b = np.load(single), np.load(split)
    assert int(b["ranks"]) == 2 and a["logits"].shape == (200, b["logits"].shape[1])
    assert np.abs(a["logits"] - b["logits"]).max() < 1e-4
    assert len(a["greedy"]) == 64 and a["greedy"].tolist() == b["greedy"].tolist()
    assert len(a["sampled"]) == 64 and a["sampled"].tolist() == b["sampled"].tolist()
    assert int(b["sent_bytes"]) > 0  # rank 0 really broadcast the calls


def test_run_and_bench_with_ranks(models, env) -> None:
    """`run --ranks 2` prints what one process prints; bench's table says how many ranks ran."""
    args = ["run", "--model", str(models["qwen3"]), "--raw", "--temperature", "0", "-n", "12", "-q", "hello"]
    one = subprocess.run([sys.executable, "-m", "mlxgen", *args], env=env, capture_output=True, timeout=120)
    two = subprocess.run([sys.executable, "-m", "mlxgen", *args, "--ranks", "2"], env=env, capture_output=True,
                         timeout=120)
    assert one.returncode == two.returncode == 0, two.stderr.decode()[-2000:]
    assert one.stdout == two.stdout and one.stdout
    bench = subprocess.run([sys.executable, "-m", "mlxgen", "bench", "--ranks", "1,2", "--model", str(models["qwen3"]),
                            "-p", "8", "-n", "8", "-r", "1", "--warmup", "0"], env=env, capture_output=True, timeout=180)
    assert bench.returncode == 0, bench.stderr.decode()[-2000:]
    tables = bench.stdout.decode()
    assert tables.count("| tg8 |") == 2 and "mlx CPU ×2 ranks" in tables


# ------------------------------------------------------------------ faults


def _rank_pids(parent: int) -> dict[int, int]:
    kids = [int(k) for k in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    out = {}
    for k in kids:
        for item in Path(f"/proc/{k}/environ").read_bytes().split(b"\0"):
            if item.startswith(b"MLX_RANK="):
                out[int(item.split(b"=")[1])] = k
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
@pytest.mark.parametrize("victim", ["kill rank 1", "kill rank 0", "ctrl-c"])
def test_a_dead_rank_or_ctrl_c_ends_every_rank(models, env, victim) -> None:
    """Mid-generation: every rank ends within 10 s, one clear line, the exit code says why, nothing left."""
    p = subprocess.Popen([sys.executable, "-m", "mlxgen", "run", "--ranks", "2", "--model", str(models["qwen3"]), "--raw",
                          "--temperature", "0", "-n", "200000", "--ctx", "300000", "hello"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        p.stdout.read(200)  # generating
        pids = _rank_pids(p.pid)
        assert sorted(pids) == [0, 1]
        t0 = time.monotonic()
        if victim == "ctrl-c":
            os.killpg(p.pid, signal.SIGINT)  # what a terminal sends: every process of the group
        else:
            os.kill(pids[int(victim[-1])], signal.SIGKILL)
        p.stdout.read()
        err = p.stderr.read().decode(errors="replace")
        code = p.wait(15)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert took < 10, took
    assert not [pid for pid in pids.values() if _alive(pid)]
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("mlxgen: error:")]
    if victim == "ctrl-c":
        assert code == 130 and not errors and "stop: interrupted" in err
    else:
        assert code == RankLost.exit_code and len(errors) == 1, err
        assert "every rank stops" in errors[0]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from /proc")
def test_serve_answers_the_request_a_dead_rank_cut_then_ends(models, env) -> None:
    """serve --ranks 2: rank 1 killed mid-stream. The client gets an error event naming the lost
    rank (not a bare EOF), the server ends with the lost-rank code and one line, nothing left."""
    import http.client

    port = launch.free_ports(1)
    p = subprocess.Popen([sys.executable, "-m", "mlxgen", "serve", "--ranks", "2", "--model", str(models["qwen3"]),
                          "--port", str(port), "--ctx", "300000"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # up when /health answers
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read().decode()[-2000:]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        pids = _rank_pids(p.pid)
        assert sorted(pids) == [0, 1]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        body = {"model": models["qwen3"].name, "prompt": "hello", "max_tokens": 200000, "stream": True, "temperature": 0}
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        first = resp.fp.readline() + resp.fp.readline()
        assert first.startswith(b"data: {"), first  # generating
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        rest = resp.read().decode(errors="replace")
        code = p.wait(15)
        took = time.monotonic() - t0
        err = p.stderr.read().decode(errors="replace")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    events = [json.loads(ln[6:]) for ln in rest.splitlines() if ln.startswith("data: {")]
    assert events and "error" in events[-1], (rest[-500:], err[-1000:])
    assert "error" in events[-1] and "every rank stops" in events[-1]["error"]["message"], rest[-500:]
    assert "[DONE]" not in rest
    assert code == RankLost.exit_code and took < 10, (code, took)
    assert not [pid for pid in pids.values() if _alive(pid)]
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if ln.startswith("mlxgen: error:")]) == 1, err


def test_a_rank_that_cannot_join_says_so_within_the_timeout(models, env) -> None:
    """Rank 0 of a two-rank hostfile whose other rank never starts: one line after MLXGEN_JOIN_TIMEOUT."""
    two = Path(env["MLXGEN_CACHE"]) / "two.json"
    base = launch.free_ports(2)
    two.write_text(json.dumps([[f"127.0.0.1:{base}"], [f"127.0.0.1:{base + 1}"]]))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", "--model", str(models["qwen3"]), "hi"],
                          env={**env, "MLX_RANK": "0", "MLX_HOSTFILE": str(two), "MLXGEN_JOIN_TIMEOUT": "2"},
                          capture_output=True, timeout=60)
    took = time.monotonic() - t0
    err = proc.stderr.decode()
    assert proc.returncode != 0 and took < 20
    assert [ln for ln in err.splitlines() if ln.startswith("mlxgen: error:")] == [
        "mlxgen: error: rank 0: could not join the other ranks within 2 s (a host unreachable, a port blocked, "
        "or a rank that never started)"]


def test_an_unreachable_host_is_one_line_within_the_timeout(tmp_path, env) -> None:
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "10.255.255.1", "ips": ["10.255.255.1"]}, {"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}]))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mlxgen", "run", "--hosts", str(hosts), "hi"], env=env,
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 25
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 1 and len(err) == 1, err
    assert err[0].startswith(f"mlxgen: error: --hosts {hosts}: ") and "10.255.255.1" in err[0]


# ------------------------------------------------------------------ pieces


def test_doctor_shows_the_group(env) -> None:
    one = subprocess.run([sys.executable, "-m", "mlxgen", "doctor"], env=env, capture_output=True, timeout=60)
    assert "mlx group" in one.stdout.decode() and "single process" in one.stdout.decode()
    two = subprocess.run([sys.executable, "-m", "mlxgen", "doctor", "--ranks", "2"], env=env, capture_output=True,
                         timeout=60)
    assert two.returncode == 0
    assert "ring backend, 2 ranks, this is rank 0" in two.stdout.decode()


def test_flags_are_stripped_and_checked() -> None:
    assert launch.strip_flags(["run", "--ranks", "2", "-n", "3", "--hosts=h.json", "x"]) == ["run", "-n", "3", "x"]
    assert launch.parse_ranks("1,2", many=True) == [1, 2]
    for bad, many in (("0", False), ("1,2", False), ("two", True), ("", True)):
        with pytest.raises(MlxgenError, match="--ranks"):
            launch.parse_ranks(bad, many)


class _Group:
    def __init__(self, n: int) -> None:
        self.n = n

    def size(self) -> int:
        return self.n

    def rank(self) -> int:
        return 0


def test_a_model_that_cannot_be_split_is_refused_in_one_line(models) -> None:
    from types import SimpleNamespace

    from mlxgen.backends import mlx_distributed
    from mlxgen.backends.mlx import read_model

    with pytest.raises(MlxgenError, match=r"^gemma: this model cannot be split across 2 ranks"):
        mlx_distributed.split(SimpleNamespace(), {"model_type": "gemma"}, _Group(2))
    model, config = read_model(models["llama"], lazy=True)
    with pytest.raises(MlxgenError, match=r"^llama: 2 layers cannot be split across 3 ranks"):
        mlx_distributed.split(model, config, _Group(3))
    assert mlx_distributed.heads_divide(read_model(models["qwen3"], lazy=True)[0], 2)
    assert not mlx_distributed.heads_divide(model, 2)  # 4-bit groups of 64 over a 64-wide input: no


def test_a_lost_peer_is_one_line() -> None:
    lost = rank_lost(RuntimeError("[ring] connection to a peer was lost"))
    assert isinstance(lost, RankLost) and "lost the connection to another rank" in str(lost)
    assert rank_lost(RuntimeError("something else")) is None
