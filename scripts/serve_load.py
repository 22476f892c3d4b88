"""Load test for `mlxgen serve`: N requests from C concurrent clients, mixed streaming and not,
some clients hanging up mid-stream. Loopback only, bounded (every request has a timeout).

    python scripts/serve_load.py [--requests 500] [--clients 8] [--max-tokens 24] [--threads 1]

It starts the server (the embedded model on llama.cpp, greedy), asks each of the prompts once,
one at a time, for its reference text, then runs the load and checks:
- no request failed or got lost, and every response id is unique (none duplicated);
- every finished answer equals its own prompt's reference (none crossed);
- the server's RSS grew at most 5% from request 100 to the last;
and prints p50/p99 time to first token (streamed requests) and aggregate tok/s. Exit 1 on a failed check.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

SUBJECTS = ["the sea", "a cat", "winter", "bread", "a train", "the moon", "coffee", "a library", "rain", "a bicycle",
            "mountains", "a violin", "the desert", "a garden", "snow", "a lighthouse", "chess", "a river", "fire",
            "an owl"]
PROMPTS = [f"Write one sentence about {s}." for s in SUBJECTS]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def request(port: int, body: dict, hang_up_after: int | None = None, timeout: float = 300) -> dict:
    """One request; returns {id, text, tokens, ttft, status, hung_up}."""
    data = json.dumps(body).encode()
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    f = s.makefile("rb")
    status = int(f.readline().split()[1])
    while f.readline() not in (b"\r\n", b""):
        pass
    out = {"status": status, "hung_up": False, "ttft": None}
    if not body.get("stream"):
        payload = json.loads(f.read())
        s.close()
        if status != 200:
            return {**out, "error": payload}
        return {**out, "id": payload["id"], "text": payload["choices"][0]["message"]["content"],
                "tokens": payload["usage"]["completion_tokens"], "total": time.perf_counter() - t0}
    pieces, rid, tokens, chunks = [], None, 0, 0
    for line in f:
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            break
        obj = json.loads(line[6:])
        rid = obj["id"]
        if obj.get("usage"):
            tokens = obj["usage"]["completion_tokens"]
        for ch in obj["choices"]:
            text = ch["delta"].get("content")
            if text:
                if out["ttft"] is None:
                    out["ttft"] = time.perf_counter() - t0
                pieces.append(text)
                chunks += 1
        if hang_up_after is not None and chunks >= hang_up_after:
            s.close()
            return {**out, "id": rid, "hung_up": True, "tokens": chunks}
    s.close()
    return {**out, "id": rid, "text": "".join(pieces), "tokens": tokens, "total": time.perf_counter() - t0}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlxgen", "serve", "--backend", "llama.cpp", "-t", str(a.threads),
                               "--port", str(port), "--max-queue", str(a.clients * 2)],
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "serving" in line:
                break
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        model = json.loads(http_get(port, "/v1/models"))["data"][0]["id"]

        def body(i: int, stream: bool) -> dict:
            return {"model": model, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                    "max_tokens": a.max_tokens, "temperature": 0, "stream": stream,
                    **({"stream_options": {"include_usage": True}} if stream else {})}

        reference = [request(port, body(i, False))["text"] for i in range(len(PROMPTS))]
        assert len(set(reference)) == len(reference), "two prompts share a reference: crossing would go unseen"
        results: list[dict | None] = [None] * a.requests
        counter, lock, rss = iter(range(a.requests)), threading.Lock(), {}
        done = [0]

        def client() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                stream = i % 2 == 1
                hang = 3 if i % 10 == 3 else None  # every tenth request hangs up after 3 text chunks
                try:
                    results[i] = {"i": i, **request(port, body(i, stream or hang is not None), hang)}
                except Exception as e:  # noqa: BLE001 - counted as a failure
                    results[i] = {"i": i, "status": -1, "error": repr(e)}
                with lock:
                    done[0] += 1
                    if done[0] == min(100, a.requests // 5):
                        rss["at_100"] = rss_kib(server.pid)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        time.sleep(0.5)
        rss["at_end"] = rss_kib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    failed = [r for r in results if r is None or r["status"] != 200]
    ids = [r["id"] for r in results if r and r.get("id")]
    finished = [r for r in results if r and r["status"] == 200 and not r["hung_up"]]
    crossed = [r["i"] for r in finished if r["text"] != reference[r["i"] % len(PROMPTS)]]
    ttfts = sorted(r["ttft"] for r in results if r and r.get("ttft") is not None)
    tokens = sum(r.get("tokens") or 0 for r in results if r)
    growth = rss["at_end"] / rss["at_100"] - 1
    figures = {
        "requests": a.requests, "clients": a.clients, "max_tokens": a.max_tokens, "threads": a.threads,
        "failed": len(failed), "lost": sum(1 for r in results if r is None or (r["status"] == 200 and not r.get("id"))),
        "duplicated_ids": len(ids) - len(set(ids)), "crossed": len(crossed), "finished": len(finished),
        "hung_up": sum(1 for r in results if r and r["hung_up"]),
        "ttft_p50_s": round(statistics.median(ttfts), 3), "ttft_p99_s": round(ttfts[int(0.99 * (len(ttfts) - 1))], 3),
        "wall_s": round(wall, 1), "tokens": tokens, "agg_tok_s": round(tokens / wall, 1),
        "rss_at_100_mib": round(rss["at_100"] / 1024, 1), "rss_at_end_mib": round(rss["at_end"] / 1024, 1),
        "rss_growth_pct": round(100 * growth, 2), "load_avg": os.getloadavg(), "cpus": os.cpu_count(),
    }
    print(json.dumps(figures, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(figures, f, indent=1)
    ok = not failed and not crossed and figures["duplicated_ids"] == 0 and len(ids) == a.requests and growth <= 0.05
    print("PASS" if ok else f"FAIL: failed={failed[:3]} crossed={crossed[:5]}", file=sys.stderr)
    return 0 if ok else 1


def http_get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    data = conn.getresponse().read()
    conn.close()
    return data


if __name__ == "__main__":
    sys.exit(main())
