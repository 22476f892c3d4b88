"""From a resolved config to a ready model: the one pass the design describes.

    config -> hardware.detect -> backend.prepare (download / convert) -> tokenizer
           -> backend.load -> chat template -> prompt ids -> loop.generate
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from mlxgen import backends, chat, constraint, hardware, sources
from mlxgen.backends.base import Backend, KVMemory, Pipelined, Verify
from mlxgen.config import Config
from mlxgen.constraint import Grammar
from mlxgen.loop import Done, Event, generate
from mlxgen.prompt_cache import PromptCache, common_prefix
from mlxgen.sampling import NUMPY, Processor, SamplingParams, make_sampler
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
    model = backends.REGISTRY[choice.backend].describe_model(cfg)
    return Plan(cfg, choice, model, sources.describe_tokenizer(cfg.tokenizer, cfg.llm))


def sampling_params(cfg: Config) -> SamplingParams:
    return cfg.inference.sampling()


@dataclass
class Session:
    cfg: Config
    choice: hardware.Choice
    backend: Backend
    tokenizer: Tokenizer
    eos_ids: tuple[int, ...]
    template: chat.PromptSpec
    load_s: float
    processors: tuple[Processor, ...] = ()  # logits processors every run of this session applies
    constraint: "Grammar | None" = None  # inference.constraint bound to the model: a fresh matcher per run
    speculation: Any = None  # mlxgen.speculative.Speculation: a drafter (--draft-model, --lookup), else None
    weights: Any = None  # the local weights the backend loaded (a file or folder): what model_key hashes
    cache: PromptCache = field(init=False)
    _keep: tuple | None = field(init=False, default=None)  # (template key, keep_prefix) cached

    def __post_init__(self) -> None:
        self.cache = PromptCache(self.backend)
        self._model_key: str | None = None

    @property
    def model_key(self) -> str:
        """The loaded model's identity by content (saved prompt caches record it): a GGUF's
        ``cache.fingerprint``; for a model folder, its config and weight files' fingerprints."""
        if self._model_key is None:
            import hashlib
            from pathlib import Path

            from mlxgen.cache import fingerprint

            path = Path(self.weights) if self.weights is not None else None
            if path is None:
                key = f"unknown:{self.backend.name}"
            elif path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
                key = hashlib.sha256("|".join(f"{p.name}:{fingerprint(p)}" for p in files).encode()).hexdigest()[:20]
            else:
                key = fingerprint(path)
            self._model_key = key
        return self._model_key

    def prompt(self, message: str) -> tuple[str, list[int]]:
        """The templated prompt text and its token ids."""
        text = chat.render(self.template, message, self.tokenizer.special)
        return text, self.tokenizer.encode(text)

    @property
    def ops(self):
        """The array ops the sampler runs on: the backend's own (MLX) or numpy."""
        return self.backend.sampling_ops if isinstance(self.backend, Pipelined) else NUMPY

    def sampler(self, params: SamplingParams | None = None, processors: Sequence[Processor] = (),
                grammar: Grammar | None = None):
        """A fresh sampler for this backend's arrays (the config's settings by default).

        ``processors``: the caller's own logits processors, after the settings' and the session's.
        ``grammar``: a constraint for this run instead of the session's (a server request's response_format).
        """
        return make_sampler(params or sampling_params(self.cfg), ops=self.ops,
                            processors=self.run_processors(processors, grammar=grammar))

    def run_processors(self, processors: Sequence[Processor] = (), ops=None,
                       grammar: Grammar | None = None) -> tuple[Processor, ...]:
        """A run's processors: the session's, a fresh matcher of its constraint (or ``grammar``'s), then ``processors``.

        ``ops``: the arrays the matcher masks (the backend's own by default; numpy for `mlxgen logits`).
        """
        grammar = grammar or self.constraint
        matcher = (grammar.matcher(ops or self.ops),) if grammar else ()
        return (*self.processors, *matcher, *processors)

    def bind(self, spec: "constraint.Spec") -> Grammar:
        """``spec`` bound to this model's vocabulary and EOS (llguidance's tokenizer is built once per model)."""
        return constraint.bind(spec, self.tokenizer, self.backend.vocab_size, self.eos_ids)

    def generate(
        self,
        ids: list[int],
        ignore_eos: bool = False,
        max_tokens: int | None = None,
        cached: int = 0,
        sample=None,
        processors: Sequence[Processor] = (),
        stop: Sequence[str] | None = None,
        speculate: bool = True,
        overflow: str | None = None,
    ) -> Iterator[Event]:
        """Generate after ``ids``; the backend's cache already holds ``ids[:cached]``.

        ``sample``: a sampler to use instead of one built from the config (and ``processors``).
        ``stop``: stop strings for this call instead of the config's.
        ``speculate``: False runs plain decoding even when the session has a drafter (bench).
        ``overflow``: what a full context does, ``"shift"`` or ``"stop"`` (default: the config's, else stop).
        """
        sample = sample or self.sampler(processors=processors)
        return generate(
            self.backend,
            ids,
            sample,
            self.tokenizer.decode,
            max_tokens=max_tokens or self.cfg.inference.max_length,
            eos_ids=() if ignore_eos else self.eos_ids,
            stop=self.cfg.inference.stop if stop is None else tuple(stop),
            cached=cached,
            speculation=self.speculation if speculate else None,
            overflow=(mode := self.overflow(overflow)),
            keep=self.keep_prefix() if mode == "shift" else 0,
        )

    def overflow(self, default: str | None = None) -> str:
        """``--context-overflow``: the config's, else the command's default, else stop."""
        return self.cfg.inference.context_overflow or default or "stop"

    def keep_prefix(self, spec: chat.PromptSpec | None = None) -> int:
        """Tokens a context shift keeps: the template's text before the first user message (the system prompt)."""
        spec = spec or self.template
        if spec.template is None:
            return 0
        key = (spec.template, spec.system, spec.thinking)
        if self._keep is None or self._keep[0] != key:
            a, b = (self.tokenizer.encode(chat.render(spec, m, self.tokenizer.special)) for m in ("a", "b"))
            self._keep = (key, common_prefix(a, b))
        return self._keep[1]

    def complete(self, ids: list[int], shift: bool = False, **kw) -> Iterator[Event]:
        """:meth:`generate`, reusing the longest prefix of ``ids`` the cache already holds.

        The reused count is in the Done event's ``stats.cached_tokens``; the cache's
        record is updated before Done is handed out. Ctrl-C thrown in at a yield is
        passed on to the loop, which ends the stream with reason ``interrupted``.
        ``shift``: a cache that holds dropped turns in the middle shifts them out in place where
        the backend can (``PromptCache.prepare``).
        """
        reused = self.cache.prepare(ids, shift=shift)
        events = self.generate(ids, cached=reused, **kw)
        event = next(events)
        while not isinstance(event, Done):
            try:
                yield event
                event = next(events)
            except KeyboardInterrupt:
                event = events.throw(KeyboardInterrupt)
        self.cache.record(list(ids) + [tid for tid, _ in event.trace], event.shifts)
        yield event

    def warnings(self) -> list[str]:
        """Settings that do nothing here, and a requested backend that runs worse than another."""
        out = [self.choice.warning] if self.choice.warning else []
        if self.speculation is not None and self.speculation.warning:
            out.append(self.speculation.warning)
        spec, inf = self.template, self.cfg.inference
        if inf.thinking is not None and (spec.template is None or (
                "enable_thinking" not in spec.template and not spec.think_token)):
            why = "--raw has no template" if spec.template is None else "the model has no thinking switch"
            out.append(f"--{'think' if inf.thinking else 'no-think'} does nothing: {why}")
        if self.speculation is not None and isinstance(self.backend, Verify) and self.backend.verify_note:
            out.append(self.backend.verify_note)
        kv_note = self.backend.kv_cache().get("note") if isinstance(self.backend, KVMemory) else ""
        if self.cfg.llm.kv_quant and kv_note:
            out.append(f"--kv-bits {self.cfg.llm.kv_quant}: {kv_note}")
        layers = self.cfg.llm.n_gpu_layers
        if layers and not self.choice.gpu:
            out.append(f"--gpu-layers {layers} does nothing: {self.choice.backend} runs on the CPU here")
        return out

    def close(self) -> None:
        if self.speculation is not None:
            self.speculation.close()
        self.backend.close()


