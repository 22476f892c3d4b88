"""The one thread that owns the model: it takes jobs in order and runs the shared loop.

HTTP threads only parse, queue and stream (``mlxgen.serve``). Each :class:`Job` is a
checked request plus two channels: ``out``, the messages the worker sends back
(``start``, ``token``, ``done``, ``error``), and ``cancelled``, a flag the HTTP thread
sets when its client goes away. The worker checks the flag between tokens and ends
that generation the way Ctrl-C does (the loop's ``interrupted``), in its own thread,
so the KV cache and the prompt-cache record stay consistent and the next job starts
at once.

The queue is FIFO and bounded: :meth:`Worker.submit` refuses a job beyond it (the
server answers 503 with ``Retry-After``). Prompts reuse the longest prefix the
backend's cache holds (``Session.complete``), across requests; with ``prefix_cache`` N
the worker also keeps the states of N earlier prefixes in memory (``PrefixLRU``), so
conversations that take turns each find their own history.

Batching comes next without touching the HTTP side: a batched worker takes up to B
jobs from the same queue and steps them together; a job's channels stay the same.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from mlxgen import chat
from mlxgen.errors import MlxgenError, RankLost, rank_lost
from mlxgen.loop import Done
from mlxgen.openai_api import ApiError, Request, params_for, usage, with_thinking

log = logging.getLogger("mlxgen.serve")
ANSWER_WAIT = 3.0  # seconds a lost rank's last request gets to write its 503 (within launch.GRACE_S)


@dataclass
class Job:
    req: Request
    out: "queue.Queue[tuple]" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    answered: threading.Event = field(default_factory=threading.Event)  # the HTTP thread wrote its last byte

    def send(self, *message: Any) -> None:
        self.out.put(message)


class Busy(Exception):
    """The queue is full."""


def additive_penalties(frequency: float, presence: float, n_prompt: int, ops):
    """OpenAI's frequency/presence penalties: subtract from the logits of tokens generated so far.

    ``logit[t] -= frequency * count(t) + presence * (count(t) > 0)``, over the tokens this
    request generated (not the prompt), as OpenAI documents them. Additive, unlike
    ``repetition_penalty`` (CTRL's divide/multiply over the last N tokens, prompt included).
    """

    def process(history: Sequence[int], logits):
        generated = history[n_prompt:]
        if not generated:
            return logits
        counts: dict[int, int] = {}
        for t in generated:
            counts[t] = counts.get(t, 0) + 1
        ids = sorted(counts)
        cut = ops.asarray([frequency * counts[t] + presence for t in ids])
        return ops.put(logits, ids, ops.take(logits, ids) - cut)

    process.name = f"frequency_penalty {frequency:g}, presence_penalty {presence:g} (generated tokens)"
    return process


class Worker:
    def __init__(self, sess, max_queue: int = 32, prefix_cache: int = 0) -> None:
        from mlxgen.prompt_cache import PrefixLRU, PromptCache

        self.sess = sess
        if sess is not None:  # earlier prefixes in memory, where the backend can save its cache (base.State)
            sess.cache = PromptCache(sess.backend, PrefixLRU(prefix_cache) if prefix_cache > 0 else None)
        self.jobs: "queue.Queue[Job | None]" = queue.Queue(maxsize=max_queue)
        self.thread = threading.Thread(target=self.run, name="mlxgen-worker", daemon=True)
        self.served = 0
        self.current: Job | None = None  # the job the worker runs now
        self.finished: collections.deque = collections.deque(maxlen=64)  # (request id, reason, tokens)

    def start(self) -> "Worker":
        self.thread.start()
        return self

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise Busy() from None

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    def run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():
                continue
            self.current = job
            try:
                self.serve(job)
            except ApiError as e:
                job.send("error", e)
            except RankLost as e:
                rank_gone(job, e)
            except MlxgenError as e:
                job.send("error", ApiError(400, str(e)))
            except Exception as e:  # a bug: this request fails, the server stays up
                if rank_lost(e) is not None:
                    rank_gone(job, rank_lost(e))
                log.exception("request %s failed", job.req.id)
                job.send("error", ApiError(500, f"internal error: {type(e).__name__}", type="server_error"))
            finally:
                self.current = None
                self.served += 1

    def peer_lost(self, lost: RankLost) -> None:
        """Another rank ended (the launcher's PEER_LOST): the request in flight gets the line, the server ends.

        Runs in the main thread: the worker may be stuck in a collective that never returns."""
        rank_gone(self.current, lost)

    # ------------------------------------------------------------------ one job

    def prompt_ids(self, req: Request) -> list[int]:
        sess = self.sess
        if req.kind == "completion":
            return sess.tokenizer.encode(req.prompt)
        spec = with_thinking(sess.template, req)
        if any(m["role"] == "system" for m in req.messages):
            spec = dataclasses.replace(spec, system=None)  # the request's system prompt replaces the config's
        return sess.tokenizer.encode(chat.render_messages(spec, req.messages, sess.tokenizer.special))

    def serve(self, job: Job) -> None:
        sess, req = self.sess, job.req
        ids = self.prompt_ids(req)
        n_ctx = sess.backend.n_ctx
        if len(ids) >= n_ctx:
            raise ApiError(400, f"the prompt is {len(ids)} tokens but the context holds {n_ctx}",
                           "messages" if req.kind == "chat" else "prompt", "context_length_exceeded")
        params = params_for(req, sess.cfg.inference)
        extra = []
        if req.frequency_penalty or req.presence_penalty:
            extra.append(additive_penalties(req.frequency_penalty, req.presence_penalty, len(ids), sess.ops))
        grammar = self.grammar(req)
        sample = sess.sampler(params, processors=extra, grammar=grammar)
        matcher = sample.constraints[0] if sample.constraints else None  # response_format's (or the config's)
        recorder = None
        if req.logprobs is not None:
            from mlxgen.logits import LogprobRecorder

            recorder = sample = LogprobRecorder(sample, max(req.logprobs, 1), sess.ops)
        limit = min(req.max_tokens or params.max_length, n_ctx - len(ids))
        job.send("start", len(ids))
        events = sess.complete(ids, max_tokens=limit, sample=sample, stop=req.stop)
        thrown, n_tok = False, 0
        event = next(events)
        while not isinstance(event, Done):
            if not thrown:
                entry = None
                if recorder is not None and event.id >= 0:
                    entry = self.entry(recorder.records[n_tok], req.logprobs)
                n_tok += event.id >= 0
                job.send("token", event.text, entry)
            if job.cancelled.is_set() and not thrown:
                thrown = True
                event = events.throw(KeyboardInterrupt)  # the loop ends with "interrupted" (between tokens)
            else:
                event = next(events)
        stats = event.stats
        self.finished.append((req.id, event.reason, stats.generated_tokens))
        if matcher is not None and not matcher.complete:  # finish_reason says why (length, or a stop string)
            log.info("request %s: the output is incomplete for %s (%s)", req.id, matcher.grammar.spec.label,
                     event.reason)
        job.send("done", event.reason, usage(stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens),
                 stats)

    def grammar(self, req: Request):
        """The request's response_format bound to the model (a fresh matcher per run comes from it), or None."""
        if req.constraint is None:
            return None
        from mlxgen.constraint import ConstraintError

        try:
            return self.sess.bind(req.constraint)
        except ConstraintError as e:
            raise ApiError(400, str(e), "response_format", "invalid_schema") from None

    def entry(self, record, k: int) -> dict:
        tok = self.sess.tokenizer
        tid, lp, top = record

        def one(i: int, v: float) -> dict:  # a token's text, and its exact bytes (a piece of a character too)
            return {"id": i, "text": tok.decode([i]), "bytes": list(tok.token_bytes(i)), "logprob": v}

        return {**one(tid, lp), "top": [one(i, v) for i, v in top[:k]]}


_ENDING = threading.Lock()  # the worker and the launcher's signal may both see the lost rank: one line


def rank_gone(job: Job | None, lost: RankLost) -> None:
    """A rank of a distributed model is gone: nothing can be served any more; one line, and the server ends."""
    if not _ENDING.acquire(blocking=False):
        threading.Event().wait()  # the other caller is ending the process
    if job is not None:
        job.send("error", ApiError(503, str(lost), type="server_error"))
    print(f"mlxgen: error: {lost}", file=sys.stderr, flush=True)
    if job is not None:
        job.answered.wait(timeout=ANSWER_WAIT)  # let the 503 reach its client before the process ends
    os._exit(lost.exit_code)
