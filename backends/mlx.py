"""MLX backend (mlx-lm model definitions and KV caches; Metal on Apple Silicon, else CPU).

Forward passes only, as lazy ``mx.array`` logits: the shared sampler runs on them with
MLX ops (``sampling_ops``), so a whole decode step (model + sampling) is one graph.
As a ``base.Pipelined`` backend the loop queues step n+1 with ``schedule`` (``mx.async_eval``)
before it hands token n to Python, as ``mlx_lm.generate.generate_step`` does.
Weights come from ``prepare``: an MLX folder, a converted Hub repo, or an imported GGUF
(all cached by ``mlxgen.backends.mlx_convert``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import mlx.core as mx

from mlxgen.backends import mlx_convert
from mlxgen.backends.mlx_sampling import MLX
from mlxgen.config import Config
from mlxgen.errors import ConfigError, ModelError, first_line
from mlxgen.hardware import Choice

CLEAR_EVERY = 256  # steps between mx.clear_cache() calls (as mlx-lm)
PREFILL_CHUNK = 2048  # prompt tokens per forward pass (mlx-lm's prefill_step_size)


def metal() -> bool:
    try:
        return bool(mx.metal.is_available())
    except Exception:  # an mlx build without the metal module
        return False


def device_name() -> str:
    return "gpu (metal)" if metal() else "cpu (no Metal)"


def doctor_rows() -> list[tuple[str, str]]:
    import importlib.metadata as md

    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "?"

    rows = [("mlx", f"{version('mlx')} (mlx-lm {version('mlx-lm')})")]
    if metal():
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        name = info.get("device_name") or info.get("architecture") or "Apple GPU"
        mem = info.get("max_recommended_working_set_size")
        rows.append(("mlx device", f"gpu (metal): {name}" + (f", {mem / 2**30:.0f} GiB working set" if mem else "")))
    else:
        rows.append(("mlx device", "cpu: no Metal: running on the CPU"))
    rows.append(("mlx cache", str(mlx_convert.cache_root())))
    from mlxgen.backends import mlx_distributed

    return rows + mlx_distributed.doctor_rows()


def prepare(cfg: Config) -> Path:
    """A local mlx-lm model folder: llm.mlx.path, else llm.mlx.repo (converted), else the GGUF imported."""
    src = cfg.llm.mlx
    q = src.quantize
    if src.path:
        return mlx_convert.check_folder(Path(src.path).expanduser(), "llm.mlx.path")
    if src.repo:
        return mlx_convert.from_hub(src.repo, src.revision, q.bits, q.group_size)
    from mlxgen.sources import resolve_gguf

    return mlx_convert.import_gguf_cached(resolve_gguf(cfg.llm), q.bits, q.group_size)


def convert(source: str, out: Path | None, bits: int, group_size: int, revision: str) -> Path:
    """`mlxgen convert`: a Hub repo, a local HF folder or a GGUF file -> an MLX model folder (cached)."""
    return mlx_convert.convert(source, out, bits, group_size, revision)


def load(weights: Path, cfg: Config, choice: Choice | None = None) -> "MLXBackend":
    from mlxgen.backends import mlx_distributed

    if mlx_distributed.launched():  # one rank of several: this rank's shard (rank 0 gets the backend)
        sharded = mlx_distributed.load(weights, cfg, choice)
        if sharded is not None:
            return sharded  # else a second model while one is sharded (a draft model): on rank 0 alone
    model, config = read_model(weights)
    kv_bits = cfg.llm.kv_quant
    backend = MLXBackend(model, n_ctx=cfg.llm.n_ctx, vocab_size=_vocab_size(model, config), folder=Path(weights),
                         kv_bits=kv_bits, kv_group=kv_group_size(config, kv_bits))
    backend.config = config
    return backend


def read_model(weights: Path, lazy: bool = False):
    """mlx-lm's model and config.json from a model folder; one-line errors."""
    from mlx_lm.utils import load_model

    try:
        return load_model(Path(weights), lazy=lazy)
    except FileNotFoundError as e:
        raise ModelError(f"{weights}: {e}") from None
    except (ValueError, KeyError, TypeError) as e:  # unknown model type, config keys missing or wrong
        raise ModelError(f"{weights}: mlx-lm cannot load this model ({first_line(e)})") from None


KV_GROUPS = (32, 64, 128)  # mx.quantize's group sizes, the smallest first (mlx-lm's default is 64: see below)


