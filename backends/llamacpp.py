"""llama.cpp backend (llama-cpp-python, low-level path).

Forward passes only: ``Llama.eval`` for the tokens, then the last position's logits
read in place with ``llama_get_logits_ith`` (no ``logits_all``, no Python lists of
the vocabulary). The KV cache lives in the llama.cpp context; ``trim`` drops its tail.
``verify`` (speculative decoding) decodes its own batch with logits requested at every
position and reads each row with ``llama_get_logits_ith``.
Sampling stays in mlxgen's shared loop.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Sequence

import llama_cpp
import numpy as np
from jinja2 import TemplateError

from mlxgen.config import Config
from mlxgen.errors import ConfigError, ModelError
from mlxgen import gguf_check
from mlxgen.gguf_check import check as check_gguf
from mlxgen.hardware import Choice, cpu_threads
from mlxgen.sources import resolve_gguf


def prepare(cfg: Config) -> Path:
    """The GGUF file to load (downloaded once into the Hugging Face cache if needed).

    Its structure is checked first (``mlxgen.gguf_check``, headers only, a few ms), so a
    corrupt file is one clear line instead of a crash or a hang inside llama.cpp's loader.
    """
    path = resolve_gguf(cfg.llm)
    info = check_gguf(path)
    gguf_check.check_model(path, info)
    need, have = gguf_check.kv_cache_bytes(info, cfg.llm.n_ctx), _total_memory()
    _, _, block_bytes, block = KV_TYPES[cfg.llm.kv_quant]
    need = need and need * block_bytes // (2 * block)  # kv_cache_bytes counts f16: 2 bytes a value
    if need and have and need > have:
        raise ConfigError(
            f"llm.n_ctx: {cfg.llm.n_ctx} positions need {need / 2**30:.1f} GiB of KV cache for {path.name}, "
            f"more than this machine's {have / 2**30:.1f} GiB of memory; lower --ctx"
        )
    return path


def _total_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def load(weights: Path, cfg: Config, choice: Choice) -> "LlamaCppBackend":
    n_threads = cfg.llm.n_threads or (choice.n_threads if choice.gpu else cpu_threads(choice.n_threads))
    n_gpu_layers = cfg.llm.n_gpu_layers if cfg.llm.n_gpu_layers is not None else (-1 if choice.gpu else 0)
    return LlamaCppBackend(weights, n_ctx=cfg.llm.n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                           kv_bits=cfg.llm.kv_quant, flash_attn=cfg.llm.flash_attn)


# llm.kv_bits -> the ggml type of the K and V caches; bytes per block of values, values per block
KV_TYPES = {None: ("f16", llama_cpp.GGML_TYPE_F16, 2, 1), 8: ("q8_0", llama_cpp.GGML_TYPE_Q8_0, 34, 32),
            4: ("q4_0", llama_cpp.GGML_TYPE_Q4_0, 18, 32)}
FLASH_NOTE = "flash attention stays on (--no-flash-attn ignored): llama.cpp needs it for a quantized V cache"


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, path: Path, n_ctx: int, n_threads: int, n_gpu_layers: int = 0, n_batch: int = 512,
                 kv_bits: int | None = None, flash_attn: bool = True):
        kv_name, kv_type, _, _ = KV_TYPES[kv_bits]
        # A quantized cache: K and V both. llama.cpp refuses a quantized V cache without flash
        # attention, and llama-cpp-python's flash_attn=False means *disabled* (not auto): turn it on.
        quantized = {"type_k": kv_type, "type_v": kv_type} if kv_bits else {}
        self._flash_forced = bool(kv_bits) and not flash_attn
        flash_attn = flash_attn or bool(kv_bits)
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(n_batch, n_ctx),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                n_gpu_layers=n_gpu_layers,
                logits_all=False,
                flash_attn=flash_attn,
                verbose=False,
                **quantized,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelError(f"{path}: llama.cpp cannot load this model ({e})") from None
        except TemplateError as e:  # llama-cpp-python compiles the GGUF's chat template as it loads
            raise ModelError(f"{path}: llama-cpp-python cannot load this model: its chat template is not valid "
                             f"Jinja ({e.message or type(e).__name__})") from None
        # llama.cpp may round the context up (64 -> 256), but llama-cpp-python's token
        # buffer has the size asked for: a prefill past it fails, so that is the limit.
        self.n_ctx = min(self._llm.n_ctx(), len(self._llm.input_ids))
        self.vocab_size = self._llm.n_vocab()
        offload = n_gpu_layers != 0 and llama_cpp.llama_supports_gpu_offload()
        layers = "all layers" if n_gpu_layers < 0 else f"{n_gpu_layers} layers"
        threads = f"{n_threads} thread" + ("s" if n_threads != 1 else "")
        self.device = f"gpu ({layers}), {threads}" if offload else f"cpu ({threads})"
        self.n_threads, self.n_gpu_layers, self.flash_attn = n_threads, n_gpu_layers, flash_attn
        # Without flash attention llama.cpp's CPU attention for a multi-token batch differs from
        # its one-token path (logits up to ~1.3 apart on the embedded model); with it they are equal.
        self.verify_note = None if flash_attn else (
            "llama.cpp without flash attention computes a multi-token pass differently from one-token "
            "steps, so speculative greedy output may part from plain decoding at near-ties (--flash-attn fixes it)")
        self._ctx = self._llm.ctx
        self._logits_t = ctypes.POINTER(ctypes.c_float * self.vocab_size)
        self._verify_cap = min(n_batch, n_ctx)
        self._verify_batch = None  # a llama_batch, made on the first verify
        self.kv_bits, self.kv_type = kv_bits, kv_name
        self._can_shift = bool(llama_cpp.llama_memory_can_shift(self._llm._ctx.memory))

    def _last_logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(ptr, self._logits_t).contents)  # a view, valid until next eval

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        self._llm.eval(ids)
        return self._last_logits()

    def step(self, token: int) -> np.ndarray:
        self._llm.eval((token,))
        return self._last_logits()

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        """Extend the cache by ids in one batch; the logits at every position, shape (len(ids), vocab).

        Logits are requested per position in the batch (``logits_all`` on the context
        would hold n_ctx x vocab floats); rows are copied out before the next decode.
        """
        ids = [int(i) for i in ids]
        n, past = len(ids), self._llm.n_tokens
        if not 0 < n <= self._verify_cap:
            raise ValueError(f"verify takes 1 to {self._verify_cap} tokens, not {n}")
        if self._verify_batch is None:
            self._verify_batch = llama_cpp.llama_batch_init(self._verify_cap, 0, 1)
        batch = self._verify_batch
        batch.n_tokens = n
        for i, tid in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tid, past + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        self._llm._ctx.kv_cache_seq_rm(-1, past, -1)
        rc = llama_cpp.llama_decode(self._ctx, batch)
        if rc != 0:
            raise ModelError(f"llama.cpp could not decode {n} tokens at position {past} (llama_decode returned {rc})")
        self._llm.input_ids[past : past + n] = ids
        self._llm.n_tokens = past + n
        out = np.empty((n, self.vocab_size), dtype=np.float32)
        for i in range(n):
            ptr = llama_cpp.llama_get_logits_ith(self._ctx, i)
            out[i] = np.ctypeslib.as_array(ctypes.cast(ptr, self._logits_t).contents)
        return out

    def trim(self, n_tokens: int) -> None:
        n_tokens = max(0, min(n_tokens, self._llm.n_tokens))
        self._llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)
        self._llm.n_tokens = n_tokens

    @property
    def n_cached(self) -> int:
        return self._llm.n_tokens

    # ------------------------------------------------------------- state (base.State)
    @property
    def state_version(self) -> str:
        """The library, and flash attention: its K/V values are computed with it (a cold run without differs)."""
        return f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')}, flash attention {'on' if self.flash_attn else 'off'}"

    def save_state(self) -> bytes:
        """Sequence 0's KV cells (``llama_state_seq_get_data``): no logits, no scores."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(self._ctx, buf, size, 0)
        return ctypes.string_at(buf, n)

    def load_state(self, data: bytes, ids: Sequence[int]) -> int:
        """Replace the cache with a saved sequence (``llama_state_seq_set_data``); the positions restored."""
        self.trim(0)
        if not data:
            raise ValueError("an empty state")
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(data), 0) != len(data):
            self.trim(0)
            raise ValueError("llama.cpp refused the state (another model, context or KV type)")
        n = int(llama_cpp.llama_memory_seq_pos_max(llama_cpp.llama_get_memory(self._ctx), 0)) + 1
        if n != len(ids) or n > self.n_ctx:
            self.trim(0)
            raise ValueError(f"the state holds {n} positions, not the {len(ids)} tokens recorded with it")
        self._llm.input_ids[:n] = list(ids)
        self._llm.n_tokens = n
        return n

    def shift(self, start: int, n: int) -> bool:
        """llama.cpp's context shift: remove positions [start, start + n), move the rest down by n.

        Guarded by ``llama_memory_can_shift`` (False: the caller re-prefills). The moved keys are
        re-rotated by llama.cpp at the next decode; their values still saw the dropped tokens,
        so the result is close to, not the same as, a fresh prefill of the kept tokens.
        """
        end = self._llm.n_tokens
        if not self._can_shift or n <= 0 or not 0 <= start < start + n <= end:
            return False
        mem = self._llm._ctx.memory
        if not llama_cpp.llama_memory_seq_rm(mem, 0, start, start + n):
            return False
        llama_cpp.llama_memory_seq_add(mem, 0, start + n, end, -n)
        ids = self._llm.input_ids
        ids[start : end - n] = ids[start + n : end].copy()
        self._llm.n_tokens = end - n
        return True

    def kv_cache(self) -> dict:
        """The cache llama.cpp allocated at load: every layer's K and V for the whole context."""
        name, _, block_bytes, block = KV_TYPES[self.kv_bits]
        model = self._llm._model.model
        layers, heads = llama_cpp.llama_model_n_layer(model), llama_cpp.llama_model_n_head(model)
        kv_heads, embd = llama_cpp.llama_model_n_head_kv(model), llama_cpp.llama_model_n_embd(model)
        md = self._llm.metadata  # a model may set its own head size (Qwen3: 128 where 1024 / 16 = 64)
        arch = md.get("general.architecture", "")
        k_dim, v_dim = (int(md.get(f"{arch}.attention.{k}_length", embd // heads)) for k in ("key", "value"))
        per_position = layers * kv_heads * (k_dim + v_dim)  # values in K and V, every layer
        size = self._llm.n_ctx() * per_position * block_bytes // block
        return {"type": name, "bytes": int(size), "note": FLASH_NOTE if self._flash_forced else ""}

    def native_stream(self, ids: Sequence[int], cached: int, n: int):
        """llama-cpp-python's own `Llama.generate` loop, greedy, on this model: the bench baseline.

        Untimed setup here: an empty cache, then ``ids[:cached]`` evaluated (which
        `generate` then reuses as a cached prefix). Returns its lazy token generator.
        """
        self._llm.reset()
        if cached:
            self._llm.eval(ids[:cached])
        return self._llm.generate(list(ids), temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

    def synchronize(self) -> None:
        """Wait for queued work (on a GPU `eval` returns before the device is done)."""
        llama_cpp.llama_synchronize(self._ctx)

    def describe(self) -> dict:
        """What llama-bench prints in its model, size, params, threads and ngl columns."""
        model = self._llm._model
        build = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
        return {"model": model.desc(), "size_bytes": int(model.size()), "params": int(model.n_params()), "build": build,
                "threads": self.n_threads, "n_gpu_layers": self.n_gpu_layers,
                "flash_attn": self.flash_attn}

    def peak_memory(self) -> None:
        """llama.cpp keeps no allocator peak of its own (bench reports RSS)."""
        return None

    def reset_peak_memory(self) -> None:
        pass

    def close(self) -> None:
        batch, self._verify_batch = getattr(self, "_verify_batch", None), None
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def doctor_rows() -> list[tuple[str, str]]:
    return [
        ("llama-cpp-python", getattr(llama_cpp, "__version__", "?")),
        ("llama.cpp GPU offload", "yes" if llama_cpp.llama_supports_gpu_offload() else "no (CPU build)"),
        ("llama.cpp KV cache", "f16; --kv-bits 8|4: q8_0|q4_0 K and V; flash attention on (llm.flash_attn, "
                               "as llama.cpp's -fa auto; a quantized V cache needs it, so --no-flash-attn is ignored there)"),
        ("llama.cpp system info", llama_cpp.llama_print_system_info().decode(errors="replace").strip()),
    ]
