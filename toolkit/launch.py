"""`--ranks N` and `--hosts FILE`: start the same mlxgen command as every rank of an MLX group.

``--ranks N`` (this machine, to try it): N processes with the environment ``mlx.launch`` gives a
ring rank (``MLX_RANK``, ``MLX_HOSTFILE`` listing 127.0.0.1 ports), supervised here:

- rank 0 gets the terminal (stdin, stdout, stderr); the others' output is dropped but their
  ``mlxgen: error:`` lines; a piped stdin is read once and given to every rank (``run -f -``);
- when a rank other than 0 ends with an error, rank 0 stops within a few seconds (it loses the
  connection and says so), and whatever is left is killed: one line, exit 75, nothing left behind;
- when rank 0 ends, the others (told by rank 0 to close) get a few seconds, then are killed;
- Ctrl-C from a terminal reaches every rank; rank 0 handles it, the others ignore it.

``--hosts FILE`` (several machines): ``mlx.launch --hostfile FILE`` (ssh to each host, the
ring, MPI or jaccl backend the file names) runs the command, after every host's ssh port
answered within ``HOST_TIMEOUT_S``. No heavy import here: mlx is only found, not imported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlxgen.errors import MlxgenError, RankLost

HOST_TIMEOUT_S = 5.0
GRACE_S = 4.0  # after one rank ends, the others get this long to end by themselves
# When another rank ends, the supervisor writes why to the file NOTE_ENV names and sends rank 0
# PEER_LOST: a server answers the request in flight with that line, then ends (its worker may be
# stuck in a collective that never returns). Ranks start with it ignored; serve handles it.
PEER_LOST = getattr(signal, "SIGUSR1", None)
NOTE_ENV = "MLXGEN_RANK_NOTE"
LOCAL = ("127.0.0.1", "localhost", "::1", "")
RANK_FLAGS = ("--ranks", "--hosts")


class LaunchError(MlxgenError):
    """--ranks / --hosts cannot start the ranks."""


def strip_flags(argv: list[str]) -> list[str]:
    """``argv`` without ``--ranks N`` / ``--hosts FILE`` (each rank runs the rest)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in RANK_FLAGS:
            skip = True
            continue
        if arg.startswith(tuple(f + "=" for f in RANK_FLAGS)):
            continue
        out.append(arg)
    return out


def parse_ranks(value: str, many: bool = False) -> list[int]:
    """``--ranks 2`` (``many``: bench's ``--ranks 1,2``), each at least 1."""
    try:
        counts = [int(v) for v in value.split(",")] if many else [int(value)]
    except ValueError:
        counts = []
    if not counts or any(n < 1 or n > 64 for n in counts):
        what = "a comma list of rank counts (1 to 64)" if many else "a number of ranks from 1 to 64"
        raise LaunchError(f"--ranks {value}: expected {what}")
    return counts


def check_mlx() -> None:
    from mlxgen import backends

    backends.require("mlx")


# --------------------------------------------------------------------- local ranks


def free_ports(n: int) -> int:
    """A first port with n free ports after it on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise LaunchError(f"--ranks {n}: found no {n} free ports on 127.0.0.1")


def local_env(rank: int, hostfile: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLX_RANK", "MLX_HOSTFILE")}
    return {**env, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile)}


def run_local(n: int, argv: list[str], stdin_data: bytes | None = None) -> int:
    """Start ``mlxgen ARGV`` as n ring ranks on 127.0.0.1 and supervise them; rank 0's exit code."""
    check_mlx()
    if n == 1:
        return subprocess.call([sys.executable, "-m", "mlxgen", *argv], stdin=_stdin(stdin_data))
    base = free_ports(n)
    with tempfile.TemporaryDirectory(prefix="mlxgen-ranks-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{base + r}"] for r in range(n)]))
        return Ranks(n, argv, hostfile, stdin_data).supervise()


def _stdin(data: bytes | None):
    return None if data is None else subprocess.PIPE


