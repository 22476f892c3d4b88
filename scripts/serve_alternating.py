"""Two conversations that take turns on one server: TTFT with and without the prefix LRU.

    python scripts/serve_alternating.py                       # llama.cpp, 1 thread
    python scripts/serve_alternating.py --backend mlx --turns 4

Conversations A and B each open with their own document (about ``--doc`` tokens) and go
on with short follow-ups, A, B, A, B, ... Each request's TTFT is measured by the client
(streamed: time to the first content chunk). With ``--prefix-cache 4`` (serve's default)
the worker saves the cache it is about to drop and restores the other conversation's
(``PrefixLRU``); with 0 it keeps only the live cache, so each turn re-prefills its whole
conversation after the shared system prompt. The two settings run interleaved (with,
without, with, without ...) on one loaded model; the figures are medians over the turns
after each conversation's first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

DOCS = {"A": "The observatory logged the comet's tail, the moon's phases and the weather at each night's watch. ",
        "B": "The kitchen kept notes on rice, lentils, spices and how long each dish simmered on the stove. "}


def one_pass(sess, prefix_cache: int, turns: int, doc_tokens: int, n: int) -> list[dict]:
    import openai

    from mlxgen import serve

    server = serve.make_server(sess, "127.0.0.1", 0, api_key="k", prefix_cache=prefix_cache)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=600)
    per = {k: len(sess.tokenizer.encode(v)) for k, v in DOCS.items()}
    history = {k: [{"role": "user", "content": v * max(1, doc_tokens // per[k]) + "Tell me about it."}]
               for k, v in DOCS.items()}
    rows = []
    try:
        for i in range(turns * 2):
            name = "AB"[i % 2]
            t0 = time.perf_counter()
            ttft, text, usage = None, [], None
            stream = client.chat.completions.create(model=server.model_ids[0], messages=history[name], max_tokens=n,
                                                    temperature=0, stream=True, stream_options={"include_usage": True})
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage
            rows.append({"conv": name, "turn": i // 2, "ttft": ttft, "prompt": usage.prompt_tokens,
                         "cached": usage.prompt_tokens_details.cached_tokens})
            history[name] += [{"role": "assistant", "content": "".join(text)}, {"role": "user", "content": "Go on."}]
    finally:
        server.shutdown()
        server.server_close()
        server.worker.stop()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="llama.cpp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--turns", type=int, default=4, help="turns per conversation")
    ap.add_argument("--doc", type=int, default=600, help="tokens of each conversation's opening document")
    ap.add_argument("-n", type=int, default=16, help="max_tokens per answer")
    ap.add_argument("--rounds", type=int, default=2, help="with/without pairs, interleaved")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlxgen import session
    from mlxgen.config import load_config

    cfg = load_config(None, {"backend": args.backend, "llm.n_threads": args.threads, "llm.n_ctx": 4096})
    sess = session.open_session(cfg, session.plan(cfg).choice)
    got = {4: [], 0: []}
    try:
        for _ in range(args.rounds):
            for lru in (4, 0):
                rows = one_pass(sess, lru, args.turns, args.doc, args.n)
                got[lru] += [r for r in rows if r["turn"] > 0]
                print(f"prefix-cache {lru}: " + " ".join(f"{r['conv']}{r['turn']}:{r['ttft']:.2f}s/{r['cached']}of"
                                                         f"{r['prompt']}" for r in rows), flush=True)
    finally:
        sess.close()
    med = {k: statistics.median(r["ttft"] for r in v) for k, v in got.items()}
    cached = {k: statistics.median(r["cached"] / r["prompt"] for r in v) for k, v in got.items()}
    print(f"{args.backend} ({sess.backend.device}), later turns: TTFT median with the LRU {med[4]:.3f} s "
          f"({cached[4]:.0%} of the prompt cached), without {med[0]:.3f} s ({cached[0]:.0%} cached); "
          f"with/without = {med[4] / med[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
