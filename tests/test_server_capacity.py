"""Capacity: a full queue answers 429, a client that goes away frees its slot, slow requests time out.

One server with a single engine slot and a single queue place; long requests are completions with
`ignore_eos` on a model big enough that thousands of tokens take seconds.
"""
from __future__ import annotations

import time

import httpx
import pytest

from chameleon_serve.testing import write_random_checkpoint

try:  # works whether or not tests/ is a package
    from .live_server import live_server
except ImportError:
    from live_server import live_server

LONG = {"prompt": "once upon a time", "max_tokens": 4000, "ignore_eos": True}
TIMEOUT_S = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt = write_random_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "slow", hidden_size=256, num_layers=4, max_position_embeddings=4096, vq=None
    )
    args = ["--model", str(ckpt), "--max-sequences", "1", "--max-queue", "1", "--request-timeout", str(TIMEOUT_S)]
    with live_server(*args) as s:
        yield s


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    raise KeyError(name)


def wait_for(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_full_queue_is_429_and_disconnect_frees_slots(server):
    url = server.url
    tokens_before = metric(url, 'chameleon_generation_tokens_total{modality="text"}')
    with httpx.Client(timeout=60) as running, httpx.Client(timeout=60) as waiting:
        with running.stream("POST", url + "/v1/completions", json={**LONG, "stream": True}) as first:
            assert first.status_code == 200
            assert wait_for(lambda: metric(url, "chameleon_requests_running") == 1)
            with waiting.stream("POST", url + "/v1/completions", json={**LONG, "stream": True}) as second:
                assert second.status_code == 200
                assert wait_for(lambda: metric(url, "chameleon_requests_waiting") == 1)

                third = httpx.post(url + "/v1/completions", json={**LONG, "max_tokens": 5})
                assert third.status_code == 429
                assert third.json()["error"]["type"] == "rate_limit_error" and third.json()["error"]["code"] == "queue_full"
                assert int(third.headers["retry-after"]) >= 1
                streamed = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True})
                assert streamed.status_code == 429  # refused before the stream starts, with a real status
        # both clients are gone (connections closed): the running one is cancelled within a step and
        # the queued one leaves the queue
        assert wait_for(lambda: metric(url, "chameleon_requests_running") == 0 and metric(url, "chameleon_requests_waiting") == 0, 10)
    generated = metric(url, 'chameleon_generation_tokens_total{modality="text"}') - tokens_before
    assert generated < LONG["max_tokens"]  # it stopped early: cancelled, not finished
    ok = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3}, timeout=60)
    assert ok.status_code == 200  # the freed slot serves the next request


def test_request_over_the_time_limit_is_504_and_cancelled(server):
    started = time.monotonic()
    r = httpx.post(server.url + "/v1/completions", json=LONG, timeout=60)
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 10
    assert wait_for(lambda: metric(server.url, "chameleon_requests_running") == 0, 10)


def test_non_streaming_client_that_gives_up_frees_its_slot(server):
    url = server.url
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=LONG, timeout=httpx.Timeout(60, read=1.5))
    # the server notices the closed connection (ASGI disconnect) and cancels well before the time limit
    assert wait_for(lambda: metric(url, "chameleon_requests_running") == 0, TIMEOUT_S / 2)
