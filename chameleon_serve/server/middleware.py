"""Pure ASGI middleware: checks that must happen before a request body is read.

- `AuthMiddleware`: Bearer API keys on every route but /health, before the body is read (an
  unauthenticated client cannot make us buffer anything).
- `BodyLimitMiddleware`: refuses a body over the limit from its Content-Length, and counts the bytes of
  a body without one (chunked) while it arrives, so a huge body is never held in memory.
- `MetricsMiddleware`: counts answers by route and status.
- `JSONBodyMiddleware`: API bodies are JSON whatever Content-Type the client forgot to set.
"""
from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chameleon_serve.server.errors import APIError, too_large
from chameleon_serve.server.metrics import Metrics

PUBLIC_PATHS = frozenset({"/health"})


class AuthMiddleware:
    def __init__(self, app: ASGIApp, api_keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        token = _bearer_token(scope)
        if token is None:
            error = APIError(401, "Missing API key: send `Authorization: Bearer <key>`.", code="missing_api_key")
        elif not self._known(token):
            error = APIError(401, "Incorrect API key provided.", code="invalid_api_key")
        else:
            return await self.app(scope, receive, send)
        error.headers["WWW-Authenticate"] = "Bearer"
        await error.response()(scope, receive, send)

    def _known(self, token: bytes) -> bool:
        # compare against every key, without early exit, in constant time per key
        found = False
        for key in self.keys:
            found |= hmac.compare_digest(token, key)
        return found


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return await self._refuse(scope, receive, send)
        body = await self._read_capped(receive)
        if body is None:
            return await self._refuse(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    async def _read_capped(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # client went away: the app sees an empty body and its own disconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = too_large(f"Request body is larger than the limit of {self.max_body_bytes} bytes.")
        error.headers["Connection"] = "close"  # the rest of the body is not read
        await error.response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """A receive() that gives the buffered body once, then passes through (to see the disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes  # known paths only, so unknown URLs cannot blow up label cardinality

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in self.routes else "other"

        async def send_and_count(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.record_response(route, message["status"])
            await send(message)

        await self.app(scope, receive, send_and_count)


class JSONBodyMiddleware:
    """Reads every POST body under /v1/ as JSON.

    `curl -d` sends `application/x-www-form-urlencoded` and some clients send `text/plain` or nothing;
    the API only takes JSON, so the body is parsed as JSON (and a body that is not JSON gets the usual
    clear 400) instead of failing with a confusing "not a dictionary" error.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)
