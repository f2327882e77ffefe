"""Typed exceptions for everything that can go wrong talking to a chameleon-serve server.

Every error the server sends has the body `{"error": {"message", "type", "param", "code"}}`
(docs/protocol.md, "Errors"); the exception raised for it carries those four fields and the HTTP
status. Errors without an HTTP status (the network failed, or the server reported an error inside
an event stream that had already started) are mapped by their `type` instead.

    APIError
    ├── BadRequestError            400 (and 422)  invalid_request_error
    ├── AuthenticationError        401            authentication_error
    ├── NotFoundError              404            not_found_error
    ├── RequestTooLargeError       413            request_too_large
    ├── RateLimitError             429            rate_limit_error      (retried)
    ├── ServerError                5xx            server_error
    │   └── ServiceUnavailableError 503           service_unavailable   (retried)
    └── APIConnectionError         no response: refused, reset, DNS, cut-off stream (retried)
        └── APITimeoutError        the request timed out
"""
from __future__ import annotations

import json
from typing import Any, Mapping


class APIError(Exception):
    """Base class of every error this client raises about the server or the connection to it.

    Attributes:
        message: the server's human-readable message (or a description of the local failure).
        type: the server's error type, e.g. "invalid_request_error"; None when it gave none.
        param: the request field at fault, when the server named one.
        code: a machine-readable code, e.g. "queue_full"; None when the server gave none.
        status_code: the HTTP status, or None when no HTTP response came back (connection errors,
            errors reported inside an event stream).
        retry_after: seconds the server asked the caller to wait (the `Retry-After` header).
    """

    def __init__(
        self,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.status_code = status_code
        self.retry_after = retry_after

    def __str__(self) -> str:
        prefix = f"{self.status_code} " if self.status_code is not None else ""
        kind = f"{self.type}: " if self.type else ""
        where = f" (param: {self.param})" if self.param else ""
        return f"{prefix}{kind}{self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(message={self.message!r}, type={self.type!r}, param={self.param!r}, "
            f"code={self.code!r}, status_code={self.status_code!r})"
        )


class BadRequestError(APIError):
    """400: the request is malformed or asks for something the server cannot do."""


class AuthenticationError(APIError):
    """401: the API key is missing or wrong."""


class NotFoundError(APIError):
    """404: unknown route or unknown model name."""


class RequestTooLargeError(APIError):
    """413: the body, an image's bytes or an image's pixel count is over the server's limit."""


class RateLimitError(APIError):
    """429: the server's queue is full (code "queue_full"); retried automatically."""


class ServerError(APIError):
    """5xx: the server failed (a bug, or it is not able to serve right now)."""


class ServiceUnavailableError(ServerError):
    """503: the model is not loaded yet, or the server is shutting down; retried automatically."""


class APIConnectionError(APIError):
    """No usable HTTP response: connection refused or reset, DNS failure, or a stream cut off early."""


class APITimeoutError(APIConnectionError):
    """The request did not complete within the client's timeout."""


# HTTP status -> exception class; other 4xx map to APIError, other 5xx to ServerError.
_CLASS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    413: RequestTooLargeError,
    422: BadRequestError,  # a validation error from a framework default handler
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# The server's error `type` -> exception class, for errors that arrive without a status.
_CLASS_BY_TYPE: dict[str, type[APIError]] = {
    "invalid_request_error": BadRequestError,
    "authentication_error": AuthenticationError,
    "not_found_error": NotFoundError,
    "request_too_large": RequestTooLargeError,
    "rate_limit_error": RateLimitError,
    "service_unavailable": ServiceUnavailableError,
    "server_error": ServerError,
}


def exception_class_for_status(status_code: int) -> type[APIError]:
    """The exception class for an HTTP error status."""
    if status_code in _CLASS_BY_STATUS:
        return _CLASS_BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    return APIError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import datetime, timezone
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    return max(0.0, seconds)


def error_from_payload(
    error: Mapping[str, Any] | None,
    *,
    status_code: int | None = None,
    retry_after: float | None = None,
    fallback_message: str = "unknown error",
) -> APIError:
    """Build the exception for a server error object `{"message", "type", "param", "code"}`.

    The HTTP status picks the class when there is one; otherwise the error's `type` does.
    """
    error = error or {}
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    if status_code is not None:
        cls = exception_class_for_status(status_code)
    else:
        cls = _CLASS_BY_TYPE.get(error_type or "", APIError)
    message = error.get("message")
    return cls(
        str(message) if message else fallback_message,
        type=error_type,
        param=_optional_str(error.get("param")),
        code=_optional_str(error.get("code")),
        status_code=status_code,
        retry_after=retry_after,
    )


def error_from_http(status_code: int, headers: Mapping[str, str], body: bytes, reason: str = "") -> APIError:
    """Build the exception for an HTTP error response from its status, headers and body bytes.

    Bodies that are not the protocol's JSON error (a proxy's HTML page, a framework's default
    `{"detail": ...}`) still give a useful message.
    """
    retry_after = parse_retry_after(headers.get("retry-after"))
    payload: Any = None
    try:
        payload = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        payload = None
    fallback = f"HTTP {status_code} {reason}".strip()
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return error_from_payload(payload["error"], status_code=status_code, retry_after=retry_after, fallback_message=fallback)
    if isinstance(payload, dict) and "detail" in payload:
        detail = payload["detail"]
        message = detail if isinstance(detail, str) else json.dumps(detail)
        return error_from_payload({"message": message}, status_code=status_code, retry_after=retry_after)
    text = body.decode("utf-8", errors="replace").strip()
    message = f"{fallback}: {text[:500]}" if text else fallback
    return error_from_payload({"message": message}, status_code=status_code, retry_after=retry_after)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)
