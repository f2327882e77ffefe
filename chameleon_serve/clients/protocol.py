"""The protocol itself, without any I/O: shared by the sync `Client` and the async `AsyncClient`.

- configuration: base URL, API key and headers (arguments, else the environment);
- request bodies for /v1/chat/completions and /v1/images/generations;
- parsing a `chat.completion` into a `ChatResponse`;
- `ChunkTranslator`: `chat.completion.chunk` objects to typed stream events;
- `RetryPolicy`: which failures are retried, and how long to wait before each retry.

The transports (client.py, async_client.py) only move bytes and sleep; every decision is here.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import httpx

from .errors import APIConnectionError, APIError, APITimeoutError, RateLimitError, ServiceUnavailableError, error_from_payload
from .events import Finished, ImageDone, ImageProgress, ImageStarted, StreamEvent, TextDelta
from .inputs import ImageInput, Message, build_messages
from .responses import ChatResponse, ImagePart, Part, Usage, append_text
from .sse import SSEDecoder

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
BASE_URL_ENV = "CHAMELEON_SERVE_URL"
API_KEY_ENV = "CHAMELEON_SERVE_API_KEY"
# Generating an image on a CPU can take minutes; the read timeout bounds the wait for each chunk
# of a stream, or for the whole answer without streaming. Connecting should be quick.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
MAX_CONNECT_TIMEOUT = 10.0


def make_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """Seconds -> an `httpx.Timeout` for reads and writes, with connecting capped at 10 s (an
    unreachable host should fail fast even when answers may take minutes). A Timeout is used as is."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout, connect=min(timeout, MAX_CONNECT_TIMEOUT))

CHAT_PATH = "/v1/chat/completions"
IMAGES_PATH = "/v1/images/generations"
MODELS_PATH = "/v1/models"
HEALTH_PATH = "/health"
READY_PATH = "/ready"

MODALITY_ALIASES: dict[str, list[str]] = {
    "text": ["text"],
    "image": ["image"],
    "interleaved": ["text", "image"],
    "text+image": ["text", "image"],
}


def resolve_base_url(base_url: str | None) -> str:
    """The argument, else $CHAMELEON_SERVE_URL, else http://127.0.0.1:8000; without a trailing slash."""
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def resolve_api_key(api_key: str | None) -> str | None:
    """The argument, else $CHAMELEON_SERVE_API_KEY, else None (no Authorization header)."""
    return api_key if api_key is not None else (os.environ.get(API_KEY_ENV) or None)


