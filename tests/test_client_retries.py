"""Error mapping and the retry policy.

A live server cannot be made to answer 429 or 503 on demand, so these tests put an in-process
`httpx.MockTransport` under the real `Client`/`AsyncClient` and count the attempts it sees. Errors a
live server can produce (400, 401, 404, 413) are tested against one in test_client_live.py.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from chameleon_serve.clients import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    TextDelta,
)
from chameleon_serve.clients.errors import error_from_http, parse_retry_after

BASE_URL = "http://server.test"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def text_answer(text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "tiny",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ScriptedServer:
    """Answers requests from a script of responses (the last one repeats) and records every attempt."""

    def __init__(self, *responses: Callable[[httpx.Request], httpx.Response]) -> None:
        self.responses = list(responses)
        self.attempts: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts.append((time.monotonic(), request))
        respond = self.responses[min(len(self.attempts), len(self.responses)) - 1]
        return respond(request)

    def gaps(self) -> list[float]:
        times = [t for t, _ in self.attempts]
        return [later - earlier for earlier, later in zip(times, times[1:])]

    def client(self, **options) -> Client:
        return Client(BASE_URL, http_client=httpx.Client(transport=httpx.MockTransport(self)), **options)

    def async_client(self, **options) -> AsyncClient:
        return AsyncClient(BASE_URL, http_client=httpx.AsyncClient(transport=httpx.MockTransport(self)), **options)


def queue_full(retry_after: str | None = None) -> Callable[[httpx.Request], httpx.Response]:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = error_body("the queue is full", "rate_limit_error", code="queue_full")
    return lambda request: httpx.Response(429, json=body, headers=headers)


def loading(request: httpx.Request) -> httpx.Response:
    return httpx.Response(503, json=error_body("model not loaded yet", "service_unavailable"))


def refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused", request=request)


def answered(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=text_answer("hello"))


# ------------------------------------------------------------------------------------------ mapping


@pytest.mark.parametrize(
    "status, error_type, exception",
    [
        (400, "invalid_request_error", BadRequestError),
        (401, "authentication_error", AuthenticationError),
        (404, "not_found_error", NotFoundError),
        (413, "request_too_large", RequestTooLargeError),
        (429, "rate_limit_error", RateLimitError),
        (500, "server_error", ServerError),
        (502, "server_error", ServerError),
        (503, "service_unavailable", ServiceUnavailableError),
        (418, "teapot", APIError),
    ],
)
def test_each_status_maps_to_its_exception_carrying_the_servers_fields(status, error_type, exception):
    server = ScriptedServer(lambda request: httpx.Response(status, json=error_body("why", error_type, "field", "a_code")))
    with server.client(max_retries=0) as client, pytest.raises(exception) as raised:
        client.chat("hi")
    error = raised.value
    assert type(error) is exception
    assert (error.message, error.type, error.param, error.code, error.status_code) == ("why", error_type, "field", "a_code", status)


def test_non_protocol_error_bodies_still_give_a_message():
    html = error_from_http(502, {}, b"<html>Bad Gateway</html>", "Bad Gateway")
    assert isinstance(html, ServerError) and "Bad Gateway" in html.message and html.status_code == 502
    detail = error_from_http(422, {}, json.dumps({"detail": "field required"}).encode())
    assert isinstance(detail, BadRequestError) and detail.message == "field required"


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


# ------------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize("failure", [queue_full(), loading, refused], ids=["429", "503", "connection-refused"])
def test_retryable_failures_are_retried_max_retries_times_then_raised(failure):
    server = ScriptedServer(failure)
    with server.client(max_retries=3, retry_backoff=0.001) as client, pytest.raises((RateLimitError, ServiceUnavailableError, APIConnectionError)):
        client.chat("hi")
    assert len(server.attempts) == 1 + 3


def test_a_retry_that_succeeds_returns_the_answer():
    server = ScriptedServer(loading, queue_full(), answered)
    with server.client(max_retries=2, retry_backoff=0.001) as client:
        assert client.chat("hi").text == "hello"
    assert len(server.attempts) == 3


def test_the_default_is_two_retries_and_zero_disables_them():
    server = ScriptedServer(loading)
    with server.client(retry_backoff=0.001) as client, pytest.raises(ServiceUnavailableError):
        client.models()
    assert len(server.attempts) == 3
    server = ScriptedServer(loading)
    with server.client(max_retries=0) as client, pytest.raises(ServiceUnavailableError):
        client.models()
    assert len(server.attempts) == 1


@pytest.mark.parametrize(
    "failure",
    [
        lambda request: httpx.Response(400, json=error_body("bad", "invalid_request_error")),
        lambda request: httpx.Response(500, json=error_body("bug", "server_error")),
    ],
    ids=["400", "500"],
)
def test_other_errors_are_never_retried(failure):
    server = ScriptedServer(failure)
    with server.client(max_retries=5, retry_backoff=0.001) as client, pytest.raises(APIError):
        client.chat("hi")
    assert len(server.attempts) == 1


def test_timeouts_are_not_retried_because_the_server_may_still_be_working():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    server = ScriptedServer(slow)
    with server.client(max_retries=5, retry_backoff=0.001) as client, pytest.raises(APITimeoutError):
        client.chat("hi")
    assert len(server.attempts) == 1


def test_backoff_doubles_and_retry_after_is_honoured():
    server = ScriptedServer(loading, loading, answered)
    with server.client(max_retries=2, retry_backoff=0.1) as client:
        client.chat("hi")
    first_wait, second_wait = server.gaps()
    # Lower bounds are exact; upper bounds leave room for a busy machine.
    assert 0.1 <= first_wait < 0.6 and 0.2 <= second_wait < 0.8

    server = ScriptedServer(queue_full(retry_after="0.3"), answered)
    with server.client(max_retries=1, retry_backoff=0.0) as client:
        client.chat("hi")
    assert 0.3 <= server.gaps()[0] < 0.8  # without Retry-After this wait would be ~0


def test_the_policy_caps_waits():
    policy = RetryPolicy(max_retries=10, backoff=1.0, max_backoff=4.0, max_retry_after=5.0, jitter=0.0)
    assert [policy.delay_before_retry(n, ServiceUnavailableError("x")) for n in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert policy.delay_before_retry(0, RateLimitError("x", retry_after=3600)) == 5.0
    assert policy.delay_before_retry(10, RateLimitError("x")) is None


def test_async_client_follows_the_same_policy():
    server = ScriptedServer(queue_full(), refused, answered)

    async def ask() -> str:
        async with server.async_client(max_retries=2, retry_backoff=0.001) as client:
            return (await client.chat("hi")).text

    assert asyncio.run(ask()) == "hello"
    assert len(server.attempts) == 3

    server = ScriptedServer(loading)

    async def ask_until_it_gives_up() -> None:
        async with server.async_client(max_retries=1, retry_backoff=0.001) as client:
            await client.chat("hi")

    with pytest.raises(ServiceUnavailableError):
        asyncio.run(ask_until_it_gives_up())
    assert len(server.attempts) == 2


# ------------------------------------------------------------------------------------------ streams


class BreaksAfterFirstChunk(httpx.SyncByteStream):
    """A response body that delivers one SSE event, then the connection drops."""

    def __iter__(self) -> Iterator[bytes]:
        chunk = {"id": "c", "model": "tiny", "choices": [{"index": 0, "delta": {"content": "Once"}}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        raise httpx.ReadError("connection reset by peer")


def test_a_stream_is_retried_before_its_first_byte_but_never_after():
    broken = lambda request: httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=BreaksAfterFirstChunk())  # noqa: E731
    server = ScriptedServer(loading, broken)
    received = []
    with server.client(max_retries=5, retry_backoff=0.001) as client, pytest.raises(APIConnectionError, match="reset"):
        for event in client.stream("tell me a story"):
            received.append(event)
    assert received == [TextDelta("Once")]
    assert len(server.attempts) == 2  # one 503 retried; the broken stream is not
