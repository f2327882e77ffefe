"""The chat page at GET / (chameleon_serve/server/static/index.html), against a real server process.

The page is one self-contained HTML file: it may load nothing from another origin, and every route and
field its script uses must be part of the server's OpenAPI schema. The last test drives headless Chromium
through a real exchange (API key, streamed image, follow-up) when /usr/bin/chromium is installed.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from chameleon_serve.testing import write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

API_KEY = "web-page-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    with live_server("--model", str(ckpt), "--api-key", API_KEY, api_key=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def page(server) -> str:
    return httpx.get(server.url + "/", timeout=30).text


@pytest.fixture(scope="module")
def script(page) -> str:
    scripts = re.findall(r"<script>(.*?)</script>", page, re.S)
    assert len(scripts) == 1, "the page's code is one inline <script>"
    return scripts[0]


@pytest.fixture(scope="module")
def openapi(server) -> dict:
    return httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()


def test_page_is_served_at_root_without_a_key_while_the_api_still_needs_one(server):
    r = httpx.get(server.url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>chameleon-serve</title>" in r.text
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.post(server.url + "/", timeout=30).status_code == 401  # only GET / is public
    assert httpx.get(server.url + "/docs", headers=AUTH, timeout=30).status_code == 200
    assert "/" not in httpx.get(server.url + "/openapi.json", headers=AUTH, timeout=30).json()["paths"]


def test_page_loads_nothing_from_other_origins(page):
    assert not re.findall(r"https?://", page), "no absolute URLs: the page must work offline, from this server only"
    for attribute, value in re.findall(r"\b(src|href|action)\s*=\s*[\"']([^\"']*)", page):
        assert not value.startswith("//"), f"{attribute}={value!r} points at another host"
    csp = re.search(r'http-equiv="Content-Security-Policy"\s+content="([^"]*)"', page).group(1)
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


def test_routes_the_page_calls_exist_with_their_methods(script, openapi):
    paths = dict(re.findall(r'const (\w+_PATH) = "([^"]+)"', script))
    assert paths == {"MODELS_PATH": "/v1/models", "CHAT_PATH": "/v1/chat/completions"}
    assert "get" in openapi["paths"][paths["MODELS_PATH"]]
    assert "post" in openapi["paths"][paths["CHAT_PATH"]]
    assert re.search(r"api\(CHAT_PATH, \{\s*method: \"POST\"", script)
    assert "text/event-stream" in openapi["paths"][paths["CHAT_PATH"]]["post"]["responses"]["200"]["content"]


# The page names the server's objects after their schemas, so every field it reads can be checked.
READ_FIELDS = {
    "list": ["ModelList"],
    "card": ["ModelCard"],
    "chunk": ["ChatCompletionChunk", "ErrorResponse"],  # an error inside a stream is `data: {"error": ...}`
    "choice": ["ChunkChoice"],
    "delta": ["ChunkDelta"],
    "progress": ["ImageProgressOut"],
    "image": ["StreamedImagePart"],
    "usage": ["Usage"],
    "details": ["CompletionTokensDetails"],
    "error": ["ErrorDetail"],
}


def _properties(openapi: dict, name: str) -> dict:
    return openapi["components"]["schemas"][name]["properties"]


def _ref(schema: dict) -> str:
    """The schema name a property points at (directly or inside anyOf with null)."""
    refs = re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(schema))
    assert len(refs) == 1, schema
    return refs[0]


def test_fields_the_page_reads_exist_in_the_response_schemas(script, openapi):
    used = {(variable, field) for variable, field in re.findall(r"\b(\w+)\.(\w+)", script) if variable in READ_FIELDS}
    assert {("delta", "content"), ("delta", "image_progress"), ("delta", "images"), ("progress", "preview_url"),
            ("chunk", "usage"), ("chunk", "error"), ("error", "message"), ("card", "output_modalities")} <= used
    for variable, field in sorted(used):
        known = set().union(*(_properties(openapi, schema) for schema in READ_FIELDS[variable]))
        assert field in known, f"the page reads {variable}.{field}, which is not in {READ_FIELDS[variable]}"


def test_fields_the_page_sends_exist_in_the_request_schema(script, openapi):
    request = _properties(openapi, "ChatCompletionRequest")
    literal = re.search(r"const request = \{([^}]*)\}", script).group(1)
    sent = set(re.findall(r"(\w+):", literal)) | set(re.findall(r"\brequest\.(\w+) =", script))
    assert {"messages", "model", "stream", "stream_options", "modalities", "max_tokens", "temperature", "seed", "image"} <= sent
    assert sent <= set(request), sent - set(request)
    for field, literal in re.findall(r"\brequest\.(\w+) = \{([^}]*)\}", script):
        keys = set(re.findall(r"(\w+):", literal))
        assert keys <= set(_properties(openapi, _ref(request[field]))), (field, keys)


# ---------------------------------------------------------------------------------------------- in a browser


class Chromium:
    """Headless Chromium driven over the DevTools protocol on --remote-debugging-pipe (fds 3 and 4)."""

    def __init__(self, profile: Path):
        command_r, self._commands = os.pipe()
        self._answers, answer_w = os.pipe()
        # the child must see them as fds 3 and 4: park them above 10 first so the dup2s cannot collide
        high = [fcntl.fcntl(command_r, fcntl.F_DUPFD, 10), fcntl.fcntl(answer_w, fcntl.F_DUPFD, 10)]

        def as_fds_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", "--window-size=1000,800", "about:blank"],
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for fd in (command_r, answer_w, *high):
            os.close(fd)
        self._buffer, self._id, self._session = b"", 0, None

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._answers], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    raise TimeoutError(method)
                data = os.read(self._answers, 1 << 20)
                if not data:
                    raise RuntimeError("chromium exited")
                self._buffer += data
            raw, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self._id:  # skip events
                assert "error" not in answer, (method, answer["error"])
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url=url)["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(f"(() => {{ try {{ return !!({expression}); }} catch {{ return false; }} }})()"):  # page may be loading
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


@pytest.fixture
def browser(tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed")
    chromium = Chromium(tmp_path / "profile")
    yield chromium
    chromium.close()


def test_chat_in_a_browser_asks_for_the_key_streams_an_image_and_follows_up(server, browser, tmp_path):
    # ?prompt= sends the prompt once the model is known; the server wants a key, so the page asks first
    browser.open(server.url + "/?prompt=A%20red%20bicycle&modalities=image&seed=3")
    browser.wait_for("!document.getElementById('key-form').hidden")
    assert "Missing API key" in browser.js("document.getElementById('key-message').textContent")
    # watch the answer as it forms: a progress bar, then a preview image while the bar is still there
    browser.js("""window.seen = {progress: false, preview: false};
        new MutationObserver(() => {
          const figure = document.querySelector('figure');
          if (figure && figure.querySelector('progress')) {
            seen.progress = true;
            if (figure.querySelector('img').getAttribute('src')) seen.preview = true;
          }
        }).observe(document.getElementById('conversation'), {subtree: true, childList: true, attributes: true});""")
    browser.js("document.getElementById('api-key').value = 'web-page-key';"
               "document.querySelector('#key-form button[type=submit]').click()")

    browser.wait_for("document.querySelector('.turn .usage, .turn .error')")
    assert browser.js("document.querySelector('.turn .error')") is None
    assert browser.js("seen") == {"progress": True, "preview": True}
    final = browser.js("document.querySelector('figure img').src")
    assert final.startswith("data:image/png;base64,") and browser.js("document.querySelector('figure progress')") is None
    assert "image" in browser.js("document.querySelector('.turn .usage').textContent")

    # a text follow-up sends the generated image back as part of the conversation
    browser.js("""document.getElementById('modality').value = 'text';
        document.getElementById('max-tokens').value = '12';
        document.getElementById('message').value = 'Describe it.';
        document.getElementById('send').click()""")
    browser.wait_for("document.querySelectorAll('.turn .usage, .turn .error').length == 2")
    assert browser.js("document.querySelector('.turn .error')") is None
    assert browser.js("document.querySelectorAll('.turn.assistant')[1].querySelector('.text').textContent")
    history = browser.js("state.history")
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["content"] == [{"type": "image_url", "image_url": {"url": final}}]

    # bad input is explained in the page, nothing is sent
    browser.js("document.getElementById('max-tokens').value = '0'; document.getElementById('message').value = 'x';"
               "document.getElementById('send').click()")
    assert browser.js("document.getElementById('composer-error').textContent") == "Max tokens must be at least 1."
    browser.screenshot(tmp_path / "web-page.png")  # left for a human to look at when the test fails
