"""From a resolved config to a ready model: the one pass the design describes.

    config -> hardware.detect -> backend.prepare (download / convert) -> tokenizer
           -> backend.load -> chat template -> prompt ids -> loop.generate
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mlxgen import backends, chat, hardware, sources
from mlxgen.config import Config
from mlxgen.loop import Event, generate
from mlxgen.sampling import NUMPY, SamplingParams, make_sampler
from mlxgen.tokenizer import Tokenizer


@dataclass(frozen=True)
class Plan:
    """What a run would do, decided without loading anything (``--dry-run``)."""

    cfg: Config
    choice: hardware.Choice
    model: str
    tokenizer: str


def plan(cfg: Config, facts: hardware.Facts | None = None) -> Plan:
    facts = facts or hardware.gather_facts()
    choice = hardware.detect(facts, cfg.backend)
    model = sources.describe_llm(cfg.llm)
    if choice.backend == "mlx":
        mlx = cfg.llm.mlx
        if mlx.path:
            model = f"local MLX folder {mlx.path}"
        elif mlx.repo:
            q = mlx.quantize
            model = f"huggingface {mlx.repo} @ {mlx.revision} -> MLX {q.bits}-bit (group {q.group_size}), cached"
        else:
            model += " -> imported to MLX, cached"
    return Plan(cfg, choice, model, sources.describe_tokenizer(cfg.tokenizer, cfg.llm))


def sampling_params(cfg: Config) -> SamplingParams:
    inf = cfg.inference
    return SamplingParams(
        temperature=inf.temperature,
        top_k=inf.top_k,
        top_p=inf.top_p,
        min_p=inf.min_p,
        repetition_penalty=inf.repetition_penalty,
        repetition_context=inf.repetition_context,
        seed=inf.seed,
    )


def load_tokenizer(cfg: Config, weights: Path) -> Tokenizer:
    configured = sources.resolve_tokenizer_file(cfg.tokenizer)
    if configured is not None:
        return Tokenizer.from_json(configured)
    if weights.is_dir():
        return Tokenizer.from_json(weights / "tokenizer.json")
    return Tokenizer.from_gguf(weights)


@dataclass
class Session:
    cfg: Config
    choice: hardware.Choice
    backend: object
    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]
    template: chat.PromptSpec
    load_s: float

    def prompt(self, message: str) -> tuple[str, list[int]]:
        """The templated prompt text and its token ids."""
        text = chat.render(self.template, message, self.tokenizer.special)
        return text, self.tokenizer.encode(text)

    @property
    def ops(self):
        """The array ops the sampler runs on: the backend's own (MLX) or numpy."""
        return getattr(self.backend, "sampling_ops", NUMPY)

    def sampler(self, params: SamplingParams | None = None):
        """A fresh sampler for this backend's arrays (the config's settings by default)."""
        return make_sampler(params or sampling_params(self.cfg), ops=self.ops)

    def generate(
        self,
        ids: list[int],
        ignore_eos: bool = False,
        max_tokens: int | None = None,
        cached: int = 0,
        sample=None,
    ) -> Iterator[Event]:
        """Generate after ``ids``; the backend's cache already holds ``ids[:cached]``.

        ``sample``: a sampler to use instead of one built from the config.
        """
        sample = sample or self.sampler()
        return generate(
            self.backend,
            ids,
            sample,
            self.tokenizer.decode,
            max_tokens=max_tokens or self.cfg.inference.max_length,
            eos_ids=() if ignore_eos else self.eos_ids,
            stop=self.cfg.inference.stop,
            cached=cached,
        )

    def close(self) -> None:
        self.backend.close()


def open_session(cfg: Config, choice: hardware.Choice) -> Session:
    module = backends.load_module(choice.backend)
    t0 = time.perf_counter()
    weights = module.prepare(cfg)
    tokenizer = load_tokenizer(cfg, weights)
    eos_ids = tokenizer.resolve_eos(cfg.tokenizer.eos_token)  # fails before the model loads
    backend = module.load(weights, cfg, choice)
    load_s = time.perf_counter() - t0
    return Session(cfg, choice, backend, tokenizer, eos_ids, prompt_spec(cfg, tokenizer), load_s)


def prompt_spec(cfg: Config, tokenizer: Tokenizer) -> chat.PromptSpec:
    """The chat template a run uses: --raw, the config's, the model's, or ChatML."""
    inf = cfg.inference
    return chat.choose_template(
        inf.raw,
        cfg.tokenizer.chat_template,
        tokenizer.chat_template,
        inf.system_prompt,
        inf.thinking,
        think_token=tokenizer.token_id("<think>") is not None,
    )


TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                   "*.jinja"]


def open_tokenizer(cfg: Config, choice: hardware.Choice) -> Tokenizer:
    """The tokenizer a run on ``choice`` uses, without loading, converting or downloading the weights.

    The same files ``prepare`` + ``load_tokenizer`` end up reading: an MLX conversion
    copies its repo's tokenizer files, and a GGUF import writes the GGUF's own vocabulary.
    """
    configured = sources.resolve_tokenizer_file(cfg.tokenizer)
    if configured is not None:
        return Tokenizer.from_json(configured)
    mlx = cfg.llm.mlx
    if choice.backend == "mlx" and mlx.path:
        return Tokenizer.from_json(Path(mlx.path).expanduser() / "tokenizer.json")
    if choice.backend == "mlx" and mlx.repo:
        return Tokenizer.from_json(sources.hf_snapshot(mlx.repo, mlx.revision, TOKENIZER_FILES) / "tokenizer.json")
    return Tokenizer.from_gguf(sources.resolve_gguf(cfg.llm))
