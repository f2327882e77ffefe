"""`AsyncClient`: the asyncio/trio twin of `Client`, with the same methods awaited.

Every protocol decision lives in protocol.py; this file only moves bytes (httpx.AsyncClient) and
sleeps (anyio, so it runs under asyncio and trio alike).
"""
from __future__ import annotations

import time
from typing import Any, AsyncIterator, Mapping, Sequence

import anyio
import httpx

from .errors import APIConnectionError, APIError, APITimeoutError, error_from_http
from .events import StreamEvent, acollect_stream
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


class AsyncClient:
    """The async client; arguments and results are those of `Client`.

        async with AsyncClient() as client:
            answer = await client.chat("draw a cat", modalities="image")
            async for event in client.stream("tell me a story"):
                ...
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = resolve_base_url(base_url)
        self.api_key = resolve_api_key(api_key)
        self.retry_policy = RetryPolicy(max_retries=max_retries, backoff=retry_backoff)
        self._owns_http_client = http_client is None
        self.timeout = make_timeout(timeout)
        self._http = http_client if http_client is not None else httpx.AsyncClient(timeout=self.timeout)
        self._headers = default_headers(self.api_key)

    # -- lifecycle ------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._owns_http_client:
            await self._http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- chat -----------------------------------------------------------------------------------

    async def chat(
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
        """See `Client.chat`."""
        spec = build_chat_request(
            messages, stream=False, images=images, system=system, modalities=modalities, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
            repetition_penalty=repetition_penalty, image=image, model=model, extra_body=extra_body,
        )  # fmt: skip
        return parse_chat_completion(await self._request_json(spec, "chat.completion"))

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
    ) -> "AsyncChatStream":
        """See `Client.stream`: `async for event in client.stream(...)` (no await on the call itself)."""
        spec = build_chat_request(
            messages, stream=True, images=images, system=system, modalities=modalities, max_tokens=max_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
            repetition_penalty=repetition_penalty, image=image, model=model, extra_body=extra_body,
        )  # fmt: skip
        return AsyncChatStream(self, spec)

    # -- other routes ---------------------------------------------------------------------------

    async def generate_image(
        self,
        prompt: str,
        *,
        size: str | tuple[int, int] | None = None,
        n: int = 1,
        model: str | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> list[ImagePart]:
        """See `Client.generate_image`."""
        spec = build_image_request(prompt, size=size, n=n, model=model, extra_body=extra_body)
        return parse_image_generation(await self._request_json(spec, "image generation response"))

    async def models(self) -> list[ModelInfo]:
        """See `Client.models`."""
        return parse_models(await self._request_json(RequestSpec("GET", MODELS_PATH), "model list"))

    async def health(self) -> bool:
        """See `Client.health`."""
        try:
            return (await self._send_once(RequestSpec("GET", HEALTH_PATH))).status_code == 200
        except APIError:  # unreachable, or any error status
            return False

    async def ready(self) -> bool:
        """See `Client.ready`."""
        try:
            await self._send_once(RequestSpec("GET", READY_PATH))
        except APIConnectionError:
            return False
        except APIError as error:
            if error.status_code == 503:
                return False
            raise
        return True

    async def wait_until_ready(self, timeout: float = 60.0, poll_interval: float = 0.25) -> None:
        """See `Client.wait_until_ready`."""
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() >= deadline:
                raise APITimeoutError(f"{self.base_url} was not ready within {timeout:g} s")
            await anyio.sleep(poll_interval)

    # -- transport ------------------------------------------------------------------------------

    async def _request_json(self, spec: RequestSpec, what: str) -> Any:
        response = await self._send_with_retries(spec)
        return decode_json_body(response.content, what)

    async def _send_with_retries(self, spec: RequestSpec) -> httpx.Response:
        """See `Client._send_with_retries`."""
        retries_done = 0
        while True:
            try:
                return await self._send_once(spec)
            except APIError as error:
                delay = self.retry_policy.delay_before_retry(retries_done, error)
                if delay is None:
                    raise
            await anyio.sleep(delay)
            retries_done += 1

    async def _send_once(self, spec: RequestSpec) -> httpx.Response:
        url = self.base_url + spec.path
        request = self._http.build_request(spec.method, url, json=spec.json, headers=self._headers, timeout=self.timeout)
        try:
            response = await self._http.send(request, stream=spec.stream)
        except httpx.TransportError as error:
            raise connection_error_from_httpx(error, self.base_url) from error
        if response.status_code >= 400:
            try:
                body = await response.aread()
            except httpx.TransportError:
                body = b""
            finally:
                await response.aclose()
            raise error_from_http(response.status_code, response.headers, body, response.reason_phrase)
        return response


class AsyncChatStream(AsyncIterator[StreamEvent]):
    """The events of one streamed chat (see `AsyncClient.stream`). Iterate it once."""

    def __init__(self, client: AsyncClient, spec: RequestSpec) -> None:
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

    def __aiter__(self) -> "AsyncChatStream":
        return self

    async def __anext__(self) -> StreamEvent:
        return await self._events.__anext__()

    async def collect(self) -> ChatResponse:
        """Consume the rest of the stream into a `ChatResponse` (equal to what `chat()` returns)."""
        return await acollect_stream(self)

    async def aclose(self) -> None:
        """Stop reading and release the connection (safe to call more than once)."""
        await self._events.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def __aenter__(self) -> "AsyncChatStream":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _generate(self) -> AsyncIterator[StreamEvent]:
        # Retries happen only inside _send_with_retries, before any byte of the stream is read.
        self._response = await self._client._send_with_retries(self._spec)
        try:
            async for data in self._response.aiter_bytes():
                for event in self._translator.feed(data):
                    yield event
                if self._translator.done:
                    return
            for event in self._translator.close():
                yield event
        except httpx.TransportError as error:
            raise connection_error_from_httpx(error, self._client.base_url) from error
        finally:
            await self._response.aclose()
