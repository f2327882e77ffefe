"""The one bridge between HTTP and the engine: submit a GenerationRequest, read its events.

`submit` turns the engine's refusals into HTTP errors (400 / 429 / 503) BEFORE any response byte is
sent, so a streaming request that cannot run still gets a proper status. `Generation.events()` then
yields the engine's events while it
- cancels the request in the engine when the client disconnects (its slot frees within one step),
- cancels it when the per-request timeout passes (504),
- records latency and token metrics.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from starlette.requests import Request

from chameleon_serve.engine import (
    Engine,
    EngineClosed,
    Error,
    Event,
    Finished,
    GenerationRequest,
    ImageDone,
    ImageProgress,
    ImageStarted,
    InvalidRequest,
    QueueFull,
    RequestHandle,
    TextDelta,
)
from chameleon_serve.server.errors import APIError, bad_request, not_ready, queue_full
from chameleon_serve.server.metrics import Metrics

log = logging.getLogger("chameleon_serve.server")

_LIVENESS_CHECK_S = 1.0


def submit(engine: Engine, request: GenerationRequest) -> RequestHandle:
    try:
        return engine.submit(request)
    except InvalidRequest as exc:
        raise bad_request(str(exc), exc.param) from None
    except QueueFull:
        raise queue_full() from None
    except EngineClosed:
        raise not_ready("The server is shutting down.") from None


class Generation:
    """One submitted request as seen from its HTTP handler."""

    def __init__(self, engine: Engine, handle: RequestHandle, http_request: Request, timeout_s: float, metrics: Metrics):
        self.engine = engine
        self.handle = handle
        self.http_request = http_request
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.submitted_at = time.monotonic()  # latency and the time limit count from here
        self.client_gone = False
        self.finished: Finished | None = None

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events up to (not including) Finished, which is kept in `self.finished`.

        Raises APIError for an engine error, a timeout, or a shutdown that cancelled the request.
        """
        watcher = asyncio.create_task(self._watch_disconnect())
        clock = _LatencyClock(self.metrics, self.submitted_at)
        stream = self.handle.stream()
        pending = asyncio.ensure_future(anext(stream))
        try:
            while True:
                event = await self._next(pending, clock)
                clock.observe(event)
                if isinstance(event, Finished):
                    self._finish(event)
                    return
                if isinstance(event, Error):
                    status = 400 if event.type == "invalid_request_error" else 500
                    raise APIError(status, event.message, type=event.type if status == 400 else "server_error")
                yield event
                pending = asyncio.ensure_future(anext(stream))
        finally:
            pending.cancel()
            watcher.cancel()
            if self.finished is None:  # timeout, disconnect, error or the caller stopped reading
                self.handle.cancel()
            self.metrics.e2e.observe(clock.elapsed())

    async def _next(self, pending: asyncio.Future, clock: "_LatencyClock") -> Event:
        """The next event; checks the deadline and that the engine still runs about once a second.

        (The pending read is never cancelled while waiting: cancelling it would close the stream.)
        """
        seen_stopped = False
        while True:
            remaining = self.timeout_s - clock.elapsed()
            if remaining <= 0:
                raise APIError(504, f"The request took longer than the server's limit of {self.timeout_s:g} s.", code="timeout")
            done, _ = await asyncio.wait({pending}, timeout=min(remaining, _LIVENESS_CHECK_S))
            if done:
                try:
                    return pending.result()
                except StopAsyncIteration:
                    raise APIError(500, "The engine ended the request without a result.") from None
            if not self.engine.is_running:
                # events emitted just before the stop may still be on their way: give them one more check
                if seen_stopped:
                    raise not_ready("The server shut down before this request finished.")
                seen_stopped = True

    def _finish(self, event: Finished) -> None:
        self.finished = event
        if event.finish_reason == "cancelled" and not self.client_gone:
            # not asked for by this client: the server is shutting down
            raise not_ready("The server shut down before this request finished.")
        self.metrics.record_usage(event.usage, event.images)

    async def _watch_disconnect(self) -> None:
        """Waits for the ASGI disconnect message, then cancels the request in the engine."""
        while True:
            message = await self.http_request.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                log.info("client disconnected: cancelling request %s", self.handle.request_id)
                self.handle.cancel()
                return


class _LatencyClock:
    """Time to first token, inter-token latency (per token, between output events) and end-to-end."""

    def __init__(self, metrics: Metrics, start: float):
        self.metrics = metrics
        self.start = self.last = start
        self.first_seen = False
        self.image_total: dict[int, int] = {}  # per image index
        self.image_done: dict[int, int] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def observe(self, event: Event) -> None:
        tokens = self._tokens_in(event)
        if tokens <= 0:
            return
        now = time.monotonic()
        if not self.first_seen:
            self.first_seen = True
            self.metrics.ttft.observe(now - self.start)
        else:
            self.metrics.itl.observe((now - self.last) / tokens)
        self.last = now

    def _tokens_in(self, event: Event) -> int:
        """Tokens this event reports as newly generated."""
        if isinstance(event, TextDelta):
            return len(event.token_ids)
        if isinstance(event, ImageStarted):
            self.image_total[event.index] = event.num_tokens
            self.image_done[event.index] = 0
            return 0
        if isinstance(event, (ImageProgress, ImageDone)):
            before = self.image_done.get(event.index, 0)
            now = event.tokens_done if isinstance(event, ImageProgress) else self.image_total.get(event.index, before)
            self.image_done[event.index] = now
            return now - before
        return 0
