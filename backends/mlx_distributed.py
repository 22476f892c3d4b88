"""The MLX backend sharded across the ranks of an ``mx.distributed`` group (ring, MPI, jaccl).

Every rank runs the same ``mlxgen`` command (``mlx.launch`` starts them, or ``--ranks`` /
``--hosts``, which call it). Each loads only its shard of the model:

- **tensor parallel** where the model has mlx-lm's ``shard()`` and its heads split evenly:
  every layer's projections are split across the ranks, two ``all_sum`` per layer;
- **pipeline parallel** where its inner model has mlx-lm's ``PipelineMixin`` (qwen2, …), or is a
  plain llama / qwen3 stack (mlxgen pipelines those the same way, ``pipeline_stack``): each rank
  holds a contiguous run of layers, one ``send``/``recv`` per rank boundary and one ``all_gather``.

Rank 0 runs everything else (tokenizer, the loop, the sampler, streaming, output). It
tells the other ranks what to run with one broadcast per call (``Leader``): a 4-int header
``[op, n, token, 0]`` (an ``all_sum`` where only rank 0 contributes), then the ids for a
prefill. A decode step's header is part of rank 0's lazy graph (the token is the sampler's
lazy output), so the MLX pipelining of the single-process backend is kept. The other ranks
never return from ``load``: they run ``follow`` until rank 0 closes, then exit.

A lost rank surfaces in MLX as ``RuntimeError('[ring] connection to a peer was lost')``;
``lost_rank`` turns it into one line (``RankLost``), and ``mlx.launch`` stops every rank when
one exits non-zero. Joining the group has a watchdog (``MLXGEN_JOIN_TIMEOUT``, 60 s): a
rank that cannot reach the others says so in one line instead of waiting forever.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import mlx.core as mx

from mlxgen.backends.mlx import MLXBackend, _vocab_size
from mlxgen.errors import ModelError, RankLost, first_line, rank_lost

STEP, PREFILL, EXTEND, VERIFY, TRIM, CLOSE, RELOAD, EXIT = 1, 2, 3, 4, 5, 6, 7, 8
JOIN_TIMEOUT_S = 60.0
LOST_EXIT = RankLost.exit_code
RANK_ENV = ("MLX_HOSTFILE", "MLX_WORLD_SIZE", "MLX_JACCL_COORDINATOR", "MLX_IBV_DEVICES", "OMPI_COMM_WORLD_SIZE",
            "PMI_SIZE")
PIPELINE_STACKS = ("llama", "qwen3", "mistral")  # inner models: embed -> layers(h, mask, cache) -> norm

_GROUP = None
_LEADER = None  # rank 0's open Leader
_USED = False  # rank 0 has loaded a sharded model in this process
_BROKEN = False  # a rank was lost: no collective can finish any more


def launched() -> bool:
    """This process was started as one rank of several (by mlx.launch, mpirun, or mlxgen --ranks/--hosts)."""
    if any(os.environ.get(k) for k in RANK_ENV[3:]):
        return True
    return "MLX_RANK" in os.environ and any(os.environ.get(k) for k in RANK_ENV[:3])


def group():
    """The process group, joined once, with a watchdog: a rank that cannot reach the others exits in one line.

    ``mx.distributed.init`` blocks inside MLX (holding the GIL) until every rank is connected, so the
    watchdog is a small process of its own (``_WATCHDOG``): it prints the line and kills this rank
    unless the join finished (its stdin closed) within ``MLXGEN_JOIN_TIMEOUT`` seconds.
    """
    global _GROUP
    if _GROUP is not None:
        return _GROUP
    timeout = float(os.environ.get("MLXGEN_JOIN_TIMEOUT", JOIN_TIMEOUT_S))
    line = (f"mlxgen: error: rank {os.environ.get('MLX_RANK', '?')}: could not join the other ranks within "
            f"{timeout:g} s (a host unreachable, a port blocked, or a rank that never started)")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), line],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        _GROUP = mx.distributed.init(strict=launched())
    finally:
        watchdog.stdin.close()
        watchdog.wait()
    return _GROUP


_WATCHDOG = """
import os, select, signal, sys
pid, timeout, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
ready, _, _ = select.select([sys.stdin], [], [], timeout)
if not ready:
    print(line, file=sys.stderr, flush=True)
    os.kill(pid, signal.SIGKILL)
"""


def doctor_rows() -> list[tuple[str, str]]:
    """`mlxgen doctor`'s group rows: only in a process started as a rank (joining needs the others)."""
    if not launched():
        return [("mlx group", "single process (start ranks with --ranks N, --hosts FILE or mlx.launch)")]
    g = group()
    return [("mlx group", f"{backend_name()} backend, {g.size()} ranks, this is rank {g.rank()}")]


