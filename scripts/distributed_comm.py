"""What a distributed decode step sends: bytes per token and the time of the communication alone.

    mlx.launch -n 2 --backend ring -- python scripts/distributed_comm.py FOLDER [--steps 32] [--replays 200]
    (or: mlxgen's --ranks environment; alone it measures nothing)

First every rank replays, ``--replays`` times and with zero-filled arrays (no model), the
collectives one decode step of FOLDER makes on it: rank 0's header broadcast, then for tensor
parallel two ``all_sum`` of the hidden state per layer, for pipeline parallel a ``recv`` /
``send`` per stage boundary and one ``all_gather`` (the activation dtype from a lazy graph of
the model). Then it loads FOLDER through mlxgen's MLX backend (sharded) and times ``--steps``
decode steps. Rank 0 prints one JSON line: mode, the calls and bytes per token (rank 0's and
all ranks'), the step time with the model and the communication time alone.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def pattern(folder: Path, g, mode: str) -> list[tuple]:
    """The collectives one decode step makes on this rank: (op, shape, dtype, peer)."""
    import mlx.core as mx

    from mlxgen.backends.mlx import read_model

    model, config = read_model(folder, lazy=True)  # nothing read: a lazy graph only tells the dtype
    inner = model.model
    h = inner.embed_tokens(mx.array([[1]]))
    out = inner.layers[0](h, None, None)
    shape, dt = tuple(out.shape), out.dtype
    calls = [("all_sum", (4,), mx.int32, None)]  # rank 0's header
    r, n = g.rank(), g.size()
    if mode.startswith("tensor"):
        calls += [("all_sum", shape, dt, None)] * (2 * len(inner.layers))
    else:
        if r < n - 1:
            calls.append(("recv", shape, dt, r + 1))
        if r > 0:
            calls.append(("send", shape, dt, r - 1))
        calls.append(("all_gather", shape, dt, None))
    return calls


def nbytes(shape, dtype) -> int:
    k = 1
    for s in shape:
        k *= s
    return k * dtype.size


def replay(calls, g, times: int) -> float:
    """Run one step's collectives, one after the other, ``times`` times; seconds per step."""
    import mlx.core as mx

    dist = mx.distributed

    def once() -> None:
        for name, shape, dtype, peer in calls:
            if name == "all_sum":
                y = dist.all_sum(mx.zeros(shape, dtype), group=g)
            elif name == "all_gather":
                y = dist.all_gather(mx.zeros(shape, dtype), group=g)
            elif name == "send":
                y = dist.send(mx.zeros(shape, dtype), peer, group=g)
            else:
                y = dist.recv(shape, dtype, peer, group=g)
            mx.eval(y)

    once()
    t0 = time.perf_counter()
    for _ in range(times):
        once()
    return (time.perf_counter() - t0) / times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--replays", type=int, default=200)
    args = ap.parse_args()

    import mlx.core as mx

    from mlxgen.backends import mlx as mlxb
    from mlxgen.backends import mlx_distributed
    from mlxgen.config import Config, LLMConfig, MLXSource

    g = mlx_distributed.group()
    folder = Path(args.folder)
    from mlxgen.backends.mlx import read_model

    probe, _ = read_model(folder, lazy=True)
    n_split = mlx_distributed.heads_divide(probe, g.size()) and hasattr(probe, "shard")
    forced = os.environ.get("MLXGEN_PARALLEL", "auto")
    mode = "tensor" if (forced == "tensor" or forced != "pipeline" and n_split) else "pipeline"
    calls = pattern(folder, g, mode)
    comm_s = replay(calls, g, args.replays)  # first, while every rank still runs this script
    mine = sum(nbytes(s, d) for name, s, d, _ in calls if name != "recv")
    total = mx.distributed.all_sum(mx.array([float(mine)]), group=g)
    mx.eval(total)

    backend = mlxb.load(folder, Config(backend="mlx", llm=LLMConfig(n_ctx=4096, mlx=MLXSource())))
    # only rank 0 gets here: the others follow its steps
    backend.prefill([1, 2, 3, 4])
    token, t0 = 5, time.perf_counter()
    for _ in range(args.steps):
        token = int(mx.argmax(backend.step(token)).item())
    step_s = (time.perf_counter() - t0) / args.steps
    print(json.dumps({
        "ranks": g.size(), "mode": backend.mode, "calls_per_token_rank0": [c[0] for c in calls],
        "bytes_per_token_rank0": mine, "bytes_per_token_all_ranks": int(total.item()),
        "step_ms": round(step_s * 1e3, 3), "comm_ms": round(comm_s * 1e3, 3), "comm_share": round(comm_s / step_s, 3),
    }), flush=True)
    backend.close()


if __name__ == "__main__":
    main()
