"""OpenAI-style errors: every failure leaves the server as {"error": {message, type, param, code}}.

Route code raises `APIError` (or one of its helpers); the handlers installed by `install_error_handlers`
turn it, FastAPI's validation errors, unknown routes and unexpected exceptions into that body with
the status the protocol (docs/protocol.md) gives.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("chameleon_serve.server")

# error type per HTTP status, as in docs/protocol.md
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, for a human.")
    type: str = Field(description="Error class: invalid_request_error, authentication_error, not_found_error, ...")
    param: str | None = Field(None, description="The request field at fault, e.g. `messages[0].content[1]`.")
    code: str | None = Field(None, description="Machine-readable detail, e.g. `queue_full`, `model_not_found`.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class APIError(Exception):
    """An error answer. `headers` carries e.g. Retry-After."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.detail = ErrorDetail(message=message, type=type or ERROR_TYPES.get(status, "server_error"), param=param, code=code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=self.detail).model_dump()

    def body_json(self) -> str:
        return json.dumps(self.body())

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(413, message, param=param, code="too_large")


def not_ready(message: str, retry_after_s: int = 5) -> APIError:
    return APIError(503, message, code="not_ready", headers={"Retry-After": str(retry_after_s)})


def queue_full(retry_after_s: int = 1) -> APIError:
    return APIError(
        429,
        "The server is at capacity (all slots busy and the queue is full); retry later.",
        code="queue_full",
        headers={"Retry-After": str(retry_after_s)},
    )


def model_not_found(requested: str, served: str) -> APIError:
    return APIError(404, f"The model `{requested}` does not exist; this server serves `{served}`.", param="model", code="model_not_found")


# Documented on every route (FastAPI's default 422 schema is replaced by these).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": desc}
    for status, desc in {
        400: "Invalid request: malformed JSON, wrong types or values, bad images, unsupported fields.",
        401: "Missing or wrong API key.",
        404: "Unknown model.",
        413: "Body, image bytes or image pixels over the limit.",
        429: "Queue full; see Retry-After.",
        503: "Model not loaded yet, or shutting down; see Retry-After.",
    }.items()
}


def param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content"."""
    parts = [p for p in loc if p != "body"]
    # pydantic puts the name of the union branch it tried into loc ("str", "list[...]", function-after...)
    parts = [p for p in parts if not (isinstance(p, str) and _is_union_tag(p))]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _is_union_tag(name: str) -> bool:
    # union branch names pydantic inserts: "str", "list[int]", "function-after[...]", our part tags "text_part"
    return "[" in name or name.endswith("_part") or name in {"str", "int", "float", "bool", "none", "dict", "list"}


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's 422 as a 400 that names the field."""
    errors = list(exc.errors())
    if not errors:
        return bad_request("Invalid request.")
    # the most specific error (deepest field) is the most useful one to report
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = first.get("ctx", {}).get("error", "")
        return bad_request(f"The request body is not valid JSON ({reason}).", code="invalid_json")
    param = param_from_loc(tuple(first.get("loc", ())))
    if kind == "extra_forbidden":
        # the message OpenAI itself gives for a field it does not know
        return bad_request(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if kind == "missing" and param is None:
        return bad_request("The request body is missing; send a JSON object.", code="missing_body")
    if kind == "missing":
        return bad_request(f"`{param}` is required.", param=param, code="missing_required_parameter")
    # a value matching no branch of a union gets one error per branch: say all of them
    same_field = [e for e in errors if param_from_loc(tuple(e.get("loc", ()))) == param]
    messages = dict.fromkeys(str(e.get("msg", "invalid value")).removeprefix("Value error, ") for e in same_field)
    message = " or ".join(messages)
    where = f"`{param}`: " if param else ""
    return bad_request(f"Invalid value for {where}{message}", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err = APIError(404, f"Unknown route: {request.method} {request.url.path}", code="unknown_route")
        else:
            err = APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
        return err.response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return APIError(500, f"Internal server error ({type(exc).__name__}).").response()