class Ranks:
    def __init__(self, n: int, argv: list[str], hostfile: Path, stdin_data: bytes | None) -> None:
        self.procs: list[subprocess.Popen] = []
        self.note = hostfile.parent / "lost-rank.txt"
        cmd = [sys.executable, "-m", "mlxgen", *argv]
        ignored = signal.signal(PEER_LOST, signal.SIG_IGN) if PEER_LOST else None  # inherited through exec
        for rank in range(n):
            first = rank == 0
            stdin = subprocess.PIPE if stdin_data is not None else (None if first else subprocess.DEVNULL)
            env = {**local_env(rank, hostfile), **({NOTE_ENV: str(self.note)} if first else {})}
            p = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=None if first else subprocess.DEVNULL,
                                 stderr=None if first else subprocess.PIPE)
            self.procs.append(p)
            if stdin_data is not None:
                threading.Thread(target=_feed, args=(p, stdin_data), daemon=True).start()
            if not first:
                threading.Thread(target=_errors_only, args=(p,), daemon=True).start()
        if PEER_LOST:
            signal.signal(PEER_LOST, ignored)

    def supervise(self) -> int:
        old = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._wait()
        finally:
            self._kill_all()
            for s, h in old.items():
                signal.signal(s, h)

    def _signal(self, signum, frame) -> None:
        if signum == signal.SIGTERM:
            self._kill_all()
            raise SystemExit(128 + signum)
        # SIGINT: the terminal sent it to every rank too; rank 0 ends the run (exit 130)

    def _wait(self) -> int:
        rank0 = self.procs[0]
        while True:
            code = rank0.poll()
            if code is not None:
                self._reap(GRACE_S)
                if code < 0:  # killed: the others only saw the connection go
                    print(f"mlxgen: error: rank 0 was killed by signal {-code}; every rank stops", file=sys.stderr,
                          flush=True)
                    return RankLost.exit_code
                return code
            for rank, p in enumerate(self.procs[1:], start=1):
                if p.poll() not in (None, 0):
                    return self._lost(rank, p.returncode)
            time.sleep(0.05)

    def _lost(self, rank: int, code: int) -> int:
        """Another rank died: rank 0 notices the lost connection itself (or, serving, hears PEER_LOST
        and answers its request with the line); else it is stopped."""
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        line = f"rank {rank} {how}; every rank stops"
        if PEER_LOST and self.procs[0].poll() is None:
            try:
                self.note.write_text(line, encoding="utf-8")
                self.procs[0].send_signal(PEER_LOST)
            except OSError:
                pass
        try:
            code0 = self.procs[0].wait(GRACE_S)
        except subprocess.TimeoutExpired:
            code0 = None
        if code0 != RankLost.exit_code:  # else rank 0 said it already, in one line
            print(f"mlxgen: error: {line}", file=sys.stderr, flush=True)
        self._reap(0.0)
        return RankLost.exit_code

    def _reap(self, grace: float) -> None:
        deadline = time.monotonic() + grace
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        self._kill_all()

    def _kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(2.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _feed(p: subprocess.Popen, data: bytes) -> None:
    try:
        p.stdin.write(data)
        p.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def _errors_only(p: subprocess.Popen) -> None:
    """A follower's stderr: only its one-line errors (loading messages would repeat rank 0's)."""
    for line in p.stderr:  # a lost connection is rank 0's to tell (or the supervisor's: who died)
        if line.startswith(b"mlxgen: error:") and b"lost the connection to another rank" not in line:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()


# ------------------------------------------------------------------------ hosts


def read_hostfile(path: str) -> list[str]:
    """The ssh host of each rank in mlx's hostfile JSON (``[{"ssh": ..., "ips": [...]}, ...]``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LaunchError(f"--hosts {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LaunchError(f"--hosts {path}: not a hostfile ({type(e).__name__}); expected mlx's JSON list "
                          f"of {{\"ssh\": HOST, \"ips\": [IP]}}") from None
    hosts = data.get("hosts") if isinstance(data, dict) else data
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, dict) and isinstance(h.get("ssh"), str)
                                                            for h in hosts):
        raise LaunchError(f"--hosts {path}: not a hostfile; expected mlx's JSON list of {{\"ssh\": HOST, \"ips\": [IP]}}")
    return [h["ssh"] for h in hosts]


def check_hosts(path: str, hosts: list[str], timeout: float = HOST_TIMEOUT_S) -> None:
    """Every remote host answers ssh (non-interactively, as mlx.launch needs) within ``timeout``."""
    for host in dict.fromkeys(hosts):
        if host in LOCAL:
            continue
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={timeout:g}", "-o", "LogLevel=ERROR", host, "true"]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=3 * timeout)
            why = (proc.stderr.decode(errors="replace").strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            ok = proc.returncode == 0
        except FileNotFoundError:
            raise LaunchError(f"--hosts {path}: ssh is not installed; mlx.launch starts remote ranks with it") from None
        except subprocess.TimeoutExpired:
            ok, why = False, "no answer"
        if not ok:
            raise LaunchError(f"--hosts {path}: host {host} is unreachable over ssh within {timeout:g} s ({why})")


def run_hosts(path: str, argv: list[str]) -> int:
    """``mlx.launch --hostfile FILE -- python -m mlxgen ARGV``: its exit status."""
    check_mlx()
    check_hosts(path, read_hostfile(path))
    python = os.environ.get("MLXGEN_PYTHON", sys.executable)  # the same interpreter path on every host
    launcher = [sys.executable, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]
    return subprocess.call([*launcher, "--hostfile", path, "--", python, "-m", "mlxgen", *argv])


# ------------------------------------------------------------------------ the CLI


def from_cli(command: str, option: str, value: str) -> int:
    """``mlxgen COMMAND ... --ranks N | --hosts FILE``: run the command as the ranks; the exit code."""
    argv = strip_flags(sys.argv[1:])
    if "--ranks" in sys.argv[1:] and "--hosts" in sys.argv[1:] or sum(
            a.startswith(("--ranks", "--hosts")) for a in sys.argv[1:]) > 1:
        raise LaunchError("--ranks and --hosts: give one of them")
    if option == "hosts":
        return run_hosts(value, argv)
    counts = parse_ranks(value, many=command == "bench")
    if len(counts) > 1 and any(a in ("--plot", "-o=json", "-o=csv") or a.startswith(("--plot=", "--output=json",
                               "--output=csv")) for a in _joined(argv)):
        raise LaunchError(f"--ranks {value}: each rank count prints its own table, so -o json, -o csv and --plot "
                          "take one count at a time")
    data = None
    if command in ("run", "bench") and not sys.stdin.isatty() and _readable(sys.stdin):
        data = sys.stdin.buffer.read()  # a piped prompt: every rank reads the same one
    code = 0
    for n in counts:
        code = run_local(n, argv, data) or code
        if code in (130, RankLost.exit_code):  # Ctrl-C or a lost rank ends the whole list
            break
    return code


def _joined(argv: list[str]) -> list[str]:
    """argv with each option's separate value joined to it (``-o json`` -> ``-o=json``)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in ("-o", "--output") and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _readable(stream, wait: float = 0.5) -> bool:
    """Piped input is there (or its end is): a stdin nobody writes to is left to rank 0."""
    import select

    try:
        return bool(select.select([stream], [], [], wait)[0])
    except (OSError, ValueError):
        return False
