"""Prompt reuse across requests: TTFT of the second turn of a ~1,500-token conversation vs the first.

    python scripts/serve_reuse.py [--threads 1] [--backend llama.cpp]

Starts `mlxgen serve` (the embedded model), sends a conversation whose prompt is about 1,500
tokens (streamed, greedy, 16 tokens), then the same conversation plus the answer and one more
user message. Prints both TTFTs, the ratio and `cached_tokens`; exit 1 if turn 2's TTFT is not
below 25% of turn 1's. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from serve_load import free_port, http_get  # noqa: E402

PARAGRAPH = ("The history of the lighthouse is a story of stone, fire and patience. Keepers trimmed wicks, "
             "wound clockwork and logged every passing ship through long winter nights. ")


def stream(port: int, model: str, messages: list[dict]) -> tuple[float, str, dict]:
    body = json.dumps({"model": model, "messages": messages, "max_tokens": 16, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=600)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    f = s.makefile("rb")
    ttft, pieces, use = None, [], {}
    stream.keepalives = 0
    for line in f:
        stream.keepalives += line.startswith(b": keep-alive")
        if line.strip() == b"data: [DONE]":
            break
        if not line.startswith(b"data: "):
            continue
        obj = json.loads(line[6:])
        use = obj.get("usage") or use
        for ch in obj["choices"]:
            if ch["delta"].get("content"):
                ttft = ttft or time.perf_counter() - t0
                pieces.append(ch["delta"]["content"])
    s.close()
    return ttft, "".join(pieces), use


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--backend", default="llama.cpp")
    a = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlxgen", "serve", "--backend", a.backend, "-t", str(a.threads),
                               "--port", str(port)], stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            if "serving" in line:
                break
        model = json.loads(http_get(port, "/v1/models"))["data"][0]["id"]
        messages = [{"role": "system", "content": "You are a concise assistant."}]
        for i in range(9):
            messages += [{"role": "user", "content": f"Part {i + 1}: " + PARAGRAPH * 4},
                         {"role": "assistant", "content": f"Noted part {i + 1}."}]
        messages.append({"role": "user", "content": "Summarise all the parts in one sentence."})
        ttft1, answer, use1 = stream(port, model, messages)
        keepalives = stream.keepalives
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Now in five words."}]
        ttft2, _, use2 = stream(port, model, messages)
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = {"backend": a.backend, "threads": a.threads, "turn1_prompt_tokens": use1["prompt_tokens"],
           "turn1_cached": use1["prompt_tokens_details"]["cached_tokens"], "turn1_ttft_s": round(ttft1, 3),
           "turn2_prompt_tokens": use2["prompt_tokens"], "turn2_cached": use2["prompt_tokens_details"]["cached_tokens"],
           "turn2_ttft_s": round(ttft2, 3), "ratio": round(ttft2 / ttft1, 3), "turn1_keepalives": keepalives, "load_avg": os.getloadavg()}
    print(json.dumps(out))
    return 0 if out["ratio"] < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