def open_session(cfg: Config, choice: hardware.Choice) -> Session:
    info, module = backends.REGISTRY[choice.backend], backends.load_module(choice.backend)
    t0 = time.perf_counter()
    spec = constraint.from_config(cfg.inference.constraint)  # a bad schema fails before anything loads
    weights = module.prepare(cfg)
    tokenizer = info.open_tokenizer(cfg, weights)
    eos_ids = tokenizer.resolve_eos(cfg.tokenizer.eos_token)  # fails before the model loads
    backend = module.load(weights, cfg, choice)
    try:
        speculation = open_speculation(cfg, choice, backend, tokenizer)
    except BaseException:
        backend.close()
        raise
    load_s = time.perf_counter() - t0
    sess = Session(cfg, choice, backend, tokenizer, eos_ids, prompt_spec(cfg, tokenizer), load_s,
                   speculation=speculation, weights=weights)
    if spec is not None:
        try:
            sess.constraint = sess.bind(spec)
        except BaseException:
            sess.close()
            raise
    return sess


def open_speculation(cfg: Config, choice: hardware.Choice, backend: Backend, tokenizer: Tokenizer):
    """The drafter ``inference.draft`` / ``inference.lookup`` ask for, or None."""
    inf = cfg.inference
    if not inf.draft and not inf.lookup:
        return None
    from mlxgen import speculative

    speculative.check(backend)
    if inf.lookup:
        return speculative.Speculation(speculative.Lookup(), inf.lookup, inf.adaptive_draft)
    return speculative.open_draft_model(cfg, choice, backend, tokenizer)


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


def open_tokenizer(cfg: Config, choice: hardware.Choice) -> Tokenizer:
    """The tokenizer a run on ``choice`` uses, without loading, converting or downloading the weights."""
    return backends.REGISTRY[choice.backend].open_tokenizer(cfg, None)