def kv_group_size(config: dict, kv_bits: int | None) -> int:
    """The quantization group of a quantized KV cache: the smallest that divides the model's head_dim.

    Group 32 halves the rounding error of mlx-lm's default 64 for 0.5 bit more per value
    (a bfloat16 scale and bias per 32 values: 9 bits per value at 8 bits, as llama.cpp's
    q8_0 holds 8.5); scripts/kv_quant_eval.py measures both.
    """
    if not kv_bits:
        return KV_GROUPS[0]
    text = config.get("text_config", {})
    get = lambda key: config.get(key) or text.get(key)  # noqa: E731
    heads = get("num_attention_heads")
    head_dim = get("head_dim") or (get("hidden_size") // heads if heads and get("hidden_size") else None)
    if not head_dim:
        return KV_GROUPS[0]
    for group in KV_GROUPS:
        if head_dim % group == 0:
            return group
    raise ConfigError(f"llm.kv_bits: {kv_bits}: this model's head_dim {head_dim} is not a multiple of an MLX "
                      f"quantization group ({', '.join(map(str, sorted(KV_GROUPS)))}); run without --kv-bits")


def rotate_keys(model, vocab_size: int | None = None) -> int:
    """Rotate every attention's queries and keys after RoPE by one fixed orthogonal matrix.

    For a quantized KV cache. q·k is unchanged (R is orthogonal: (Rq)·(Rk) = q·k), so
    attention computes the same scores, but the cache now holds R·k. Keys carry a few
    channels far larger than the rest; quantized per group of head_dim values they set
    the group's scale and the small channels round to a few levels. A Hadamard matrix
    with random signs (QuaRot) spreads every channel over all of them. On the embedded
    model (scripts/kv_quant_eval.py, 3,072 positions) the 8-bit cache's KL to full
    precision halves (5.2e-4 -> 2.4e-4) and its top-1 agreement goes from 0.988 to 0.994;
    at 4 bits from 0.76 (group 64) to 0.87. Values are not rotated: their rounding costs little.

    Wraps each module's ``rope`` (mlx-lm's attentions call it on queries and keys alike).
    With ``vocab_size``, 8 ordinary tokens (mid-vocabulary) go through the model before
    and after, in float32 (bfloat16's own rounding moves this small model's logits more
    than a broken rotation would); if the logits move, the model is left as it was (an
    attention that uses its ``rope`` some other way). The check is skipped where the float32
    copies of the model's float16/bfloat16 arrays (a quantized model's scales and norms:
    about 0.5 GiB at 4B parameters) would pass 1 GiB, and on distributed ranks (no
    ``vocab_size``: a forward pass is collective there). Returns the number of attentions rotated.
    """
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    holders = [m for _, m in model.named_modules() if isinstance(m.get("rope"), nn.Module)]
    if not holders:
        return 0
    saved = tree_flatten(model.parameters())
    widen = sum(v.nbytes for _, v in saved if mx.issubdtype(v.dtype, mx.floating) and v.dtype != mx.float32)
    if vocab_size is None or 2 * widen > 1 << 30:
        for m in holders:
            m.rope = _RotatedRoPE(m["rope"])  # a plain attribute: the wrapper is not a parameter
        return len(holders)
    probe = mx.array([[vocab_size // 2 + 7 * k for k in range(8)]])
    model.set_dtype(mx.float32)  # the scales and norms of a quantized model; put back as they were below
    try:
        before = model(probe)
        for m in holders:
            m.rope = _RotatedRoPE(m["rope"])
        after = model(probe)
        same = float(mx.abs(after - before).mean()) <= 1e-3 * (float(mx.abs(before).mean()) or 1.0)
    except Exception:  # a model that needs more than token ids: no check possible, so no rotation
        same = False
    finally:
        model.update(tree_unflatten(saved))
    if not same:
        unrotate_keys(model)
        return 0
    return len(holders)


def unrotate_keys(model) -> None:
    """Undo rotate_keys: each attention's own RoPE back in the module tree, as it was."""
    for _, m in model.named_modules():
        if isinstance(getattr(m, "rope", None), _RotatedRoPE):
            m.rope = m.rope.rope


class _RotatedRoPE:
    """A model's RoPE, then one fixed orthogonal matrix on each head's vector (see rotate_keys)."""

    def __init__(self, rope) -> None:
        self.rope = rope

    def __call__(self, x: mx.array, *args, **kwargs) -> mx.array:
        y = self.rope(x, *args, **kwargs)
        return (y.astype(mx.float32) @ _rotation(y.shape[-1])).astype(y.dtype)  # R in float32: orthogonal as built


_ROTATIONS: dict[int, mx.array] = {}


def _rotation(d: int) -> mx.array:
    """A d x d orthogonal matrix, the same on every run: Hadamard with random signs where d is a
    power of two (every entry ±1/√d: no channel stays on its own), else a random orthogonal one."""
    if d not in _ROTATIONS:
        import numpy as np

        rng = np.random.default_rng(20260)
        if d & (d - 1) == 0:
            h = np.ones((1, 1))
            while h.shape[0] < d:
                h = np.block([[h, h], [h, -h]])
            r = h * rng.choice([-1.0, 1.0], d)[:, None] / np.sqrt(d)
        else:
            r, _ = np.linalg.qr(rng.standard_normal((d, d)))
        _ROTATIONS[d] = mx.array(r.T, dtype=mx.float32)  # x @ r.T: each row vector x times r
    return _ROTATIONS[d]


def _vocab_size(model, config: dict) -> int:
    text = config.get("text_config", {})
    size = config.get("vocab_size") or text.get("vocab_size")
    if size:
        return int(size)
    return int(model(mx.array([[0]]))[0, -1].shape[-1])


class MLXBackend:
    name = "mlx"
    verify_note = None  # model(ids[None], cache) rows are bit-identical to one-token steps (tests/test_verify.py)
    prefill_chunk = PREFILL_CHUNK
    sampling_ops = MLX  # base.Pipelined: the loop may queue the next step before using this one

    def __init__(self, model, n_ctx: int, vocab_size: int, folder: Path | None = None, kv_bits: int | None = None,
                 kv_group: int = KV_GROUPS[0], check_rotation: bool = True) -> None:
        self.model = model
        self.folder = folder  # the model folder (for mlx-lm's own tokenizer in native_stream)
        self._native_tokenizer = None
        self.config: dict | None = None  # the model folder's config.json
        self.kv_bits, self.kv_group = kv_bits, kv_group
        # attentions whose keys are cached rotated (with kv_bits; no check pass on a distributed rank)
        self.rotated = rotate_keys(model, vocab_size if check_rotation else None) if kv_bits else 0
        self.cache = self._new_cache()
        self.n_ctx = n_ctx
        self.vocab_size = vocab_size
        self.device = device_name()
        self._steps = 0
        self._old_wired = _raise_wired_limit() if metal() else None

    # ------------------------------------------------------------- forward
    def prefill(self, ids: Sequence[int]) -> mx.array:
        """Extend the cache with ids; return the last position's logits (lazy).

        All but the last token run as one batch whose logits are never computed
        (only the cache is evaluated); the last token then gives the logits, as mlx-lm.
        The logits are evaluated here, so the loop's prefill time is the real one.
        """
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("prefill needs at least one token")
        if len(ids) > 1:
            self.model(mx.array([ids[:-1]]), cache=self.cache)
            mx.eval([c.state for c in self.cache])
        logits = self._forward(mx.array([ids[-1:]]))
        mx.eval(logits)
        return logits

    def extend(self, ids: Sequence[int]) -> None:
        """Extend the cache with ids, no logits (the loop's non-final prefill chunks)."""
        self.model(mx.array([[int(i) for i in ids]]), cache=self.cache)
        mx.eval([c.state for c in self.cache])

    def step(self, token) -> mx.array:
        """One token (an int, or the sampler's lazy mx scalar) through the cache."""
        x = token.reshape(1, 1) if isinstance(token, mx.array) else mx.array([[int(token)]])
        self._steps += 1
        if self._steps % CLEAR_EVERY == 0:
            mx.clear_cache()
        return self._forward(x)

    def verify(self, ids: Sequence[int]) -> mx.array:
        """Extend the cache by ids in one forward pass; the logits at every position, (len(ids), vocab).

        Speculative decoding trims what the target rejects, so a cache that cannot be
        trimmed (``ArraysCache``, a rotating cache that has wrapped) refuses here.
        """
        from mlx_lm.models.cache import can_trim_prompt_cache

        if not can_trim_prompt_cache(self.cache) or not _room_to_trim(self.cache, len(ids)):
            raise ModelError(ROLLBACK_REFUSED)
        self._steps += 1
        if self._steps % CLEAR_EVERY == 0:
            mx.clear_cache()
        logits = self.model(mx.array([[int(i) for i in ids]]), cache=self.cache)[0]
        mx.eval(logits)
        return logits

    def _forward(self, x: mx.array) -> mx.array:
        return self.model(x, cache=self.cache)[0, -1]

    def schedule(self, token) -> None:
        """Start computing a queued step (model + sampling) while Python works on the current token."""
        mx.async_eval(token)

    # ------------------------------------------------------------- cache
    @property
    def n_cached(self) -> int:
        """Positions every layer holds (a Ctrl-C inside a forward pass can leave layers apart)."""
        return min(int(c.offset) for c in self.cache) if self.cache else 0

    def trim(self, n_tokens: int) -> None:
        from mlx_lm.models.cache import can_trim_prompt_cache

        n_tokens = max(0, n_tokens)
        if n_tokens == 0:  # empty: a fresh cache, as a new run (or mlx-lm's generate) starts with
            self.cache = self._new_cache()
            return
        if all(int(c.offset) <= n_tokens for c in self.cache):
            return
        if not can_trim_prompt_cache(self.cache):
            raise ModelError("this model's MLX cache cannot be trimmed (sliding window); start over with /reset")
        for c in self.cache:  # each layer to n_tokens, even if an interrupted pass left them apart
            c.trim(max(0, int(c.offset) - n_tokens))

    # ------------------------------------------------------------- state (base.State)
    @property
    def state_version(self) -> str:
        layout = f", kv {self.kv_layout}" if self.kv_bits else ""
        return f"mlx {mx.__version__}, mlx-lm {_version('mlx-lm')}{layout}"

    @property
    def kv_layout(self) -> str:
        """A quantized cache's layout, e.g. ``8-bit (group 32, keys rotated)``; empty at full precision."""
        if not self.kv_bits:
            return ""
        return f"{self.kv_bits}-bit (group {self.kv_group}{', keys rotated' if self.rotated else ''})"

    def save_state(self) -> bytes:
        """The cache as mlx-lm's own prompt-cache file (``save_prompt_cache``: safetensors), in memory."""
        from mlx_lm.models.cache import save_prompt_cache

        buf = _Safetensors()
        save_prompt_cache(buf, self.cache)
        return buf.getvalue()

    def load_state(self, data: bytes, ids: Sequence[int]) -> int:
        """Replace the cache with one ``save_state`` made (``load_prompt_cache``); the positions restored."""
        from mlx_lm.models.cache import load_prompt_cache

        self.trim(0)
        try:
            cache = load_prompt_cache(_Safetensors(data))
        except Exception as e:  # not safetensors, a cache class this mlx-lm lacks, a bad layout
            raise ValueError(f"mlx-lm cannot read the state ({first_line(e)})") from None
        fresh = self._new_cache()  # the layer types this backend makes (quantized with --kv-bits)
        if [type(c) for c in cache] != [type(c) for c in fresh]:
            raise ValueError("the state's cache layers are not this model's")
        n = min(int(c.offset) for c in cache) if cache else 0
        if n != len(ids) or n > self.n_ctx or any(int(c.offset) != n for c in cache):
            raise ValueError(f"the state holds {n} positions, not the {len(ids)} tokens recorded with it")
        mx.eval([c.state for c in cache])
        self.cache = cache
        return n

    def _new_cache(self) -> list:
        """mlx-lm's cache for this model; with kv_bits, its plain KV layers quantized from position 0.

        mlx-lm's generate starts quantizing at ``quantized_kv_start`` (5000 by default), so a
        shorter context would stay full precision; llama.cpp quantizes every position, and so
        does this. Sliding-window and recurrent layers keep their own caches.
        """
        from mlx_lm.models.cache import KVCache, QuantizedKVCache, make_prompt_cache

        cache = make_prompt_cache(self.model)
        if self.kv_bits:
            cache = [QuantizedKVCache(self.kv_group, self.kv_bits) if type(c) is KVCache else c for c in cache]
        return cache

    def kv_cache(self) -> dict:
        """The bytes the cache holds now (mlx-lm grows it 256 positions at a time)."""
        from mlx_lm.models.cache import QuantizedKVCache

        size = sum(int(c.nbytes) for c in self.cache if not c.empty())
        plain = sum(not isinstance(c, QuantizedKVCache) for c in self.cache)
        keys = next((c.keys for c in self.cache if not c.empty() and isinstance(getattr(c, "keys", None), mx.array)), None)
        full = f"full precision ({str(keys.dtype).replace('mlx.core.', '')})" if keys is not None else "full precision"
        kind = self.kv_layout or full
        note = f"{plain} of {len(self.cache)} layers keep their own full-precision cache" if self.kv_bits and plain else ""
        return {"type": kind, "bytes": size, "note": note}

    def native_stream(self, ids: Sequence[int], cached: int, n: int):
        """mlx-lm's own `stream_generate`, greedy, on this model: the bench baseline.

        Untimed setup here: a fresh prompt cache holding ``ids[:cached]``. Returns its
        lazy generator (one response per token; EOS ids cleared so it runs ``n`` tokens).
        """
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.utils import load_tokenizer

        if self._native_tokenizer is None:
            self._native_tokenizer = load_tokenizer(self.folder)
            self._native_tokenizer.eos_token_ids = set()  # no EOS stop: the same token count as ours
        cache = make_prompt_cache(self.model)
        for start in range(0, cached, PREFILL_CHUNK):  # chunked like the loop's prefill
            self.model(mx.array([list(ids[start:min(cached, start + PREFILL_CHUNK)])]), cache=cache)
            mx.eval([c.state for c in cache])
        quantized = {"kv_bits": self.kv_bits, "kv_group_size": self.kv_group, "quantized_kv_start": 0} if self.kv_bits else {}
        return stream_generate(self.model, self._native_tokenizer, list(ids[cached:]), max_tokens=n, prompt_cache=cache,
                               **quantized)

    def reset_peak_memory(self) -> None:
        mx.reset_peak_memory()

    def peak_memory(self) -> int:
        """MLX's own allocator peak in bytes (on Metal this is GPU memory, which RSS does not show)."""
        return int(mx.get_peak_memory())

    def synchronize(self) -> None:
        """Wait for all queued work, mlx-lm's generation stream included (a native run
        leaves one step queued after its last token; on the CPU nothing else waits for it)."""
        from mlx_lm.generate import generation_stream

        mx.synchronize()
        mx.synchronize(generation_stream)

    def describe(self) -> dict:
        """Model type, parameter count, weight bytes and the bits really used per layer, for bench tables."""
        from mlx.utils import tree_flatten
        from mlx_lm.utils import get_total_parameters

        config = self.config or {}
        params = int(get_total_parameters(self.model))
        size = sum(v.nbytes for _, v in tree_flatten(self.model.parameters()))
        quant = config.get("quantization") or {}
        bits = sorted({q["bits"] for q in quant.values() if isinstance(q, dict) and "bits" in q} | (
            {quant["bits"]} if "bits" in quant and not any(isinstance(q, dict) for q in quant.values()) else set()))
        label = "/".join(map(str, bits)) + "-bit" if bits else "float"
        info = {"model": f"{config.get('model_type', '?')} {params / 1e6:.0f}M mlx {label}", "size_bytes": int(size),
                "params": params, "prefill_chunk": self.prefill_chunk}
        info["build"] = f"mlx {mx.__version__} on {self.device}"
        if metal() and hasattr(mx, "device_info"):
            info["build"] += f" ({mx.device_info().get('device_name', 'Apple GPU')})"
        imported = config.get("mlxgen_import")
        if imported:
            from mlxgen.backends.mlx_gguf import import_note

            info["note"] = import_note(imported)
        return info

    def close(self) -> None:
        self.model = None
        self.cache = []
        if self._old_wired is not None:
            mx.synchronize()
            mx.set_wired_limit(self._old_wired)
            self._old_wired = None
        mx.clear_cache()


ROLLBACK_REFUSED = ("speculative decoding needs a KV cache that can roll back, and this model's MLX cache "
                    "cannot (recurrent or sliding-window layers); run without --draft-model/--lookup")


class _Safetensors(io.BytesIO):
    """An in-memory file mlx-lm's prompt-cache functions accept (they read the format from the name)."""

    name = "state.safetensors"


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def _room_to_trim(cache, n: int) -> bool:
    """A rotating (sliding-window) cache stays trimmable only until it wraps."""
    return all(int(c.offset) + n <= int(getattr(c, "max_size", None) or 1 << 62) for c in cache)


def _raise_wired_limit() -> int | None:
    """On Metal, keep the weights wired as mlx-lm's generate does (returns the old limit)."""
    try:
        from mlx_lm.utils import maybe_set_recommended_wired_limit

        return maybe_set_recommended_wired_limit()
    except Exception:  # older mlx-lm / mlx without wired limits
        return None
