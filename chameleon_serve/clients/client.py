"""`Client`: the synchronous client. Every protocol decision lives in protocol.py; this file moves bytes."""
from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Sequence

import httpx

from .errors import APIConnectionError, APIError, APITimeoutError, error_from_http
from .events import StreamEvent, collect_stream
from .inputs import ImageInput, Message
from .protocol import (
    DEFAULT_TIMEOUT,
    HEALTH_PATH,
    MODELS_PATH,
    READY_PATH,
    ChunkTranslator,
    ImageOptions,
    ModelInfo,
    RequestSpec,
    RetryPolicy,
    build_chat_request,
    build_image_request,
    connection_error_from_httpx,
    decode_json_body,
    default_headers,
    make_timeout,
    parse_chat_completion,
    parse_image_generation,
    parse_models,
    resolve_api_key,
    resolve_base_url,
)
from .responses import ChatResponse, ImagePart


class Client:
    """Talks to a chameleon-serve server (or any server speaking docs/protocol.md).

        with Client() as client:                      # $CHAMELEON_SERVE_URL or http://127.0.0.1:8000
            answer = client.chat("draw a cat and describe it", seed=1)
            print(answer.text)
            for i, image in enumerate(answer.images):
                image.save(f"cat-{i}.png")

    Args:
        base_url: the server, e.g. "http://127.0.0.1:8000"; default $CHAMELEON_SERVE_URL, else that.
        api_key: sent as `Authorization: Bearer`; default $CHAMELEON_SERVE_API_KEY, else none.
        timeout: seconds (or an `httpx.Timeout`) to wait for an answer; for streams, for each chunk.
            Connecting is capped at 10 s unless an `httpx.Timeout` says otherwise.
        max_retries: retries after connection errors, 429 and 503 (so at most 1 + max_retries attempts).
        retry_backoff: the first retry's wait in seconds; it doubles each retry. `Retry-After` wins.
        http_client: an `httpx.Client` to use instead of a new one (it is not closed by `close()`).
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff=retry_backoff)
        self._owns_http_client = http_client is None
        self.timeout = make_timeout(timeout)
        self._http = http_client if http_client is not None else httpx.Client(timeout=self.timeout)
        self._headers = default_headers(self.api_key)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._owns_http_client:
            self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- chat -----------------------------------------------------------------------------------

    def chat(
        self,
        messages: str | Sequence[Message],
        *,
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
    ) -> ChatResponse:
        """Ask for one answer and wait for all of it.

        messages: a prompt string, or OpenAI-style message dicts (content may hold PIL images, bytes
            or Paths: they are encoded for you). images: appended to the last user message.
        modalities: "text", "image" (exactly one image), "interleaved", or a list such as ["text"].
        image: image-generation settings (`ImageOptions`). Arguments left None use the server's defaults.
        Returns the answer with its text and image parts in order. Raises an `APIError` subclass.
        """
        spec = build_chat_request(
            messages, stream=False, images=images, system=system, modalities=modalities, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
            repetition_penalty=repetition_penalty, image=image, model=model, extra_body=extra_body,
        )  # fmt: skip
        return parse_chat_completion(self._request_json(spec, "chat.completion"))

    def stream(
        self,
        messages: str | Sequence[Message],
        *,
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
    ) -> "ChatStream":
        """Like `chat`, but yields typed events as the server produces them.

            for event in client.stream("draw a cat", image=ImageOptions(preview_every=64)):
                match event:
                    case TextDelta(text): print(text, end="")
                    case ImageDone(index, image): image.save(f"{index}.png")

        The request is sent when iteration starts; errors are raised from the iteration. Use it as a
        context manager (or call `close()`) to stop early and free the connection. `.collect()` (or
        `collect_stream(stream)`) folds the events into the same `ChatResponse` as `chat()`.
        """
        spec = build_chat_request(
            messages, stream=True, images=images, system=system, modalities=modalities, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
            repetition_penalty=repetition_penalty, image=image, model=model, extra_body=extra_body,
        )  # fmt: skip
        return ChatStream(self, spec)

    # -- other routes ---------------------------------------------------------------------------

    def generate_image(
        self,
        prompt: str,
        *,
        size: str | tuple[int, int] | None = None,
        n: int = 1,
        model: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> list[ImagePart]:
        """POST /v1/images/generations: `n` images for `prompt`. `size` must be the model's size ("WxH") or None."""
        spec = build_image_request(prompt, size=size, n=n, model=model, extra_body=extra_body)
        return parse_image_generation(self._request_json(spec, "image generation response"))

    def models(self) -> list[ModelInfo]:
        """GET /v1/models: the served model(s)."""
        return parse_models(self._request_json(RequestSpec("GET", MODELS_PATH), "model list"))

    def health(self) -> bool:
        """True when the server process answers GET /health with 200; False when it is unreachable or unwell."""
        try:
            return self._send_once(RequestSpec("GET", HEALTH_PATH)).status_code == 200
        except APIError:  # unreachable, or any error status
            return False

    def ready(self) -> bool:
        """True once the model is loaded and the engine runs (GET /ready is 200); False while it is
        unreachable or answers 503. Other errors (a wrong API key) are raised."""
        try:
            self._send_once(RequestSpec("GET", READY_PATH))
        except APIConnectionError:
            return False
        except APIError as error:
            if error.status_code == 503:
                return False
            raise
        return True

    def wait_until_ready(self, timeout: float = 60.0, poll_interval: float = 0.25) -> None:
        """Poll `ready()` until it is True; raise `APITimeoutError` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"{self.base_url} was not ready within {timeout:g} s")
            time.sleep(poll_interval)

    # -- transport ------------------------------------------------------------------------------

    def _request_json(self, spec: RequestSpec, what: str) -> Any:
        response = self._send_with_retries(spec)
        return decode_json_body(response.content, what)

    def _send_with_retries(self, spec: RequestSpec) -> httpx.Response:
        """Send `spec`, retrying as the policy says. For a stream, returns the open response
        (status 2xx, body not read yet): nothing of the stream has arrived, so retrying was safe."""
        retries_done = 0
        while True:
            try:
                return self._send_once(spec)
            except APIError as error:
                delay = self.retry_policy.delay_before_retry(retries_done, error)
                if delay is None:
                    raise
            time.sleep(delay)
            retries_done += 1

    def _send_once(self, spec: RequestSpec) -> httpx.Response:
        url = self.base_url + spec.path
        request = self._http.build_request(spec.method, url, json=spec.json, headers=self._headers, timeout=self.timeout)
        try:
            response = self._http.send(request, stream=spec.stream)
        except httpx.TransportError as error:
            raise connection_error_from_httpx(error, self.base_url) from error
        if response.status_code >= 400:
            try:
                body = response.read()
            except httpx.TransportError:
                body = b""
            finally:
                response.close()
            raise error_from_http(response.status_code, response.headers, body, response.reason_phrase)
        return response


class ChatStream(Iterator[StreamEvent]):
    """The events of one streamed chat (see `Client.stream`). Iterate it once.

    `id` and `model` are filled in from the server's chunks as they arrive.
    """

    def __init__(self, client: Client, spec: RequestSpec) -> None:
        self._client = client
        self._spec = spec
        self._translator = ChunkTranslator()
        self._response: httpx.Response | None = None
        self._events = self._generate()

    @property
    def id(self) -> str | None:
        return self._translator.id

    @property
    def model(self) -> str | None:
        return self._translator.model

    def __iter__(self) -> "ChatStream":
        return self

    def __next__(self) -> StreamEvent:
        return next(self._events)

    def collect(self) -> ChatResponse:
        """Consume the rest of the stream into a `ChatResponse` (equal to what `chat()` returns)."""
        return collect_stream(self)

    def close(self) -> None:
        """Stop reading and release the connection (safe to call more than once)."""
        self._events.close()
        if self._response is not None:
            self._response.close()

    def __enter__(self) -> "ChatStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generate(self) -> Iterator[StreamEvent]:
        # Retries happen only inside _send_with_retries, before any byte of the stream is read.
        self._response = self._client._send_with_retries(self._spec)
        try:
            for data in self._response.iter_bytes():
                yield from self._translator.feed(data)
                if self._translator.done:
                    return
            yield from self._translator.close()
        except httpx.TransportError as error:
            raise connection_error_from_httpx(error, self._client.base_url) from error
        finally:
            self._response.close()