def backend_name() -> str:
    env = os.environ
    if env.get("MLX_JACCL_COORDINATOR") or env.get("MLX_IBV_DEVICES"):
        return "jaccl"
    if env.get("OMPI_COMM_WORLD_SIZE") or env.get("PMI_SIZE"):
        return "mpi"
    return "ring"


# ------------------------------------------------------------------------ load


def load(weights: Path, cfg, choice=None):
    """Rank 0: a ``Leader`` backend (None while one is open: a second model, a draft, runs on rank 0 alone).
    Every other rank: follows rank 0 (through reloads) until rank 0 exits, then exits; never returns."""
    global _LEADER, _USED
    g = group()
    if g.rank() == 0:
        if _LEADER is not None:
            return None
        if _USED:
            _broadcast(g, RELOAD)  # the same model again (bench's warm reload): the others load it too
        local, mode = _load_shard(weights, cfg, g)
        _LEADER = Leader(local, g, mode)
        if not _USED:
            atexit.register(_release)
        _USED = True
        return _LEADER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches rank 0, which ends every rank
    try:
        local, _ = _load_shard(weights, cfg, g)
        while True:
            follow(local, g)  # until CLOSE
            op = _receive(g)[0]
            if op != RELOAD:  # EXIT
                break
            local, _ = _load_shard(weights, cfg, g)
    except RuntimeError as e:
        print(f"mlxgen: error: {rank_lost(e) or first_line(e)}", file=sys.stderr, flush=True)
        os._exit(LOST_EXIT)
    sys.stdout.flush()
    os._exit(0)


def _load_shard(weights: Path, cfg, g) -> tuple[MLXBackend, str]:
    from mlxgen.backends.mlx import kv_group_size, read_model

    model, config = read_model(weights, lazy=True)  # nothing is read until this rank's shard is evaluated
    mode = split(model, config, g)
    mx.eval(model.parameters())  # only this rank's shard is read from the files
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=g))  # every rank loaded: the same barrier as sharded_load
    kv_bits = cfg.llm.kv_quant  # each rank quantizes its own heads' cache
    local = MLXBackend(model, n_ctx=cfg.llm.n_ctx, vocab_size=_vocab_size(model, config), folder=Path(weights),
                       kv_bits=kv_bits, kv_group=kv_group_size(config, kv_bits),
                       check_rotation=False)  # a forward pass is collective here; each rank rotates its own heads
    local.config = config
    return local, mode


def _broadcast(g, op: int, n: int = 0) -> None:
    mx.eval(mx.distributed.all_sum(_header(op, n), group=g))


def _receive(g) -> list[int]:
    head = mx.distributed.all_sum(mx.zeros((4,), dtype=mx.int32), group=g)
    mx.eval(head)
    return [int(v) for v in head.tolist()]


def _release() -> None:
    """At rank 0's exit: close a model still open, then tell the others to exit (unless a rank was lost)."""
    if _BROKEN or _GROUP is None:
        return
    try:
        if _LEADER is not None:
            _LEADER.close()
        _broadcast(_GROUP, EXIT)
    except RuntimeError:
        pass


def split(model, config: dict, g) -> str:
    """Shard ``model`` in place for this rank; the mode in words, or a one-line refusal."""
    n = g.size()
    forced = os.environ.get("MLXGEN_PARALLEL", "auto")  # tensor / pipeline: a test's choice; anything else is auto
    forced = forced if forced in ("tensor", "pipeline") else "auto"
    tensor = hasattr(model, "shard") and heads_divide(model, n)
    inner = getattr(model, "model", None)
    pipeline = inner is not None and (hasattr(inner, "pipeline") or pipeline_stack(model, config) is not None)
    if forced == "tensor" and not tensor or forced == "pipeline" and not pipeline or not (tensor or pipeline):
        how = f" by {forced} parallelism" if forced != "auto" else ""
        why = (f"its heads or quantized groups do not split into {n} equal parts" if hasattr(model, "shard")
               else "mlx-lm has no shard() for it") + ("" if pipeline else ", and no pipeline")
        raise ModelError(f"{config.get('model_type', '?')}: this model cannot be split across {n} ranks{how} "
                         f"({why}); run it on one machine")
    layers = len(inner.layers) if inner is not None else 0
    if (forced == "tensor" or forced == "auto" and tensor):
        model.shard(g)
        return "tensor parallel"
    if layers < n:
        raise ModelError(f"{config.get('model_type', '?')}: {layers} layers cannot be split across {n} ranks")
    if not hasattr(inner, "pipeline"):
        pipeline_stack(model, config)()
    inner.pipeline(g)
    return f"pipeline parallel, layers {inner.start_idx}-{inner.end_idx - 1} on rank 0"


