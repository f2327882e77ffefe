"""`chameleon-serve chat` run as a subprocess, the way users and scripts run it.

Exit codes are part of the interface: 0 ok, 1 server/API error, 2 usage error, 3 connection error,
4 authentication error. Runs against a dead port need no server; the rest use a live one.
"""
from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from chameleon_serve.testing import SMALL_VQ, write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

IMAGE_SIZE = (SMALL_VQ.resolution, SMALL_VQ.resolution)
API_KEY = "cli-test-key"


def chat(*args: str, timeout: float = 240, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "chameleon_serve.cli", "chat", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, input=stdin, cwd=cwd)


def dead_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was just free)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------------ no server


def test_a_dead_port_fails_fast_with_exit_code_3_and_a_message_naming_the_url():
    url = dead_port_url()
    started = time.monotonic()
    result = chat("hello", "--url", url)
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [f"chameleon-serve chat: error: cannot connect to {url}: connection refused"]
    assert result.stdout == ""
    assert elapsed < 15  # two quick retries (0.5 s, then 1 s), no long timeout


def test_the_url_can_come_from_the_environment():
    url = dead_port_url()
    command = [sys.executable, "-m", "chameleon_serve.cli", "chat", "hello", "--max-retries", "0"]
    env = {**os.environ, "CHAMELEON_SERVE_URL": url}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 3 and url in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["hello", "--image", "no-such-file.png"], "--image no-such-file.png: no such file"),
        (["hello", "--max-tokens", "0"], "argument --max-tokens: must be at least 1"),
        (["hello", "--text-only", "--image-only"], "not allowed with argument"),
        (["hello", "--cfg", "sometimes"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_before_contacting_any_server(args, message):
    result = chat(*args, "--url", dead_port_url())
    assert result.returncode == 2
    assert message in result.stderr


def test_an_image_that_is_not_an_image_is_a_usage_error(tmp_path: Path):
    fake = tmp_path / "fake.png"
    fake.write_text("not a picture")
    result = chat("hello", "--image", str(fake), "--url", dead_port_url())
    assert result.returncode == 2 and "not an image" in result.stderr


def test_an_empty_prompt_on_stdin_is_a_usage_error():
    result = chat("--url", dead_port_url(), stdin="")
    assert result.returncode == 2 and "prompt" in result.stderr


def test_help_documents_the_exit_codes():
    result = chat("--help")
    assert result.returncode == 0
    for line in ("0  success", "1  the server returned an error", "2  usage error", "3  connection error",
                 "4  authentication error"):  # fmt: skip
        assert line in result.stdout


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> Iterator[str]:
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")
    with live_server("--model", str(checkpoint), "--api-key", API_KEY, api_key=API_KEY) as server:
        yield server.url


@pytest.fixture
def api_key_in_environment(monkeypatch) -> None:
    monkeypatch.setenv("CHAMELEON_SERVE_API_KEY", API_KEY)


# ------------------------------------------------------------------------------------------ live server


def test_the_cli_streams_text_writes_its_pngs_and_exits_0(server_url, api_key_in_environment, tmp_path: Path):
    out = tmp_path / "out"
    result = chat("Draw a cat.", "--url", server_url, "--image-only", "--seed", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    written = sorted(out.glob("*.png"))
    assert [path.name for path in written] == ["image-0.png"]
    assert str(written[0]) in result.stdout.splitlines()
    with Image.open(written[0]) as image:
        assert image.format == "PNG" and image.size == IMAGE_SIZE
    assert "image 1: started" in result.stderr and "image 1: done" in result.stderr

    again = chat("Draw a cat.", "--url", server_url, "--image-only", "--seed", "4", "--out", str(out))
    assert again.returncode == 0 and (out / "image-1.png").read_bytes() == written[0].read_bytes()


def test_the_cli_json_document_lists_parts_with_image_paths_usage_and_finish_reason(server_url, api_key_in_environment, tmp_path: Path):
    result = chat("Draw a cat.", "--url", server_url, "--image-only", "--seed", "4", "--previews", "64",
                  "--out", str(tmp_path), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["finish_reason"] == "stop"
    (part,) = [part for part in document["parts"] if part["type"] == "image"]
    assert (part["width"], part["height"]) == IMAGE_SIZE
    assert Path(part["path"]).read_bytes().startswith(b"\x89PNG")
    assert document["usage"]["image_tokens"] >= SMALL_VQ.image_tokens
    assert not list(tmp_path.glob("*.preview.png"))  # previews are replaced by the final image


def test_the_cli_maps_server_errors_to_exit_codes(server_url, api_key_in_environment):
    bad = chat("hi", "--url", server_url, "--temperature", "-1")
    assert bad.returncode == 1
    assert bad.stderr.startswith("chameleon-serve chat: error: the server returned an error: 400 invalid_request_error")
    unauthorized = chat("hi", "--url", server_url, "--api-key", "wrong-key")
    assert unauthorized.returncode == 4 and "authentication failed" in unauthorized.stderr


def test_on_a_terminal_progress_is_one_line_rewritten_in_place_and_cleared(server_url, api_key_in_environment, tmp_path: Path):
    terminal, terminal_side = pty.openpty()  # stderr is a terminal; stdout stays a pipe
    command = [sys.executable, "-m", "chameleon_serve.cli", "chat", "Draw a cat.", "--url", server_url,
               "--image-only", "--seed", "4", "--out", str(tmp_path)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal_side)
    os.close(terminal_side)
    stdout, _ = process.communicate(timeout=240)
    shown = b""
    while True:
        try:
            data = os.read(terminal, 65536)
        except OSError:  # the other side is closed and everything was read
            break
        if not data:
            break
        shown += data
    os.close(terminal)
    assert process.returncode == 0
    assert stdout.decode().splitlines() == [str(tmp_path / "image-0.png")]
    counter_updates = re.findall(rb"\r\x1b\[Kimage 1: (\d+)/(\d+) tokens", shown)
    assert len(counter_updates) >= 2 and counter_updates[0][0] == b"0"
    assert shown.endswith(b"\r\x1b[K")  # the progress line is cleared once the image is written
    assert b"\n" not in shown  # one line, never scrolling
