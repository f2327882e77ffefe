"""Server-sent events: framing, and a response that turns a failure mid-stream into an error event."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel
from starlette.responses import StreamingResponse

from chameleon_serve.server.errors import APIError
from chameleon_serve.server.metrics import Metrics

log = logging.getLogger("chameleon_serve.server")

DONE = "data: [DONE]\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of tokens


def event(payload: BaseModel | str, name: str | None = None) -> str:
    """One SSE event. Models are dumped without the fields left unset (so deltas stay small)."""
    data = payload if isinstance(payload, str) else payload.model_dump_json(exclude_unset=True)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {data}\n\n"


def stream(events: AsyncIterator[str], metrics: Metrics, *, done_marker: bool = True, error_event: str | None = None) -> StreamingResponse:
    """A text/event-stream response. An APIError after the first byte becomes `data: {"error": ...}`
    (named `error_event` when given), then `data: [DONE]` when `done_marker`."""

    async def body() -> AsyncIterator[str]:
        try:
            async for chunk in events:
                yield chunk
        except APIError as err:
            metrics.errors.labels(err.detail.type).inc()
            yield event(err.body_json(), error_event)
        except Exception as exc:  # a bug: the client still gets a well-formed end of stream
            log.exception("streaming failed")
            err = APIError(500, f"Internal server error ({type(exc).__name__}).")
            metrics.errors.labels(err.detail.type).inc()
            yield event(err.body_json(), error_event)
        if done_marker:
            yield DONE

    return StreamingResponse(body(), media_type="text/event-stream", headers=HEADERS)