def heads_divide(model, n: int) -> bool:
    """mlx-lm's shard() fits: every attention's query and key/value heads split evenly across n ranks,
    and every quantized projection's rows and input groups too (a shard holds whole groups)."""
    import mlx.nn as nn

    inner = getattr(model, "model", None)
    for layer in getattr(inner, "layers", None) or []:
        attn = getattr(layer, "self_attn", None)
        for attr in ("n_heads", "n_kv_heads", "num_attention_heads", "num_key_value_heads"):
            v = getattr(attn, attr, None)
            if isinstance(v, int) and v % n:
                return False
        for _, m in layer.named_modules():
            if isinstance(m, nn.QuantizedLinear):
                in_dims = m.weight.shape[-1] * 32 // m.bits
                if m.weight.shape[0] % n or in_dims % (n * m.group_size):
                    return False
    return True


def pipeline_stack(model, config: dict):
    """For a plain llama / qwen3 stack with no sliding window: a function that gives it mlx-lm's pipeline.

    The inner model's class gets ``PipelineMixin`` and a forward pass that is qwen2's pipelined one
    (recv from the previous stage, its own layers, send to the next, all_gather the result);
    the outer model's ``layers`` become this rank's layers, so its cache has one entry per own layer.
    """
    inner = getattr(model, "model", None)
    if config.get("model_type") not in PIPELINE_STACKS or inner is None:
        return None
    if any(getattr(layer, "use_sliding", False) for layer in inner.layers):
        return None
    if not all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm")):
        return None

    def apply() -> None:
        from mlx_lm.models.pipeline import PipelineMixin

        inner_cls, outer_cls = type(inner), type(model)
        inner.__class__ = type(f"Pipelined{inner_cls.__name__}", (inner_cls, PipelineMixin),
                               {"__call__": _pipelined_call})
        inner.pipeline_rank, inner.pipeline_size, inner.start_idx, inner.end_idx = 0, 1, 0, None
        model.__class__ = type(f"Pipelined{outer_cls.__name__}", (outer_cls,),
                               {"layers": property(lambda self: self.model.pipeline_layers)})

    return apply


def _pipelined_call(self, inputs, cache=None, input_embeddings=None):
    """qwen2's pipelined forward (mlx-lm), for any embed -> layers -> norm stack."""
    from mlx_lm.models.base import create_attention_mask

    h = input_embeddings if input_embeddings is not None else self.embed_tokens(inputs)
    rank, size = self.pipeline_rank, self.pipeline_size
    if cache is None:
        cache = [None] * len(self.pipeline_layers)
    mask = create_attention_mask(h, cache[0])
    if rank < size - 1:  # what the previous stage sends has its layers' dtype (float32 norms promote float16)
        h = mx.distributed.recv(h.shape, _stage_dtype(self, h), rank + 1)
    for layer, c in zip(self.pipeline_layers, cache):
        h = layer(h, mask, c)
    if rank != 0:
        h = mx.distributed.send(h, (rank - 1) % size)
        if cache[-1] is not None:
            cache[-1].keys = mx.depends(cache[-1].keys, h)
    if size > 1:
        h = mx.distributed.all_gather(h)[: h.shape[0]]
    return self.norm(h)


def _stage_dtype(inner, h):
    """The dtype a stack of these layers turns ``h`` into: from a lazy graph on one position, never evaluated."""
    cached = getattr(inner, "_mlxgen_stage_dtype", None)
    if cached is None or cached[0] != h.dtype:
        probe = h[:, :1]
        for layer in inner.pipeline_layers:
            probe = layer(probe, None, None)
        cached = inner._mlxgen_stage_dtype = (h.dtype, probe.dtype)
    return cached[1]


# --------------------------------------------------------------- rank 0 and the rest


def _header(op: int, n: int = 0, token: int = 0) -> mx.array:
    return mx.array([op, n, token, 0], dtype=mx.int32)


def follow(local: MLXBackend, g) -> None:
    """Every rank but 0: run what rank 0 broadcasts, in the same order, until CLOSE."""
    while True:
        op, n, token, _ = _receive(g)
        if op == CLOSE:
            local.close()
            return
        if op == TRIM:
            local.trim(n)
            continue
        if op == STEP:
            mx.eval(local.step(token))
            continue
        ids = mx.distributed.all_sum(mx.zeros((n,), dtype=mx.int32), group=g)
        ids = ids.tolist()
        if op == PREFILL:
            local.prefill(ids)
        elif op == EXTEND:
            local.extend(ids)
        elif op == VERIFY:
            mx.eval(local.verify(ids))
        else:
            raise RuntimeError(f"[mlxgen] unknown command {op} from rank 0")


