"""`mlxgen serve`: OpenAI's HTTP API in front of one worker (``mlxgen.serve_worker``).

The standard library's ``ThreadingHTTPServer``, as mlx_lm.server: a thread per
connection reads and checks the request (``mlxgen.openai_api``), queues a job, and
writes what the worker sends back, as one JSON body or as server-sent events.

Guards: the body is capped (413) and must arrive within ``read_timeout`` seconds in
all (408), each socket read times out too, so a slow client holds only its own
thread, never the worker; ``--api-key`` guards every route but ``/health``; a full
queue is a 503 with ``Retry-After``. A client that goes away is noticed before the
next token is written (or within ``POLL`` seconds while it waits), and its job is
cancelled. A long prefill keeps the stream alive with SSE comments.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mlxgen import launch
from mlxgen import openai_api as api
from mlxgen.errors import RankLost
from mlxgen.openai_api import ApiError
from mlxgen.prompt_cache import PREFIX_ENTRIES
from mlxgen.serve_worker import Busy, Job, Worker

log = logging.getLogger("mlxgen.serve")
POLL = 0.25  # seconds between checks that a waiting client is still there
PAGE = Path(__file__).with_name("chat_page.html")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, worker: Worker, model_ids: list[str], *, api_key: str | None = None,
                 max_body: int = 1 << 20, read_timeout: float = 10.0, keepalive_s: float = 5.0,
                 list_models=None) -> None:
        super().__init__(address, Handler)
        self.worker, self.model_ids, self.api_key = worker, model_ids, api_key
        self.max_body, self.read_timeout, self.keepalive_s = max_body, read_timeout, keepalive_s
        self.list_models = list_models or (lambda: [])
        self.started = int(time.time())

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"
    server_version = "mlxgen"

    def setup(self) -> None:
        self.timeout = self.server.read_timeout  # every socket read (headers, body) times out
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ routing

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_DELETE(self) -> None:
        self.route("DELETE")

    def do_PUT(self) -> None:
        self.route("PUT")

    ROUTES = {"/health": ("GET", "health"), "/v1/models": ("GET", "models"), "/": ("GET", "page"),
              "/v1/chat/completions": ("POST", "chat"), "/v1/completions": ("POST", "completion")}

    def route(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        self.job: Job | None = None
        try:
            if path not in self.ROUTES:
                raise ApiError(404, f"no route {method} {path}", code="not_found")
            want, name = self.ROUTES[path]
            if name != "health":
                self.check_auth()
            if method != want:
                raise ApiError(405, f"{path} takes {want}, not {method}", code="method_not_allowed",
                               headers={"Allow": want})
            getattr(self, f"serve_{name}" if name in ("health", "models", "page") else "serve_completion")(name)
        except ApiError as e:
            self.close_connection = True
            self.send_json(e.status, e.body(), e.headers)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        finally:
            if self.job is not None:
                self.job.answered.set()

    def check_auth(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        if not given.startswith("Bearer "):
            raise ApiError(401, "missing API key: send Authorization: Bearer <key>", type="authentication_error",
                           code="invalid_api_key")
        if not hmac.compare_digest(given[7:].strip().encode(), key.encode()):
            raise ApiError(401, "incorrect API key", type="authentication_error", code="invalid_api_key")

    # ------------------------------------------------------------------ simple routes

    def serve_health(self, _: str) -> None:
        w = self.server.worker
        self.send_json(200, {"status": "ok", "queued": w.jobs.qsize(), "served": w.served})

    def serve_models(self, _: str) -> None:
        created = self.server.started
        data = [{"id": self.server.model_ids[0], "object": "model", "created": created, "owned_by": "mlxgen"}]
        for m in self.server.list_models():
            if m["id"] != data[0]["id"]:
                data.append({"id": m["id"], "object": "model", "created": m.get("created", created),
                             "owned_by": m.get("owned_by", "local")})
        self.send_json(200, {"object": "list", "data": data})

    def serve_page(self, _: str) -> None:
        body = PAGE.read_bytes() if PAGE.exists() else b"<!doctype html><p>mlxgen serve</p>"
        self.send_bytes(200, body, "text/html; charset=utf-8")

    # ------------------------------------------------------------------ completions

    def serve_completion(self, kind: str) -> None:
        body = self.read_json()
        req = api.parse_request(kind, body, self.server.model_ids)
        job = self.job = Job(req)
        try:
            self.server.worker.submit(job)
        except Busy:
            raise ApiError(503, "the server is busy: too many queued requests; retry shortly", type="server_error",
                           code="server_busy", headers={"Retry-After": "1"}) from None
        first = self.wait(job, None)
        if first[0] == "error":
            raise first[1]
        if req.stream:
            self.stream(job)
        else:
            self.whole(job)

    def read_json(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise ApiError(411, "send the body with a Content-Length, not chunked", code="length_required")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise ApiError(411, "Content-Length is missing or not a number", code="length_required") from None
        if length < 0:
            raise ApiError(400, "Content-Length is negative", code="bad_request")
        if length > self.server.max_body:
            raise ApiError(413, f"the body is {length} bytes; at most {self.server.max_body}",
                           code="request_too_large")
        deadline = time.monotonic() + self.server.read_timeout
        data = bytearray()
        while len(data) < length:
            if time.monotonic() > deadline:
                raise ApiError(408, f"the body did not arrive within {self.server.read_timeout:g} s",
                               code="request_timeout")
            try:
                part = self.rfile.read1(min(65536, length - len(data)))
            except socket.timeout:
                raise ApiError(408, f"the body did not arrive within {self.server.read_timeout:g} s",
                               code="request_timeout") from None
            if not part:
                raise ApiError(400, "the body ended before Content-Length bytes", code="bad_request")
            data += part
        try:
            return json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise ApiError(400, f"the body is not valid JSON: {e}", code="invalid_json") from None

    def gone(self) -> bool:
        """The client closed its side (EOF readable on the socket)."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def wait(self, job: Job, keepalive) -> tuple:
        """The worker's next message; cancels the job if the client leaves meanwhile."""
        waited = 0.0
        while True:
            try:
                return job.out.get(timeout=POLL)
            except queue.Empty:
                waited += POLL
                if self.gone():
                    job.cancelled.set()
                    raise BrokenPipeError()
                if keepalive and waited >= self.server.keepalive_s:
                    keepalive()
                    waited = 0.0

    def whole(self, job: Job) -> None:
        req, pieces, entries = job.req, [], []
        while True:
            msg = self.wait(job, None)
            if msg[0] == "token":
                pieces.append(msg[1])
                if msg[2] is not None:
                    entries.append(msg[2])
            elif msg[0] == "done":
                body = api.whole(req, "".join(pieces), msg[1], msg[2], entries if req.logprobs is not None else None)
                self.send_json(200, body)
                return
            else:
                raise msg[1]

    def stream(self, job: Job) -> None:
        req = job.req
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        first, pending, offset = req.kind == "chat", [], 0

        def send(obj) -> None:
            if self.gone():
                raise BrokenPipeError()
            self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
            self.wfile.flush()

        def keepalive() -> None:
            self.wfile.write(b": keep-alive\n\n")
            self.wfile.flush()

        try:
            if first:
                send(api.chunk(req, "", None, role=True))
            while True:
                msg = self.wait(job, keepalive)
                if msg[0] == "token":
                    if msg[2] is not None:
                        pending.append(msg[2])
                    if msg[1]:
                        send(api.chunk(req, msg[1], None, pending, offset=offset))
                        offset += len(msg[1])
                        pending = []
                elif msg[0] == "done":
                    send(api.chunk(req, None if req.kind == "chat" else "", msg[1], pending, offset=offset))
                    if req.include_usage:
                        send(api.usage_chunk(req, msg[2]))
                    self.wfile.write(b"data: [DONE]\n\n")
                    self.wfile.flush()
                    return
                else:  # an error after the headers: an error event, as OpenAI streams do
                    send(msg[1].body())
                    return
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            job.cancelled.set()

    # ------------------------------------------------------------------ writing

    def send_json(self, status: int, obj: Any, headers: dict | None = None) -> None:
        self.send_bytes(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json", headers)

    def send_bytes(self, status: int, body: bytes, ctype: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (a malformed request line, headers too long) in OpenAI's envelope."""
        self.close_connection = True
        self.request_version = "HTTP/1.1"  # a garbled request line leaves HTTP/0.9: no status line at all
        err = ApiError(code, message or "bad request", code="bad_request")
        try:
            self.send_json(code, err.body())
        except OSError:
            pass


# ---------------------------------------------------------------------- start


def model_ids(cfg) -> list[str]:
    """The names a request may use for the loaded model: the first is the one /v1/models lists."""
    llm = cfg.llm
    if llm.mlx.repo:
        names = [llm.mlx.repo]
    elif llm.mlx.path:
        names = [Path(llm.mlx.path).name]
    else:
        names = [Path(llm.path or llm.file or "model").name]
    stem = names[0][:-5] if names[0].endswith(".gguf") else None
    return names + ([stem] if stem else [])


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")




def make_server(sess, host: str = "127.0.0.1", port: int = 8080, **kw) -> Server:
    from mlxgen import models

    worker = Worker(sess, kw.pop("max_queue", 32), kw.pop("prefix_cache", PREFIX_ENTRIES)).start()
    return Server((host, port), worker, model_ids(sess.cfg), list_models=models.list_ids, **kw)


def serve_forever(server: Server, sess) -> None:
    note = os.environ.get(launch.NOTE_ENV)
    if launch.PEER_LOST and note:  # rank 0 under --ranks: the supervisor says when another rank ended
        def peer_lost(signum, frame) -> None:
            try:
                why = Path(note).read_text(encoding="utf-8").strip()
            except OSError:
                why = "another rank ended; every rank stops"
            server.worker.peer_lost(RankLost(why))

        signal.signal(launch.PEER_LOST, peer_lost)
    print(f"mlxgen: serving {server.model_ids[0]} on {server.url} ({sess.choice.backend}, {sess.backend.device}); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        print("\nmlxgen: stopped", file=sys.stderr)
    finally:
        server.server_close()
        server.worker.stop()