def client_version() -> str:
    """The installed chameleon-serve version, for the User-Agent header."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("chameleon-serve")
    except PackageNotFoundError:
        return "unknown"


def default_headers(api_key: str | None) -> dict[str, str]:
    headers = {"User-Agent": f"chameleon-serve-client/{client_version()}", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------


@dataclass
class ImageOptions:
    """Image-generation settings: the protocol's `image` extension. Fields left None use the server's defaults.

    cfg: "none", "plain" (uses `guidance_scale`) or "text_image" (uses `guidance_scale_text` and
    `guidance_scale_image`). max_images caps the images in one answer. preview_every asks for a
    partial preview every K image tokens (streaming only; 0 = none).
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    cfg: str | None = None
    guidance_scale: float | None = None
    guidance_scale_text: float | None = None
    guidance_scale_image: float | None = None
    max_images: int | None = None
    preview_every: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {name: value for name, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class RequestSpec:
    """An HTTP request to make: method, path below the base URL, and JSON body."""

    method: str
    path: str
    json: dict[str, Any] | None = None
    stream: bool = False


def normalize_modalities(modalities: str | Sequence[str] | None) -> list[str] | None:
    """"text", "image", "interleaved" or a list like ["text", "image"] -> the protocol's list."""
    if modalities is None:
        return None
    if isinstance(modalities, str):
        key = modalities.strip().lower()
        if key not in MODALITY_ALIASES:
            raise ValueError(f"modalities must be one of {sorted(MODALITY_ALIASES)} or a list, got {modalities!r}")
        return list(MODALITY_ALIASES[key])
    listed = [str(m) for m in modalities]
    unknown = [m for m in listed if m not in ("text", "image")]
    if unknown or not listed:
        raise ValueError(f"modalities lists 'text' and/or 'image', got {listed!r}")
    return listed


def build_chat_request(
    messages: str | Sequence[Message],
    *,
    stream: bool,
    images: Sequence[ImageInput] | None = None,
    system: str | None = None,
    modalities: str | Sequence[str] | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    repetition_penalty: float | None = None,
    image: ImageOptions | Mapping[str, Any] | None = None,
    model: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> RequestSpec:
    """The POST /v1/chat/completions request; arguments left None are not sent (server defaults apply)."""
    body: dict[str, Any] = {"messages": build_messages(messages, images, system)}
    optional = {
        "model": model,
        "modalities": normalize_modalities(modalities),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": [stop] if isinstance(stop, str) else (list(stop) if stop is not None else None),
        "repetition_penalty": repetition_penalty,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    image_options = image.to_dict() if isinstance(image, ImageOptions) else dict(image or {})
    if image_options:
        body["image"] = image_options
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(extra_body or {})
    return RequestSpec("POST", CHAT_PATH, body, stream=stream)


def build_image_request(
    prompt: str,
    *,
    size: str | tuple[int, int] | None = None,
    n: int = 1,
    model: str | None = None,
    extra_body: Mapping[str, Any] | None = None,
) -> RequestSpec:
    """The POST /v1/images/generations request. `size` is "WxH", (W, H) or "auto"/None."""
    body: dict[str, Any] = {"prompt": prompt, "n": n, "response_format": "b64_json"}
    if model is not None:
        body["model"] = model
    if size is not None:
        body["size"] = f"{size[0]}x{size[1]}" if isinstance(size, tuple) else size
    body.update(extra_body or {})
    return RequestSpec("POST", IMAGES_PATH, body)


# ----------------------------------------------------------------------------------------------
# Responses
# ----------------------------------------------------------------------------------------------


def decode_json_body(content: bytes, what: str) -> Any:
    try:
        return json.loads(content)
    except ValueError as error:
        raise APIError(f"the server sent a {what} that is not JSON: {content[:200]!r}") from error


def parse_chat_completion(body: Mapping[str, Any]) -> ChatResponse:
    """A `chat.completion` object -> ChatResponse (content as a string, or an ordered list of parts)."""
    choices = body.get("choices") or []
    if not choices:
        raise APIError("the server's chat.completion has no choices")
    choice = choices[0]
    content = (choice.get("message") or {}).get("content")
    parts: list[Part] = []
    if isinstance(content, str):
        append_text(parts, content)
    elif isinstance(content, list):
        for item in content:
            if item.get("type") == "text":
                append_text(parts, item.get("text") or "")
            elif item.get("type") == "image_url":
                parts.append(ImagePart.from_data_url(_image_url(item)))
    usage = body.get("usage")
    return ChatResponse(
        parts=parts,
        finish_reason=choice.get("finish_reason"),
        usage=Usage.from_api(usage) if usage else None,
        id=body.get("id"),
        model=body.get("model"),
    )


def parse_image_generation(body: Mapping[str, Any]) -> list[ImagePart]:
    """An images API response `{"data": [{"b64_json": ...}, ...]}` -> its images, in order."""
    return [ImagePart.from_base64(item["b64_json"]) for item in body.get("data") or []]


@dataclass(frozen=True)
class ModelInfo:
    """One served model from GET /v1/models."""

    id: str
    owned_by: str | None = None
    created: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_models(body: Mapping[str, Any]) -> list[ModelInfo]:
    return [
        ModelInfo(id=item["id"], owned_by=item.get("owned_by"), created=item.get("created"), raw=dict(item))
        for item in body.get("data") or []
    ]


def _image_url(part: Mapping[str, Any]) -> str:
    image_url = part.get("image_url")
    return image_url.get("url") if isinstance(image_url, Mapping) else str(image_url)


# ----------------------------------------------------------------------------------------------
# Streaming
# ----------------------------------------------------------------------------------------------


class ChunkTranslator:
    """Turns the SSE byte stream of a streamed chat into typed events, in order.

    Feed it raw bytes as they arrive (`feed`), then call `close` when the body ends. It records the
    response `id` and `model` from the chunks. `Finished` is held back until the stream ends so that
    `Usage` (sent after the finish chunk) comes before it and `Finished` is always last. An error
    sent inside the stream is raised as the matching `APIError`; a stream that ends before its
    finish chunk raises `APIConnectionError`.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._started_images: set[int] = set()
        self._finish_reason: str | None = None
        self._usage: Usage | None = None
        self._done = False
        self.id: str | None = None
        self.model: str | None = None

    @property
    def done(self) -> bool:
        """True once `data: [DONE]` arrived (all events have been returned)."""
        return self._done

    def feed(self, data: bytes) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for message in self._sse.feed(data):
            events.extend(self._on_message(message.data))
        return events

    def close(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for message in self._sse.close():
            # An event without its closing blank line: a whole one is still used, a cut one is not.
            if not _is_complete_event(message.data):
                raise APIConnectionError("the server closed the stream before the answer was finished (mid-event)")
            events.extend(self._on_message(message.data))
        if not self._done:
            if self._finish_reason is None:
                raise APIConnectionError("the server closed the stream before the answer was finished")
            events.extend(self._finish())
        return events

    def _on_message(self, data: str) -> list[StreamEvent]:
        if self._done:
            return []
        if data.strip() == "[DONE]":
            if self._finish_reason is None:
                raise APIConnectionError("the stream ended ([DONE]) without a finish reason")
            return self._finish()
        try:
            chunk = json.loads(data)
        except ValueError as error:
            raise APIError(f"the server sent a stream event that is not JSON: {data[:200]!r}") from error
        if isinstance(chunk, dict) and "error" in chunk:
            raise error_from_payload(chunk["error"], fallback_message="the server reported an error mid-stream")
        return list(self._on_chunk(chunk))

    def _on_chunk(self, chunk: Mapping[str, Any]) -> Iterator[StreamEvent]:
        self.id = self.id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                yield TextDelta(text)
            progress = delta.get("image_progress")
            if progress:
                yield from self._on_image_progress(progress)
            for image in delta.get("images") or []:
                index = int(image.get("index", len(self._started_images)))
                yield ImageDone(index=index, image=ImagePart.from_data_url(_image_url(image)))
            if choice.get("finish_reason"):
                self._finish_reason = choice["finish_reason"]
        if chunk.get("usage"):
            self._usage = Usage.from_api(chunk["usage"])

    def _on_image_progress(self, progress: Mapping[str, Any]) -> Iterator[StreamEvent]:
        index = int(progress["index"])
        tokens_done = int(progress.get("tokens_done", 0))
        num_tokens = int(progress.get("num_tokens", 0))
        preview_url = progress.get("preview_url")
        if index not in self._started_images:
            self._started_images.add(index)
            yield ImageStarted(
                index=index, width=int(progress.get("width", 0)), height=int(progress.get("height", 0)), num_tokens=num_tokens
            )
            if tokens_done == 0 and not preview_url:
                return
        yield ImageProgress(
            index=index,
            tokens_done=tokens_done,
            num_tokens=num_tokens,
            preview=ImagePart.from_data_url(preview_url) if preview_url else None,
        )

    def _finish(self) -> list[StreamEvent]:
        self._done = True
        events: list[StreamEvent] = [self._usage] if self._usage is not None else []
        events.append(Finished(self._finish_reason or "stop"))
        return events


def _is_complete_event(data: str) -> bool:
    if data.strip() == "[DONE]":
        return True
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Retries
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Retry on connection failures, 429 and 503, with exponential backoff, at most `max_retries` times.

    The wait before retry number r (1-based) is `backoff * 2**(r-1)`, capped at `max_backoff`, with up
    to `jitter` (a fraction) added at random; when the server sent `Retry-After`, that wait is used
    instead (capped at `max_retry_after`). Timeouts are not retried: the server may still be working
    on the request. A stream is never retried once its first byte arrived (the transports see to it).
    """

    max_retries: int = 2
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff times must be >= 0")

    @staticmethod
    def is_retryable(error: APIError) -> bool:
        if isinstance(error, APITimeoutError):
            return False
        return isinstance(error, (APIConnectionError, RateLimitError, ServiceUnavailableError))

    def delay_before_retry(self, retries_done: int, error: APIError) -> float | None:
        """Seconds to wait before the next attempt, or None to give up and raise `error`.

        `retries_done` is how many retries already happened (0 after the first attempt failed).
        """
        if retries_done >= self.max_retries or not self.is_retryable(error):
            return None
        if error.retry_after is not None:
            return min(error.retry_after, self.max_retry_after)
        delay = min(self.backoff * (2**retries_done), self.max_backoff)
        return delay * (1.0 + self.jitter * random.random())


def connection_error_from_httpx(error: httpx.TransportError, url: str) -> APIConnectionError:
    """An httpx transport failure -> APITimeoutError or APIConnectionError, naming the URL."""
    if isinstance(error, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out ({type(error).__name__})")
    reason = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError):
        lowered = reason.lower()
        reason = "connection refused" if "refused" in lowered or "errno 111" in lowered else reason
        return APIConnectionError(f"cannot connect to {url}: {reason}")
    return APIConnectionError(f"connection to {url} failed: {reason}")
