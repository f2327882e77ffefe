"""Server life: readiness while the model loads, a text-only checkpoint, graceful shutdown, CLI errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from chameleon_serve.testing import write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def text_only_ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "textonly", with_vq_decoder=False, max_position_embeddings=4096)


def wait_for(predicate, timeout=60.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_ready_is_503_until_loaded_then_text_only_checkpoint_refuses_image_output(text_only_ckpt):
    with live_server("--model", str(text_only_ckpt), "--load-delay", "3", wait_ready=False) as server:
        # the socket is up before the model: liveness yes, readiness no, inference 503
        assert httpx.get(server.url + "/health").status_code == 200
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "loading" and ready.headers["retry-after"]
        early = httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO})
        assert early.status_code == 503 and early.json()["error"]["type"] == "service_unavailable"
        assert early.headers["retry-after"]

        assert wait_for(lambda: httpx.get(server.url + "/ready").status_code == 200)
        card = httpx.get(server.url + "/v1/models").json()["data"][0]
        assert card["output_modalities"] == ["text"] and card["image_size"] is None

        refused = [
            ("/v1/chat/completions", {"messages": HELLO, "modalities": ["image"]}),
            ("/v1/chat/completions", {"messages": HELLO, "modalities": ["text", "image"]}),
            ("/v1/images/generations", {"prompt": "a cat"}),
        ]
        for path, body in refused:
            r = httpx.post(server.url + path, json=body)
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "invalid_request_error" and "VQ image decoder" in error["message"]
        # the default modality follows the checkpoint: text
        ok = httpx.post(server.url + "/v1/chat/completions", json={"messages": HELLO, "max_tokens": 5}, timeout=60)
        assert ok.status_code == 200 and isinstance(ok.json()["choices"][0]["message"]["content"], str)
        assert "generates text;" in server.log() and "ready: http://127.0.0.1" in server.log()


def test_sigterm_lets_running_requests_finish_then_exits(text_only_ckpt):
    with live_server("--model", str(text_only_ckpt), "--shutdown-grace", "60") as server:
        body = {"prompt": "a", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert "text_completion" in first
            server.process.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]"
        assert json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"  # finished, not cut off
        # uvicorn re-raises the signal once shut down, so the exit status says "ended by SIGTERM"
        assert server.process.wait(30) in (0, -signal.SIGTERM)
        assert "engine stopped" in server.log()
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(server.url + "/health", timeout=2)


def test_sigterm_cancels_what_outlives_the_grace_period(text_only_ckpt):
    with live_server("--model", str(text_only_ckpt), "--shutdown-grace", "0.5") as server:
        body = {"prompt": "a", "max_tokens": 4000, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            server.process.send_signal(signal.SIGTERM)
            rest = [line[6:] for line in lines if line.startswith("data: ")]
        assert rest[-1] == "[DONE]"
        error = json.loads(rest[-2])["error"]
        assert error["type"] == "service_unavailable"
        assert server.process.wait(30) in (0, -signal.SIGTERM)


def test_serve_without_model_says_how_to_pass_one(tmp_path):
    missing = tmp_path / "nope"
    out = subprocess.run([sys.executable, "-m", "chameleon_serve.cli", "serve", "--model", str(missing)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no such file" in out.stderr


def test_model_that_fails_to_load_stops_the_server_with_status_1(tmp_path):
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    with pytest.raises(RuntimeError) as info:  # live_server reports the early exit with the log
        with live_server("--model", str(not_a_checkpoint)):
            pass
    assert "exited with status 1" in str(info.value) and "not a Chameleon checkpoint" in str(info.value)