class Leader(MLXBackend):
    """Rank 0's backend: the sharded MLX backend, each call broadcast to the other ranks first."""

    # Not base.State: a state would hold rank 0's shard only, and a restore would leave the other
    # ranks' caches empty (None removes the capability: isinstance(leader, State) is False).
    save_state = load_state = None

    def __init__(self, local: MLXBackend, g, mode: str) -> None:
        self.__dict__.update(local.__dict__)
        self.group = g
        self.ranks = g.size()
        self.mode = mode
        self.pipelined = mode.startswith("pipeline")
        self.device = f"{local.device}, {self.ranks} ranks ({backend_name()}, {mode.split(',')[0]})"
        self.sent_bytes = 0  # control bytes rank 0 broadcast (headers and ids), for bench
        self._closed = False

    def _send(self, op: int, ids: Sequence[int] = (), token: int = 0) -> None:
        try:
            mx.eval(mx.distributed.all_sum(_header(op, len(ids) if op != TRIM else token, 0), group=self.group))
            self.sent_bytes += 16
            if ids:
                mx.eval(mx.distributed.all_sum(mx.array([int(i) for i in ids], dtype=mx.int32), group=self.group))
                self.sent_bytes += 4 * len(ids)
        except RuntimeError as e:
            raise lost_rank(e) from None

    def prefill(self, ids: Sequence[int]) -> mx.array:
        self._send(PREFILL, ids)
        return self._guard(MLXBackend.prefill, ids)

    def extend(self, ids: Sequence[int]) -> None:
        self._send(EXTEND, ids)
        self._guard(MLXBackend.extend, ids)

    def verify(self, ids: Sequence[int]) -> mx.array:
        self._send(VERIFY, ids)
        return self._guard(MLXBackend.verify, ids)

    def step(self, token) -> mx.array:
        """The header carries the (possibly lazy) token, and the step reads it back from the broadcast,
        so the collectives run in one order on every rank; queued at once, as the loop's lookahead.

        Tensor parallel: the first all_sum of the step depends on the header, so the header can stay
        lazy (the loop's lookahead is kept). Pipeline parallel: rank 0's recv from the previous stage
        does not, so the header is evaluated first (the sampled token is waited for).
        """
        t = token.reshape(1).astype(mx.int32) if isinstance(token, mx.array) else mx.array([int(token)], mx.int32)
        head = mx.concatenate([mx.array([STEP, 1], mx.int32), t, mx.zeros((1,), mx.int32)])
        head = mx.distributed.all_sum(head, group=self.group)
        self.sent_bytes += 16
        if self.pipelined:  # a stage's recv does not depend on the header: it must be done before the step is queued
            mx.eval(head)
        logits = MLXBackend.step(self, head[2])
        mx.async_eval(logits)
        return logits

    def trim(self, n_tokens: int) -> None:
        self._send(TRIM, token=max(0, n_tokens))
        MLXBackend.trim(self, n_tokens)

    def _guard(self, fn, *args):
        try:
            return fn(self, *args)
        except RuntimeError as e:
            raise lost_rank(e) from None

    def describe(self) -> dict:
        info = MLXBackend.describe(self)
        info["ranks"] = self.ranks
        info["model"] += " (rank 0's shard)"  # parameters and bytes are what rank 0 holds
        info["build"] += f", {self.ranks} ranks over {backend_name()} ({self.mode})"
        return info

    def close(self) -> None:
        """Tell the other ranks to end, unless a lost rank is why we close (the group is broken: a
        collective now would wait forever)."""
        global _LEADER, _BROKEN
        failing = sys.exc_info()[1]
        _BROKEN = _BROKEN or failing is not None and (isinstance(failing, RankLost) or rank_lost(failing) is not None)
        if not self._closed and not _BROKEN:
            try:
                self._send(CLOSE)
            except RankLost:  # the others are gone already: nothing to tell them
                _BROKEN = True
        self._closed = True
        if _LEADER is self:
            _LEADER = None
        MLXBackend.close(self)


def lost_rank(e: BaseException) -> BaseException:
    """MLX's error when a peer goes away, as one line (``mlxgen.errors.rank_lost``); any other as it is."""
    global _BROKEN
    lost = rank_lost(e)
    _BROKEN = _BROKEN or lost is not None
    return lost or e
